"""Benchmark: models of any size on one machine (issue 10, item 8) -> docs/scale.md.

Writes synthetic Llama-2-7B-shaped checkpoints (alphaprune/synthetic.py: random bf16 weights,
safetensors shards + index, a byte-level tokenizer) with L decoder blocks, then runs each
step as its own process of the CLI:

    analyze  python -m alphaprune analyze --model CKPT --no-cache --offload PATH
    prune    python -m alphaprune prune --model CKPT --pruner wanda --sparsity 0.5 --calib-samples 4
             --seqlen 128 --eval-windows 2 --save OUT --offload PATH
    eval     python -m alphaprune eval --model OUT --seqlen 128 --eval-windows 2 --offload PATH

Each step runs inside a fresh wrapper process that starts it, waits for it and reports the
OS's peak RSS of its child (`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`): every figure
is that one step's. PATH is each of `--paths` (default `auto,none`): `auto` lets the
preflight pick (streamed for a model that does not fit; it may well pick in-memory for L=2,
so pass `--paths disk,none` or `cpu,none` to force streaming; the note column quotes the line
where the CLI says which path it took), `none` is today's in-memory path, run only where its
estimated peak fits in memory (else a note says why not). Each step gets a fresh cache and
run-history folder, so nothing is served from an earlier step's cache. Results are merged
into a JSON file (one row per preset, L, path and step) and docs/scale.md's generated
section is rewritten from it after every checkpoint.

    .venv/bin/python bench/scale.py --layers 2,8        # the issue's small sizes (~1.3 and 5.2 GB of disk)
    .venv/bin/python bench/scale.py --layers 32 --paths auto   # the full 13.5 GB, 224 matrices
    .venv/bin/python bench/scale.py --layers 32 --paths disk --steps analyze   # its analysis only
    .venv/bin/python bench/scale.py --preset tiny --layers 2 --results /tmp/s.json --doc /tmp/s.md
    .venv/bin/python bench/scale.py --layers 2 -- --device cpu  # flags after -- go to every step
    .venv/bin/python bench/scale.py --write-only --layers 32 --dir /data/ckpt   # checkpoint only

A CLI without `--offload` (older than issue 10) is told apart by its --help: then every
step runs once on its default path, and the report says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, no install needed

from alphaprune import atomic  # noqa: E402
from alphaprune.errors import UserError  # noqa: E402

STEPS = ("analyze", "prune", "eval")
STREAMED = ("disk", "cpu", "auto")  # rows the acceptance checks read, in this order (`default`: an old CLI)
BEGIN, END = "<!-- bench/scale.py: begin -->", "<!-- bench/scale.py: end -->"
# Peak RSS of today's in-memory path per byte of bf16 checkpoint (the model in float32 is 2x;
# loading, the pruned deep copy and the save add to it), plus the interpreter's own ~0.6 GB.
# analyze: measured 5.25 GB for the 1.33 GB L=2 checkpoint (issue 10); prune holds two float32
# copies; eval one. Estimates, used only to skip what cannot fit.
IN_MEMORY_FACTOR = {"analyze": 3.6, "prune": 5.0, "eval": 2.6}
BASE_RSS = 0.6 * 2**30
# The wrapper: runs the step, then reports its child's peak RSS (Linux: kB; macOS: bytes).
WRAPPER = """\
import json, os, resource, subprocess, sys, threading, time


def tree(root):  # root and every process below it (Linux /proc)
    kids = {}
    for name in os.listdir("/proc"):
        try:
            ppid = int(open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(name))
        except (OSError, ValueError, IndexError):
            pass
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += kids.get(pid, [])
    return found


def pss(pid):  # proportional set size: shared pages split between the processes sharing them
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


start = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
peak = [0]


def sample():
    while child.poll() is None:
        peak[0] = max(peak[0], sum(pss(p) for p in tree(child.pid)))
        time.sleep(0.2)


