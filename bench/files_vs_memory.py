"""Analysis from the checkpoint files vs from the model in memory, side by side.

Two measurements (issue 10, item 1):

1. `time`: per-matrix seconds on one model, in one process, alternating the two paths on
   the same matrices: in memory `measure_weight(ref, ref.weight())`; from the files the
   read (`ckpt.tensor`, cast to float32) plus the same `measure_weight`. Then both whole
   analyses (`analyze(model)` vs `analyze_checkpoint(ckpt)`, cold, fresh cache, which
   includes each path's fingerprint). Precision "auto", one BLAS thread per matrix
   sequentially (as in a pool worker) unless --threads is given.
2. `rss`: peak RSS (resource.getrusage, the process and its pool workers) of one child
   process running `analyze_checkpoint` on a synthetic bf16 Llama-shaped checkpoint, and
   of one child loading that checkpoint in float32 and running `analyze(model)`.

    .venv/bin/python bench/files_vs_memory.py time [--model smollm2-135m] [--matrices 8] [--repeats 3] [--gguf]
    .venv/bin/python bench/files_vs_memory.py rss [--hidden 1024 --layers 4 --vocab 32000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install needed

import torch  # noqa: E402

from alphaprune import analysis  # noqa: E402
from alphaprune.arch import all_matrices  # noqa: E402
from alphaprune.checkpoint import checkpoint_location, open_checkpoint  # noqa: E402


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_paths(model_spec: str, matrices: int, repeats: int, threads: int, gguf: bool) -> None:
    from threadpoolctl import threadpool_limits

    from alphaprune.models import load_model

    loaded = load_model(model_spec)  # fills the dequantized cache folder the files path reads
    # The files: what checkpoint_location picks (the dequantized cache folder), or the GGUF itself.
    ckpt = open_checkpoint(loaded_gguf(model_spec) if gguf else checkpoint_location(model_spec))
    os.environ["ALPHAPRUNE_CACHE"] = tempfile.mkdtemp(prefix="files-vs-memory-")  # cold analyses from here
    refs = {r.name: r for r in all_matrices(loaded.model)}
    file_refs = all_matrices(ckpt.skeleton())[:matrices]
    print(f"{model_spec}: files {ckpt.location} ({ckpt.kind}, {ckpt.dtype})")
    print(f"{'matrix':42s} {'shape':>12s} {'memory s':>9s} {'files s':>9s} {'ratio':>6s}")
    total_mem = total_files = 0.0
    with threadpool_limits(threads):
        torch.set_num_threads(threads)
        for ref in file_refs:
            mem_ref = refs[ref.name]
            t_mem = _best(lambda r=mem_ref: analysis.measure_weight(r, r.weight(), "auto", "cpu"), repeats)
            t_files = _best(
                lambda r=ref: analysis.measure_weight(r, analysis._checkpoint_weight(ckpt, r), "auto", "cpu"), repeats
            )
            total_mem, total_files = total_mem + t_mem, total_files + t_files
            print(f"{ref.name:42s} {str(ref.shape):>12s} {t_mem:9.4f} {t_files:9.4f} {t_files / t_mem:6.3f}")
    print(f"{'sum':42s} {'':>12s} {total_mem:9.4f} {total_files:9.4f} {total_files / total_mem:6.3f}")
    t_mem = _best(lambda: analysis.analyze(loaded.model, use_cache=True), 1)
    os.environ["ALPHAPRUNE_CACHE"] = tempfile.mkdtemp(prefix="files-vs-memory-")
    t_files = _best(lambda: analysis.analyze_checkpoint(ckpt, use_cache=True), 1)
    n = len(all_matrices(loaded.model))
    print(f"whole analysis, cold, with fingerprint ({n} matrices): memory {t_mem:.2f} s, files {t_files:.2f} s")


def loaded_gguf(model_spec: str) -> str:
    from alphaprune.models import resolve_spec

    source, location = resolve_spec(model_spec)
    if source not in ("bundled", "gguf"):
        raise SystemExit(f"--gguf: {model_spec} is not a GGUF model")
    return location


_CHILD = r"""
import json, resource, sys, time, torch
from alphaprune.analysis import analyze, analyze_checkpoint
from alphaprune.checkpoint import open_checkpoint
mode, folder = sys.argv[1], sys.argv[2]
start = time.perf_counter()
if mode == "files":
    result = analyze_checkpoint(open_checkpoint(folder), use_cache=False)
else:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    result = analyze(model, use_cache=False)
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
print(json.dumps({"self_gib": own, "worker_gib": workers, "seconds": time.perf_counter() - start,
                  "matrices": len(result.layers)}))
"""

_WRITE = r"""
import sys, torch
from transformers import LlamaConfig, LlamaForCausalLM
hidden, layers, vocab, folder = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
config = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                     num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128,
                     vocab_size=vocab, tie_word_embeddings=False)
torch.manual_seed(0)
with torch.device("cpu"):
    model = LlamaForCausalLM(config).to(torch.bfloat16)
model.save_pretrained(folder, max_shard_size="200MB")
"""


def rss_paths(hidden: int, layers: int, vocab: int) -> None:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with tempfile.TemporaryDirectory(prefix="files-vs-memory-") as folder:
        subprocess.run(
            [sys.executable, "-c", _WRITE, str(hidden), str(layers), str(vocab), folder], check=True, env=env
        )
        size = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
        print(f"synthetic bf16 Llama: hidden {hidden}, {layers} layers, vocab {vocab}: {size / 2**30:.2f} GiB")
        for mode in ("files", "memory"):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, mode, folder], check=True, env=env, capture_output=True, text=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{mode:6s}: peak RSS {r['self_gib']:.2f} GiB (pool workers {r['worker_gib']:.2f} GiB), "
                f"{r['seconds']:.1f} s, {r['matrices']} matrices"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("time")
    t.add_argument("--model", default="smollm2-135m")
    t.add_argument("--matrices", type=int, default=8)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--gguf", action="store_true", help="read the GGUF file itself, not its dequantized folder")
    r = sub.add_parser("rss")
    r.add_argument("--hidden", type=int, default=1024)
    r.add_argument("--layers", type=int, default=4)
    r.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    if args.what == "time":
        time_paths(args.model, args.matrices, args.repeats, args.threads, args.gguf)
    else:
        rss_paths(args.hidden, args.layers, args.vocab)


if __name__ == "__main__":
    main()
