"""How DSnoT moves each matrix's output error on the default model, at several cycle counts.

DSnoT (alphaprune/dsnot.py) swaps pruned and kept weights, row by row, to cancel the mean
of the error a mask leaves in the row's output. The error that matters is the whole output
error, mean and spread. This script measures both, for every matrix the DSnoT refiner
refines with its defaults (the attention's; the MLP's too with --all), comparing Wanda's
mask at the target sparsity with the refiner's mask at several cycle counts (its default is
50). Pruner and refiner come from the registry with their specs' defaults; the statistics
from calibrate.collect, as in a pruning run. Unlike a run, each block sees the dense
model's activations (no block is pruned), and 8 calibration windows by default (the
docs/results.md protocol has 32):

    mse = mean over tokens and rows of (x W^T - x (W * kept)^T)^2      x: (tokens, in)
    mean part = mean over rows of (its mean over tokens)^2              the part DSnoT targets

It prints, per matrix kind, the median over blocks of the refined MSE over Wanda's, the
same for the mean part, and the swaps per row beside the row's kept weights.

    .venv/bin/python bench/dsnot_check.py [--windows 8] [--sparsity 0.7] [--cycles 5 10 20 50] [--all]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, no install needed

from alphaprune import calibrate, registry  # noqa: E402
from alphaprune.config import PruneConfig  # noqa: E402
from alphaprune.models import DEFAULT_MODEL, load_model  # noqa: E402
from alphaprune.prune import matrices_by_block  # noqa: E402
from alphaprune.text import calibration_windows, token_ids  # noqa: E402


def errors(x: torch.Tensor, w: torch.Tensor, removed: torch.Tensor) -> tuple[float, float]:
    """(mse, mean part) of the output error a mask leaves; x (tokens, in), w and removed (out, in)."""
    diff = x @ (w * removed).T  # (tokens, out): what the removed weights contributed
    return diff.pow(2).mean().item(), diff.mean(0).pow(2).mean().item()


def config(args, cycles: int) -> PruneConfig:
    """Wanda + DSnoT with the specs' defaults, but these cycles (and every matrix with --all)."""
    scope = {"dsnot_scope": "all"} if args.all else {}
    return PruneConfig(pruner="wanda", refine="dsnot", dsnot_cycles=cycles, **scope)


def measured(refs, args) -> list:
    """The matrices the refiner refines with these settings."""
    base = config(args, 0)
    return [ref for ref in refs if registry.refiner(base.refine).applies(ref, base.pruner_params())]


def block_rows(refs, captured, stats, args) -> dict[str, list[tuple]]:
    """Per matrix kind, one row per matrix: (kept weights per row, then per cycles: mse ratio,
    mean part ratio, swaps per row), the ratios over Wanda's mask alone. refs: the measured
    matrices (`measured`); captured: their inputs, by name."""
    base = config(args, 0)
    pruner, refiner = base.pruner_spec, registry.refiner(base.refine)
    rows = {}
    for ref in refs:
        x, w, s = captured[ref.name].float(), ref.weight().detach().float(), stats[ref.name]
        start = pruner.mask(w, s, args.sparsity, None, base.pruner_params())
        mse0, mean0 = errors(x, w, start)
        row = [int(w.shape[1] - start[0].sum())]  # the row's kept weights
        for cycles in args.cycles:
            refined = refiner.refine(w, start, s, None, config(args, cycles).pruner_params())
            mse, mean = errors(x, w, refined)
            swaps = (refined != start).sum(1).float().mean().item() / 2  # each swap flips two entries
            row.append((mse / mse0, mean / max(mean0, 1e-30), swaps))
        rows.setdefault(ref.name.rsplit(".", 1)[-1], []).append(tuple(row))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--cycles", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--all", action="store_true", help="the MLP's matrices too")
    args = parser.parse_args()
    loaded = load_model(DEFAULT_MODEL)
    ids = token_ids(str(args.data / "calib_python_docs.txt"), loaded.tokenizer)
    windows = calibration_windows(ids, args.windows, 1024, seed=0)
    blocks = matrices_by_block(loaded.model)
    found: dict[str, list[tuple]] = {}

    def on_block(index, block, run):
        # each measured matrix's inputs, (tokens, in): 8 x 1024 x 576 floats, 19 MB, per matrix
        refs = measured(blocks[index], args)
        captured: dict[str, list[torch.Tensor]] = {ref.name: [] for ref in refs}
        hooks = [ref.module.register_forward_hook(lambda m, a, o, k=ref.name: captured[k].append(
            a[0].detach().reshape(-1, a[0].shape[-1]))) for ref in refs]  # fmt: skip
        try:
            stats = calibrate.collect(blocks[index], run, moments=True)
        finally:
            for hook in hooks:
                hook.remove()
        inputs = {name: torch.cat(parts) for name, parts in captured.items()}
        for kind, rows in block_rows(refs, inputs, stats, args).items():
            found.setdefault(kind, []).extend(rows)

    with torch.no_grad():
        calibrate.sequential(loaded.model, windows, on_block)
    report(found, args)
    return 0


def report(found: dict[str, list[tuple]], args) -> None:
    print(f"{args.windows} x 1024 windows, Wanda at {args.sparsity:.0%}, torch threads {torch.get_num_threads()}")
    print("medians over blocks; ratios are Wanda + DSnoT over Wanda alone (below 1: DSnoT helps)")
    print(
        "| matrix | blocks | kept per row | "
        + " | ".join(f"{c} cycles: mse, mean part, swaps" for c in args.cycles)
        + " |"
    )
    print("|---|---|---|" + "---|" * len(args.cycles))
    for kind, rows in found.items():
        cells = []
        for i in range(1, len(args.cycles) + 1):
            mse, mean, swaps = (statistics.median(r[i][k] for r in rows) for k in range(3))
            cells.append(f"x{mse:.3f}, x{mean:.3f}, {swaps:.1f}")
        print(f"| {kind} | {len(rows)} | {rows[0][0]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
