"""The Python half of bench/gpu_check.sh (issue 10, item 9): checks for a machine with a GPU.

    python bench/gpu_check.py analysis --dir CKPTS --layers 32 --out OUT   # streamed analysis on CUDA
    python bench/gpu_check.py agreement --out OUT      # Wanda and SparseGPT, CUDA against CPU
    python bench/gpu_check.py throughput --out OUT     # bf16 perplexity against a bare forward loop
    python bench/gpu_check.py report --out OUT [--doc docs/scale.md]   # OUT/gpu_check.md (+ the doc)

- analysis: writes (or reuses) the synthetic Llama-2-7B-shaped checkpoint with `--layers`
  blocks (bench/scale.py) and runs `alphaprune analyze --device cuda --offload auto --no-cache`
  on it in its own process: peak RSS, wall time and seconds per matrix.
- agreement: `alphaprune prune` of the default model with Wanda and with SparseGPT, once with
  `--device cpu` and once with `--device cuda` (float32 both), each saved; then the saved
  folders' masks are compared matrix by matrix (fraction of weights whose zero/non-zero
  state differs) and the perplexities side by side. A side may name an offload path too:
  `--devices cpu:none,cpu:disk` is the streamed path against the in-memory one (issue 10,
  item 2), on a CPU-only machine:

      python bench/gpu_check.py agreement --devices cpu:none,cpu:disk --pruners magnitude,wanda,sparsegpt \
          --sparsity 0.7 --calib-samples 32 --seqlen 1024 --eval-windows 32 \
          --calib ../shared/data/calib_python_docs.txt --eval ../shared/data/wikitext2_test.raw \
          --prune-args "--allocation alphapruning --epsilon 0.3" --out /tmp/stream_check
- throughput: the default model in bf16 on CUDA; tokens per second of
  alphaprune.perplexity.perplexity against a bare `model(input_ids, labels=input_ids)` loop
  over the same windows (fastest of --repeats), and both perplexities.

Every part writes OUT/PART.json; `report` turns them into markdown. Nothing here runs in the
test suite (tests never need a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402  (bench/scale.py: checkpoints, the measuring wrapper)

from alphaprune import atomic  # noqa: E402

BEGIN, END = "<!-- bench/gpu_check.sh: begin -->", "<!-- bench/gpu_check.sh: end -->"


def _save(out: Path, part: str, doc: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / f"{part}.json", json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


def _cli(args: list[str], work: Path, timeout: float | None = None) -> dict:
    """A CLI step in its own measured process (bench/scale.py's wrapper); fails loudly."""
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("ALPHAPRUNE_CACHE") or work / "cache")  # shared: one dequantization
    try:
        row = scale.measure([sys.executable, "-m", "alphaprune", *args], work, timeout, cache)
        row["seconds"] = scale.work_seconds(args[0], row, work)[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the step's own cache and run history
    if row.get("rc") != 0:
        tail = scale._last_line(row.get("stderr", "")) or row.get("note", "")
        raise SystemExit(f"gpu_check: `alphaprune {' '.join(args[:1])}` failed (rc {row.get('rc')}): {tail}")
    return row


def cmd_analysis(a) -> None:
    ns = argparse.Namespace(preset=a.preset, dir=a.dir.resolve(), rewrite=False, seed=0, shard_gb=1.0)
    ckpt, config, nbytes = scale.checkpoint(ns, a.layers)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-analysis-"))  # removed by _cli
    offload = ["--offload", "auto"] if scale.has_offload() else []
    if not offload:
        print("gpu_check: this alphaprune CLI has no --offload flag: the analysis runs on its default path")
    row = _cli(["analyze", "--model", str(ckpt), "--device", a.device, "--no-cache", *offload], work)
    seconds, count = scale.work_seconds("analyze", row, work)  # parsed from the output kept in `row`
    _save(
        a.out,
        "analysis",
        {
            "preset": a.preset,
            "layers": a.layers,
            "device": a.device,
            "checkpoint_gb": nbytes / 2**30,
            "matrices": count,
            "seconds_analysis": seconds,
            "s_per_matrix": None if not seconds or not count else seconds / count,
            "wall_s": row["wall"],
            "peak_rss_gb": row["peak_rss"] / 2**30,
            "offload": offload[-1] if offload else "default",
        },
    )


def _zeros(folder: Path) -> dict:
    """{matrix: bool tensor of its zeros} for the matrices a saved run pruned."""
    from safetensors import safe_open

    from alphaprune.export import RATIOS_FILE

    names = {f"{name}.weight" for name in json.loads((folder / RATIOS_FILE).read_text())["ratios"]}
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for key in f.keys():
                if key in names:
                    out[key] = f.get_tensor(key) == 0
    return out


def _prune(pruner: str, side: str, a, out: Path) -> dict:
    """One saved prune run; `side` is a device, or DEVICE:OFFLOAD (e.g. cpu:disk, streamed)."""
    device, _, offload = side.partition(":")
    args = ["prune", "--model", a.model, "--pruner", pruner, "--sparsity", str(a.sparsity), "--device", device]
    args += ["--dtype", "float32", "--calib", a.calib, "--calib-samples", str(a.calib_samples)]
    args += ["--seqlen", str(a.seqlen), "--eval", a.eval, "--eval-windows", str(a.eval_windows)]
    args += ["--save", str(out), "--out", str(out) + ".json", *(["--offload", offload] if offload else [])]
    args += a.prune_args.split()
    row = _cli(args, out.parent / f"work-{out.name}")
    result = json.loads(Path(str(out) + ".json").read_text())
    return {
        "ppl_before": result["ppl_before"],
        "ppl_after": result["ppl_after"],
        "wall_s": row["wall"],
        "prune_s": row["seconds"],
    }


def cmd_agreement(a) -> None:
    """Each pruner on the reference side (CPU) and the tested one (CUDA, or a streamed path); masks and perplexities."""
    ref, test = a.devices
    doc = {"model": a.model, "sparsity": a.sparsity, "calib_samples": a.calib_samples, "seqlen": a.seqlen}
    doc.update(eval_windows=a.eval_windows, ref_device=ref, test_device=test, prune_args=a.prune_args, pruners={})
    sides = (("ref", ref), ("test", test))
    for pruner in a.pruners:
        with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:  # pruned folders stay out of OUT
            folders = {side: Path(scratch) / f"{pruner}-{side}-{dev.replace(':', '-')}" for side, dev in sides}
            runs = {side: _prune(pruner, dev, a, folders[side]) for side, dev in sides}
            masks = {side: _zeros(folders[side]) for side, _ in sides}
        one, two = masks["ref"], masks["test"]
        differ = {name: float((one[name] != two[name]).float().mean()) for name in one}
        total = sum(int((one[n] != two[n]).sum()) for n in one) / sum(one[n].numel() for n in one)
        doc["pruners"][pruner] = {
            **{f"{side}_{k}": v for side, run in runs.items() for k, v in run.items()},
            "ppl_after_rel_diff": runs["test"]["ppl_after"] / runs["ref"]["ppl_after"] - 1,
            "masks_identical": all(v == 0 for v in differ.values()),
            "mask_differ_fraction": total,
            "mask_differ_max_matrix": max(differ.values()),
        }
    _save(a.out, "agreement", doc)


def _placement_map(layers: int, device: str) -> dict:
    """The blocks spread over the GPUs there are (two or more), else half on the GPU, half on the CPU."""
    import torch

    gpus = torch.cuda.device_count() if device == "cuda" else 0
    spots = list(range(gpus)) if gpus >= 2 else [0 if gpus else "cpu", "cpu"]
    owner = {f"model.layers.{i}": spots[i * len(spots) // layers] for i in range(layers)}
    return {"model.embed_tokens": spots[0], "model.rotary_emb": spots[0], **owner, "model.norm": spots[-1],
            "lm_head": spots[-1]}  # fmt: skip


def _ppl(row_out: Path) -> dict:
    return json.loads(row_out.read_text())


def cmd_placement(a) -> None:
    """--device-map across devices against one device: eval and Wanda perplexity (issue 12, item 1)."""
    from alphaprune.arch import prunable_matrices
    from alphaprune.export import save_pruned
    from alphaprune.models import load_model

    doc = {"model": a.model, "device": a.device, "seqlen": a.seqlen, "eval_windows": a.eval_windows, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        loaded = load_model(a.model)
        folder = Path(scratch) / "dense"
        zero = {ref.name: 0.0 for ref in prunable_matrices(loaded.model)}
        save_pruned(loaded.model, loaded.tokenizer, folder, zero, [], {})
        layers = loaded.model.config.num_hidden_layers
        del loaded
        (Path(scratch) / "map.json").write_text(json.dumps(_placement_map(layers, a.device)))
        doc["map"] = json.loads((Path(scratch) / "map.json").read_text())
        data = ["--eval", a.eval, "--seqlen", str(a.seqlen), "--eval-windows", str(a.eval_windows)]
        common = ["--model", str(folder), "--dtype", "float32", *data]
        prune = ["prune", *common, "--pruner", "wanda", "--sparsity", "0.5", "--calib", a.calib,
                 "--calib-samples", str(a.calib_samples)]  # fmt: skip
        steps = [("eval", ["eval", *common])]
        if len({str(v) for v in doc["map"].values()} - {"cpu"}) != 1:  # one GPU + cpu offloads: eval only
            steps.append(("prune", prune))
        for name, args in steps:
            for side, extra in (
                ("single", ["--device", a.device]),
                ("map", ["--device-map", str(Path(scratch) / "map.json")]),
            ):
                out = Path(scratch) / f"{name}-{side}.json"
                row = _cli([*args, *extra, "--out", str(out)], Path(scratch) / f"work-{name}-{side}")
                doc["runs"][f"{name}_{side}"] = {**_ppl(out), "wall_s": row["wall"]}
        for name, key in (("eval", "perplexity"), ("prune", "ppl_after"))[: len(steps)]:
            one, two = doc["runs"][f"{name}_single"][key], doc["runs"][f"{name}_map"][key]
            doc[f"{name}_rel_diff"] = two / one - 1
    _save(a.out, "placement", doc)


def _windows(a, tokenizer):
    from alphaprune import text

    ids = text.token_ids(a.eval, tokenizer)
    return text.evaluation_windows(ids, a.seqlen, a.eval_windows)


def _bare_loop(model, windows, batch_size: int) -> float:
    """Perplexity the plainest way: transformers' own shifted loss per batch, token-weighted."""
    import torch

    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size].to(model.device)
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            nll += float(loss) * batch[:, 1:].numel()
            count += batch[:, 1:].numel()
    return math.exp(nll / count)


def _timed(fn, device: str, repeats: int) -> tuple[float, float]:
    """(value, fastest of `repeats` timings) of fn()."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # kernels run async
    best = math.inf
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        value = fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return value, best


def cmd_throughput(a) -> None:
    from alphaprune.models import load_model
    from alphaprune.perplexity import perplexity

    loaded = load_model(a.model, dtype="bfloat16", device=a.device)
    windows = _windows(a, loaded.tokenizer)
    model = loaded.model
    perplexity(model, windows[: a.batch_size], a.batch_size)  # warm-up: kernels, allocator
    ours, t_ours = _timed(lambda: perplexity(model, windows, a.batch_size), a.device, a.repeats)
    bare, t_bare = _timed(lambda: _bare_loop(model, windows, a.batch_size), a.device, a.repeats)
    tokens = windows.numel()
    _save(
        a.out,
        "throughput",
        {
            "model": a.model,
            "device": a.device,
            "dtype": "bfloat16",
            "windows": len(windows),
            "seqlen": a.seqlen,
            "batch_size": a.batch_size,
            "repeats": a.repeats,
            "tokens_per_s_ours": tokens / t_ours,
            "tokens_per_s_bare": tokens / t_bare,
            "ours_over_bare_time": t_ours / t_bare,
            "ppl_ours": ours,
            "ppl_bare": bare,
            "gpu": _gpu_name() if a.device == "cuda" else "none",
        },
    )


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def _read(out: Path, part: str) -> dict | None:
    try:
        return json.loads((out / f"{part}.json").read_text())
    except (OSError, ValueError):
        return None


def report_lines(out: Path) -> list[str]:
    lines = [BEGIN, "", "## GPU (bench/gpu_check.sh)", ""]
    tp = _read(out, "throughput")
    lines.append(
        f"Generated by `bench/gpu_check.sh` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f", {tp['gpu']})." if tp and tp["gpu"] != "none" else ", no GPU: a dry run)." if tp else ").")
    )
    an = _read(out, "analysis")
    if an:
        lines += [
            "",
            f"Analysis from the files (`--offload {an['offload']}`) on {an['device']}, {an['preset']} with "
            f"{an['layers']} layers ({an['checkpoint_gb']:.1f} GiB, {an['matrices']} matrices): "
            f"{an['s_per_matrix']:.3f} s per matrix, wall {an['wall_s']:.0f} s, "
            f"peak RSS {an['peak_rss_gb']:.2f} GiB.",
        ]
    ag = _read(out, "agreement")
    if ag:
        ref, test = ag["ref_device"], ag["test_device"]
        lines += [
            "",
            f"{ag['model']}, {ag['calib_samples']} x {ag['seqlen']} calibration tokens, {ag['eval_windows']} "
            f"evaluation windows, sparsity {ag['sparsity']}, float32, {test} against {ref}"
            + (f" (`{ag['prune_args']}`):" if ag.get("prune_args") else ":"),
            "",
            f"| pruner | ppl {ref} | ppl {test} | rel. diff | masks identical | weights differing | worst matrix |",
            "|---|---:|---:|---:|---|---:|---:|",
        ]
        for pruner, r in ag["pruners"].items():
            lines.append(
                f"| {pruner} | {r['ref_ppl_after']:.4f} | {r['test_ppl_after']:.4f} | "
                f"{r['ppl_after_rel_diff']:+.2e} | {r['masks_identical']} | {r['mask_differ_fraction']:.2e} | "
                f"{r['mask_differ_max_matrix']:.2e} |"
            )
    if tp:
        lines += [
            "",
            f"bf16 perplexity on {tp['device']}, {tp['model']}, {tp['windows']} x {tp['seqlen']} tokens, "
            f"batch {tp['batch_size']}: ours "
            f"{tp['tokens_per_s_ours']:.0f} tokens/s, bare forward loop {tp['tokens_per_s_bare']:.0f} tokens/s "
            f"(ours takes {tp['ours_over_bare_time']:.2f}x the time); perplexity {tp['ppl_ours']:.4f} vs "
            f"{tp['ppl_bare']:.4f}.",
        ]
    pl = _read(out, "placement")
    if pl:
        lines += [
            "",
            f"`--device-map` ({sorted({str(v) for v in pl['map'].values()})}) against one {pl['device']}: "
            f"eval perplexity relative difference {pl['eval_rel_diff']:+.2e}"
            + (f", Wanda 50% {pl['prune_rel_diff']:+.2e}." if "prune_rel_diff" in pl else " (prune: needs 2+ GPUs)."),
        ]
    if not (an or ag or tp or pl):
        lines += ["", "No results found."]
    return lines + ["", END]


def cmd_report(a) -> None:
    body = "\n".join(report_lines(a.out))
    atomic.write_text(a.out / "gpu_check.md", body + "\n")
    print(body)
    if a.doc is not None:
        old = a.doc.read_text() if a.doc.exists() else ""
        if BEGIN in old and END in old:
            new = old.split(BEGIN, 1)[0] + body + old.split(BEGIN, 1)[1].split(END, 1)[1]
        else:  # replaces bench/scale.py's "not run yet" placeholder when it is there
            head = old.split(scale.GPU_PLACEHOLDER.strip(), 1)[0].rstrip("\n")
            new = head + "\n\n" + body + "\n"
        atomic.write_text(a.doc, new)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "bench" / "gpu_out"))
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--calib", default="python-docs")
    data.add_argument("--eval", default="python-docs")
    data.add_argument("--seqlen", type=int, default=1024)
    data.add_argument("--eval-windows", type=int, default=16)
    s = sub.add_parser("analysis", parents=[shared])
    s.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "alphaprune-bench" / "scale")
    s.add_argument("--layers", type=int, default=32)
    s.add_argument("--preset", default="llama2-7b", choices=["llama2-7b", "tiny"])
    s.add_argument("--device", default="cuda")
    s = sub.add_parser("agreement", parents=[shared, data])
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument(
        "--devices",
        type=lambda v: v.split(","),
        default=["cpu", "cuda"],
        help="reference,tested: each a device or DEVICE:OFFLOAD (cpu:none,cpu:disk: streamed vs in memory)",
    )
    s.add_argument("--prune-args", default="", help="more `alphaprune prune` flags for both sides, one string")
    s.add_argument("--pruners", type=lambda v: v.split(","), default=["wanda", "sparsegpt"])
    s.add_argument("--sparsity", type=float, default=0.5)
    s.add_argument("--calib-samples", type=int, default=32)
    s = sub.add_parser("placement", parents=[shared, data])
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--device", default="cuda")
    s.add_argument("--calib-samples", type=int, default=32)
    s = sub.add_parser("throughput", parents=[shared, data])
    s.add_argument("--model", default="smollm2-135m")
    s.add_argument("--device", default="cuda")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--repeats", type=int, default=3, help="timings per loop; the fastest counts")
    s = sub.add_parser("report", parents=[shared])
    s.add_argument("--doc", type=Path)
    a = p.parse_args(argv)
    a.out = a.out.expanduser().resolve()
    parts = {
        "analysis": cmd_analysis,
        "agreement": cmd_agreement,
        "throughput": cmd_throughput,
        "placement": cmd_placement,
        "report": cmd_report,
    }
    parts[a.part](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