thread = threading.Thread(target=sample, daemon=True)
thread.start()
rc = child.wait()
wall = time.perf_counter() - start
top = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
top = top if sys.platform == "darwin" else top * 1024
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "wall": wall, "peak_rss": top, "peak_tree": peak[0] or None}, f)
"""


def preset_config(preset: str, layers: int):
    from alphaprune import synthetic

    if preset == "llama2-7b":
        return synthetic.llama2_7b(layers=layers)
    return synthetic.tiny_llama(layers=layers)


def matrices(config) -> int:
    """Prunable matrices of the config (arch.py, on a meta-device skeleton)."""
    from alphaprune.arch import prunable_matrices
    from alphaprune.synthetic import skeleton

    return len(prunable_matrices(skeleton(config)))


def _reusable(folder: Path, config, need: int) -> bool:
    """An earlier write of the same shape is kept (writing 13.5 GB takes minutes)."""
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    same = all(saved.get(k) == getattr(config, k) for k in keys)
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return same and weights >= need and (folder / "tokenizer.json").exists()


def checkpoint(args, layers: int) -> tuple[Path, object, int]:
    """(folder, config, bytes of weights) of the synthetic checkpoint, written if needed."""
    from alphaprune.synthetic import checkpoint_bytes, write_synthetic

    config = preset_config(args.preset, layers)
    folder = args.dir / f"{args.preset}-L{layers}"
    need = checkpoint_bytes(config)
    if args.rewrite or not _reusable(folder, config, need):
        print(f"writing {folder} ({need / 2**30:.2f} GiB of bf16)", flush=True)
        start = time.perf_counter()
        write_synthetic(folder, config, seed=args.seed, shard_bytes=int(args.shard_gb * 2**30))
        print(f"  written in {time.perf_counter() - start:.0f} s", flush=True)
    return folder, config, need


def has_offload() -> bool:
    """Whether this checkout's CLI takes --offload (told by its --help, which loads no model)."""
    out = subprocess.run(
        [sys.executable, "-m", "alphaprune", "analyze", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    return "--offload" in out.stdout


def commands(step: str, ckpt: Path, out: Path, path: str | None, extra: list[str], work: Path) -> list[str]:
    """The CLI command of a step; `path` None: no --offload flag (a CLI without it)."""
    cli = [sys.executable, "-m", "alphaprune", step]
    data = ["--seqlen", "128", "--eval-windows", "2"]
    if step == "analyze":
        cmd = cli + ["--model", str(ckpt), "--no-cache"]
    elif step == "prune":
        cmd = cli + ["--model", str(ckpt), "--pruner", "wanda", "--sparsity", "0.5", "--calib-samples", "4"]
        cmd += data + ["--save", str(out), "--out", str(work / "prune.json")]
    else:
        cmd = cli + ["--model", str(out)] + data + ["--out", str(work / "eval.json")]
    offload = [] if path is None else ["--offload", path]
    return cmd + offload + extra


def measure(cmd: list[str], work: Path, timeout: float | None, cache: Path | None = None) -> dict:
    """Run `cmd` in a fresh wrapper process; its rc, wall time, peak RSS and output. Its
    cache folder is `cache`, by default a fresh one in `work` (nothing from earlier steps)."""
    report = work / "rusage.json"
    env = {**os.environ, "ALPHAPRUNE_CACHE": str(cache or work / "cache"), "ALPHAPRUNE_DATA": str(work / "data")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, str(report), *cmd],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"rc": None, "note": f"stopped after {timeout:.0f} s"}
    try:
        row = json.loads(report.read_text())
    except (OSError, ValueError):
        row = {"rc": proc.returncode}
    row["stdout"], row["stderr"] = proc.stdout, proc.stderr
    return row


def _last_line(textblock: str) -> str:
    lines = [line.strip() for line in textblock.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def work_seconds(step: str, row: dict, work: Path) -> tuple[float | None, int | None]:
    """(seconds of the step's own work, matrices it covered) from what the CLI reported:
    analysis without the model load; pruning without texts and perplexities."""
    if step == "analyze":
        said = r"analysed (\d+) matrices (?:in memory |from the files )?in ([\d.]+) s"
        found = re.search(said, row.get("stderr", ""))
        return (float(found.group(2)), int(found.group(1))) if found else (None, None)
    if step == "prune":
        try:
            return float(json.loads((work / "prune.json").read_text())["seconds"]["prune"]), None
        except (OSError, ValueError, KeyError, TypeError):
            return None, None
    return None, None


def estimate_in_memory(step: str, ckpt_bytes: int) -> float:
    return IN_MEMORY_FACTOR[step] * ckpt_bytes + BASE_RSS


def available_bytes(limit_gb: float | None) -> float:
    if limit_gb is not None:
        return limit_gb * 2**30
    from alphaprune.models import available_memory_bytes

    have = available_memory_bytes()
    return math.inf if have is None else 0.9 * have  # unknown: try, the step's own checks refuse


def run_layers(args, layers: int, offload: bool, extra: list[str]) -> list[dict]:
    """Every step of one checkpoint, on every path asked for; rows for the results file."""
    ckpt, config, nbytes = checkpoint(args, layers)
    count = matrices(config)
    rows = []
    paths = args.paths if offload else [None]
    for path in paths:
        out = args.dir / f"{args.preset}-L{layers}-pruned-{path or 'default'}"
        pruned_ok = True
        for step in (s for s in STEPS if s in args.steps):
            row = {"preset": args.preset, "layers": layers, "path": path or "default", "step": step}
            row.update(checkpoint_gb=nbytes / 2**30, matrices=count)
            note = _skip_reason(args, step, path, nbytes, pruned_ok)
            if note:
                rows.append({**row, "note": note})
                print(f"  L={layers} {row['path']:>7} {step:>7}: skipped ({note})", flush=True)
                continue
            if step == "prune":
                shutil.rmtree(out, ignore_errors=True)  # a fresh save folder every time
            rows.append({**row, **_run_step(args, step, ckpt, out, path, extra, count)})
            print(f"  L={layers}{_describe(step, path, rows[-1])}", flush=True)
            pruned_ok = pruned_ok and not (step == "prune" and rows[-1].get("rc") != 0)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)  # as big as the checkpoint
    return rows


def _skip_reason(args, step: str, path: str | None, nbytes: int, pruned_ok: bool) -> str | None:
    if step == "eval" and "prune" not in args.steps:
        return "the prune step was not asked for (--steps)"
    if step == "eval" and not pruned_ok:
        return "no pruned folder: the prune step failed"
    if path in ("none", None):  # a CLI without --offload has only the in-memory path
        need, have = estimate_in_memory(step, nbytes), available_bytes(args.memory_gb)
        if need > have:
            return f"in-memory needs ~{need / 2**30:.1f} GiB (estimate), {have / 2**30:.1f} GiB available"
    return None


def _run_step(args, step: str, ckpt: Path, out: Path, path: str | None, extra: list[str], count: int) -> dict:
    work = args.dir / f".work-{step}-{path or 'default'}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        got = measure(commands(step, ckpt, out, path, extra, work), work, args.timeout)
        seconds, analysed = work_seconds(step, got, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the step's cache: one model's spectra, perplexities
    row = {"rc": got.get("rc"), "wall_s": got.get("wall"), "peak_rss_gb": _gb(got.get("peak_rss"))}
    row["peak_tree_gb"] = _gb(got.get("peak_tree"))  # the step's processes together (analysis workers)
    row["work_s"] = seconds
    per = analysed or count
    if seconds is not None:
        row["s_per_matrix"] = seconds / per
    if got.get("rc") != 0:
        row["note"] = got.get("note") or _last_line(got.get("stderr", "")) or f"exit code {got.get('rc')}"
    elif step != "analyze":
        row["note"] = _last_line(got.get("stdout", ""))
    said = _path_line(got.get("stderr", "")) if got.get("rc") == 0 else None
    if said:  # the CLI says which path ran (issue 10, item 4): `auto` may well pick in-memory
        row["ran"] = said
    return row


def _path_line(stderr: str) -> str | None:
    """The first line of the CLI's stderr that names the path it took, if any."""
    for line in stderr.replace("\r", "\n").splitlines():
        if re.search(r"stream|in-memory|in memory|offload", line, re.IGNORECASE):
            return line.strip()[:160]
    return None


def _gb(value) -> float | None:
    return None if value is None else value / 2**30


def _describe(step: str, path: str | None, row: dict) -> str:
    rss = "-" if row["peak_rss_gb"] is None else f"{row['peak_rss_gb']:.2f} GiB"
    if row.get("peak_tree_gb") is not None:
        rss += f" (all its processes: {row['peak_tree_gb']:.2f} GiB PSS)"
    wall = "-" if row["wall_s"] is None else f"{row['wall_s']:.1f} s"
    per = f", {row['s_per_matrix']:.3f} s/matrix" if row.get("s_per_matrix") is not None else ""
    note = "; ".join(filter(None, [row.get("ran"), row.get("note")]))
    note = f" [{note}]" if note else ""
    return f" {path or 'default':>7} {step:>7}: rc {row['rc']}, peak RSS {rss}, wall {wall}{per}{note}"


# ---------------------------------------------------------------------------------- report


def merge(results: Path, rows: list[dict]) -> list[dict]:
    """Rows of earlier runs, with this run's replacing those of the same preset/L/path/step."""
    try:
        known = json.loads(results.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        known = []
    key = lambda r: (r["preset"], r["layers"], r["path"], r["step"])  # noqa: E731
    fresh = {key(r) for r in rows}
    merged = [r for r in known if key(r) not in fresh] + rows
    return sorted(merged, key=lambda r: (r["preset"], r["layers"], STEPS.index(r["step"]), r["path"]))


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _size(gb: float | None) -> str:
    if gb is None:
        return "-"
    return f"{gb:.2f} GiB" if gb >= 1 else f"{gb * 1024:.1f} MiB"


def _ratio(a, b) -> str:
    return "-" if a is None or b in (None, 0) else f"{a / b:.2f}x"


def memory(row: dict) -> float | None:
    """A step's memory for the bounds: the larger of its largest process's peak RSS and the peak
    PSS of all its processes together (analysis runs worker processes; RSS counts shared pages in
    each, PSS splits them), so neither a worker nor the sum of them is left out."""
    values = [v for v in (row.get("peak_rss_gb"), row.get("peak_tree_gb")) if v is not None]
    return max(values) if values else None


def table(rows: list[dict]) -> list[str]:
    """One markdown table: a row per step and path, the streamed path beside the in-memory one."""
    lines = [
        "| preset | L | checkpoint | step | path | peak RSS | all processes (PSS) | wall | work | s / matrix "
        "| memory vs in-memory | s / matrix vs in-memory | note |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = {(r["preset"], r["layers"], r["step"]): r for r in rows if r["path"] == "none" and r.get("rc") == 0}
    for r in rows:
        mem = base.get((r["preset"], r["layers"], r["step"])) if r["path"] != "none" else None
        cells = [r["preset"], str(r["layers"]), _size(r["checkpoint_gb"]), r["step"], f"`{r['path']}`"]
        cells += [_size(r.get("peak_rss_gb")), _size(r.get("peak_tree_gb"))]
        cells += [_fmt(r.get("wall_s"), ".1f"), _fmt(r.get("work_s"), ".1f"), _fmt(r.get("s_per_matrix"), ".3f")]
        cells += [_ratio(memory(r), mem and memory(mem))]
        cells += [_ratio(r.get("s_per_matrix"), mem and mem.get("s_per_matrix"))]
        note = "; ".join(filter(None, [r.get("ran"), r.get("note")]))
        cells += [note.replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def acceptance(rows: list[dict]) -> list[str]:
    """Issue 10's acceptance bounds, checked against the rows measured (Llama-2-7B shape only)."""
    pick = {(r["layers"], r["path"], r["step"]): r for r in rows if r["preset"] == "llama2-7b" and r.get("rc") == 0}

    def streamed(L: int, step: str) -> dict:  # the streamed path's row: a forced one before `auto`
        return next((pick[(L, p, step)] for p in STREAMED if (L, p, step) in pick), {})

    rss = lambda L, step: memory(streamed(L, step))  # noqa: E731
    checks = [
        ("analysis peak RSS, L=8 <= 1.2 x L=2", rss(8, "analyze"), rss(2, "analyze"), lambda a, b: a <= 1.2 * b),
        ("analysis peak RSS, L=8 <= 1.5 GB", rss(8, "analyze"), 1.5e9 / 2**30, lambda a, b: a <= b),
        ("analysis peak RSS, L=32 <= 2 GB", rss(32, "analyze"), 2e9 / 2**30, lambda a, b: a <= b),
        ("Wanda prune + save peak RSS, L=8 <= 3 GB", rss(8, "prune"), 3e9 / 2**30, lambda a, b: a <= b),
        ("evaluation of the saved folder, L=8 <= 3 GB", rss(8, "eval"), 3e9 / 2**30, lambda a, b: a <= b),
    ]
    for L in (2, 8):
        ours, mem = streamed(L, "analyze"), pick.get((L, "none", "analyze")) or {}
        label = f"analysis s/matrix from the files, L={L} <= 1.1 x in-memory"
        checks.append((label, ours.get("s_per_matrix"), mem.get("s_per_matrix"), lambda a, b: a <= 1.1 * b))
    out = []
    for label, a, b, ok in checks:
        verdict = "not measured" if a is None or b is None else ("met" if ok(a, b) else "NOT met")
        numbers = "" if a is None or b is None else f" ({a:.3g} vs {b:.3g})"
        out.append(f"- {label}: {verdict}{numbers}")
    return out


def section(rows: list[dict], offload: bool) -> str:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {total / 2**30:.0f} GiB RAM"
    lines = [
        BEGIN,
        "",
        f"Generated by `bench/scale.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine}).",
        "Peak RSS: the OS's figure for the step's largest process (`getrusage(RUSAGE_CHILDREN)` in a fresh",
        "wrapper); all processes (PSS): the peak, sampled every 0.2 s, of the proportional set size summed",
        "over the step's process and its children (the analysis' worker processes share pages with it).",
        "The bounds below use the larger of the two.",
        "wall: the whole process (imports, load, work, save); work: the step's own seconds as the CLI",
        "reports them (analysis without the load; pruning without texts and perplexities); s / matrix = work",
        "per matrix. Path `auto`: the preflight's choice (streamed when the model does not fit); `none`: the",
        "in-memory path; `default`: a CLI without `--offload`.",
    ]
    if not offload:
        lines.append("This run's CLI had no `--offload` flag: every step ran once, on its default path.")
    if not rows:
        return "\n".join([BEGIN, "", "Not measured yet: run `bench/scale.py` (see above).", "", END])
    lines += ["", *table(rows), "", "Acceptance (issue 10):", "", *acceptance(rows), "", END]
    return "\n".join(lines)


INTRO = """# Scale: models of any size on one machine

Synthetic Llama-2-7B-shaped checkpoints (random bf16 weights, hidden 4096, MLP 11008, 32 heads,
vocab 32000; L of the 32 decoder blocks) written by `alphaprune/synthetic.py`, and each CLI step
measured in its own process by `bench/scale.py`. Regenerate: `.venv/bin/python bench/scale.py
--layers 2,8` (`--paths disk,none` forces streaming where `auto` would pick in-memory) and
`--layers 32 --paths auto` for the full 13.5 GB; the section below is rewritten, the rest of this
file is kept.

"""

GPU_PLACEHOLDER = """

## GPU (bench/gpu_check.sh)

Not run yet: run `bash bench/gpu_check.sh` on a machine with an NVIDIA GPU and put its numbers here.
"""


def write_doc(doc: Path, rows: list[dict], offload: bool) -> None:
    """Replace the generated section of `doc` (created when missing); the rest is kept."""
    old = doc.read_text() if doc.exists() else INTRO + BEGIN + "\n" + END + GPU_PLACEHOLDER
    if BEGIN not in old or END not in old:
        old = old.rstrip("\n") + "\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = old.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    atomic.write_text(doc, head + section(rows, offload) + tail)


# ------------------------------------------------------------------------------------ main


def _layers(value: str) -> list[int]:
    try:
        layers = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer counts such as 2,8, got {value!r}") from None
    if not layers or any(n < 1 for n in layers):
        raise argparse.ArgumentTypeError(f"layer counts are whole numbers from 1, got {value!r}")
    return layers


def _paths(value: str) -> list[str]:
    paths = [p for p in value.split(",") if p]
    bad = [p for p in paths if p not in ("auto", "none", "cpu", "disk")]
    if not paths or bad:
        raise argparse.ArgumentTypeError(f"paths are auto, none, cpu or disk, comma-separated; got {value!r}")
    return paths


def _steps(value: str) -> list[str]:
    steps = [s for s in value.split(",") if s]
    bad = [s for s in steps if s not in STEPS]
    if not steps or bad:
        raise argparse.ArgumentTypeError(f"steps are {', '.join(STEPS)}, comma-separated; got {value!r}")
    return steps


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    mine = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--preset", default="llama2-7b", choices=["llama2-7b", "tiny"], help="tiny: a quick try of the script"
    )
    p.add_argument("--layers", type=_layers, default=[2, 8], help="decoder blocks, comma-separated (2,8,32)")
    p.add_argument("--steps", type=_steps, default=list(STEPS), help="steps to run, e.g. analyze (default all)")
    p.add_argument("--paths", type=_paths, default=["auto", "none"], help="--offload values to run, e.g. auto,none")
    p.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "alphaprune-bench" / "scale")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "scale.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "scale.md")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-gb", type=float, default=1.0, help="safetensors shard size of the checkpoints (GiB)")
    p.add_argument("--memory-gb", type=float, help="memory the in-memory path may use (default: 90%% of available)")
    p.add_argument("--timeout", type=float, help="seconds per step before it is stopped")
    p.add_argument("--rewrite", action="store_true", help="write the checkpoints again even if present")
    p.add_argument("--write-only", action="store_true", help="only write the checkpoints")
    p.add_argument("--keep", action="store_true", help="keep the pruned folders (deleted after their evaluation)")
    return p.parse_args(mine), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    args.dir = args.dir.expanduser().resolve()
    try:
        if args.write_only:
            for layers in args.layers:
                print(checkpoint(args, layers)[0])
            return 0
        offload = has_offload()
        if not offload:
            print("scale.py: this alphaprune CLI has no --offload flag: each step runs once, on its default path")
        rows = []
        for layers in args.layers:
            rows += run_layers(args, layers, offload, extra)
            merged = merge(args.results, rows)
            atomic.write_text(args.results, json.dumps({"rows": merged}, indent=1) + "\n")
            write_doc(args.doc, merged, offload)  # after every checkpoint: a stopped run keeps what it measured
        print(f"wrote {args.results} and {args.doc}")
    except UserError as exc:
        print(f"scale.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
