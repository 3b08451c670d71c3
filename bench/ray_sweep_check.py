"""Issue 12's Ray acceptance on the default model: a local-mode sweep of 2 epsilons x 2
sparsities with small calibration stores the same four runs as the sequential sweep, and a
driver killed midway, run again, adds only the missing cells.

    .venv/bin/python bench/ray_sweep_check.py [--workers 2] [--pruner wanda]

Each sweep gets a run store of its own (one shared cache); prints each cell's perplexities
side by side, how many cells the kill left, and exits 1 when anything differs.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alphaprune.runs import RunStore  # noqa: E402


def sweep_args(pruner: str) -> list[str]:
    return ["sweep", "--model", "smollm2-135m", "--pruner", pruner, "--allocation", "alphapruning",
            "--epsilons", "0.2,0.3", "--sparsities", "0.5,0.6", "--calib", "python-docs", "--eval", "python-docs",
            "--calib-samples", "4", "--seqlen", "128", "--eval-windows", "4"]  # fmt: skip


def start(args: list[str], data: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "ALPHAPRUNE_DATA": str(data), "ALPHAPRUNE_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "alphaprune", *args], env=env, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(proc: subprocess.Popen) -> float:
    began = time.perf_counter()
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return time.perf_counter() - began


def cells(data: Path) -> dict:
    return {r.settings["cell"]: r for r in RunStore(data / "runs.sqlite").list()}


def killed_midway(args: list[str], data: Path, cache: Path) -> int:
    """Start the Ray sweep, SIGKILL its process group once a cell is stored; the cells kept (at
    most 3: a kill that came after the fourth loses that one, so the rerun always has work)."""
    proc, store = start(args, data, cache), RunStore(data / "runs.sqlite")
    while not store.path.exists() or not store.list():
        if proc.poll() is not None:
            raise SystemExit("the sweep ended before the kill: use more cells")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = store.list()
    if len(kept) == 4:  # the kill came after the last cell: take one away, so the rerun has one to add
        store.delete([kept[-1].id])
    return len(store.list())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pruner", default="wanda")
    a = parser.parse_args()
    ray_args = [*sweep_args(a.pruner), "--ray", "local", "--workers", str(a.workers)]
    with tempfile.TemporaryDirectory(prefix="ray-check-") as tmp:
        tmp = Path(tmp)
        seconds = {"sequential": finish(start(sweep_args(a.pruner), tmp / "seq", tmp / "cache"))}
        seconds["ray"] = finish(start(ray_args, tmp / "ray", tmp / "cache"))
        kept = killed_midway(ray_args, tmp / "kill", tmp / "cache")
        seconds["resumed"] = finish(start(ray_args, tmp / "kill", tmp / "cache"))
        seq, ray, resumed = cells(tmp / "seq"), cells(tmp / "ray"), cells(tmp / "kill")
    same = True
    print(f"{'cell':18s} {'eps':>4s} {'sparsity':>8s} {'sequential':>12s} {'ray':>12s} {'resumed':>12s}")
    for key, r in seq.items():
        row = [r.ppl_after, ray[key].ppl_after if key in ray else None, resumed.get(key) and resumed[key].ppl_after]
        same &= row[0] == row[1] == row[2] and r.ratios == ray[key].ratios
        print(f"{key:18s} {r.settings['epsilon']:4g} {r.settings['sparsity']:8g} "
              + " ".join(f"{v:12.4f}" if v is not None else f"{'missing':>12s}" for v in row))  # fmt: skip
    print(f"runs: sequential {len(seq)}, ray {len(ray)}; killed after {kept} stored, the rerun added "
          f"{len(resumed) - kept} (total {len(resumed)}); seconds {seconds}")  # fmt: skip
    print("identical" if same and len(ray) == len(resumed) == 4 else "DIFFERENT")
    return 0 if same and len(ray) == len(resumed) == 4 else 1


if __name__ == "__main__":
    sys.exit(main())
