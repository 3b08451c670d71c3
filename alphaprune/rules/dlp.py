"""DLP: Dynamic Layerwise Pruning, block sparsity from Wanda scores (arXiv 2505.23807, ICML 2025).

Each block's unimportance U_l is one reduction of the Wanda scores |W_ij| ||X_j||_2 of all
its prunable matrices, with X the calibration activations entering the still dense block
(method.md section 8). Then

    I_l = 1 - U_l / sum U             importance
    d_l = min-max scale of I onto [0, 2 alpha]
    s_l = S + mean(d) - d_l           more important, less sparse; a span of 2 alpha
                                      ([S + mean(d) - 2 alpha, S + mean(d)]: about S +/- alpha)

Granularity is the block: every matrix of a block gets the block's ratio.

    u = dlp_unimportance(model, calib)                       # one value per block
    alloc = dlp(prunable_matrices(model), 0.7, u, alpha=0.15)
    block_unimportance(refs, run, "median")                  # one block (the streamed path)

Paper vs released code (ironartisan/DLP), and what is done here:
- Reduction: the paper takes the median of the block's scores, the released code's
  unstructured path the mean (its `--strategy median` default reaches only the N:M path).
  `reduction` offers both, default "mean" (the code). The median is the lower one of the two
  middle scores for an even count, as torch.median (the code's median) returns it.
- ||X_j||_2 is, as in Wanda's code, sqrt(mean over calibration windows of the squared norm
  over the window's tokens) (calibrate.InputStats.col_sq): a common 1/sqrt(windows) factor
  that cancels in U_l / sum U.
- mean(d): the code takes the arithmetic mean over blocks; here the parameter-weighted mean
  over matrices (the invariant of alphaprune.allocation). The two agree when every block has
  the same parameter count (every decoder we load); otherwise `raw` is the code's ratios
  plus one common shift.
- Bounds: the code clips a block's sparsity at <= 0 to 0.01 (so the mean drifts) and divides
  by zero when all U are equal; here ratios outside [0, ceiling] are refitted with one common
  shift (alphaprune.allocation) and equal U give the uniform allocation.

Cost of `block_unimportance` on one block of n weights (a 7B block: n = 202M): the mean holds
one matrix's float32 scores at a time (at most 45M values, 180 MB, for 7B) and sums each in
float32 (torch's pairwise sum) before adding the sums in float64. The median also fills one
float32 buffer of all n scores on the CPU (0.8 GB for 7B, whatever the weights' device) and
selects in place (numpy's introselect, O(n), about a second for 7B): no second copy as
torch.median or torch.kthvalue would make.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from alphaprune.allocation import DEFAULT_CEILING, Allocation, Matrix, _allocation, check_target
from alphaprune.errors import UserError, setting
from alphaprune.registry import ACTIVATIONS, Param, Rule, RuleInput

if TYPE_CHECKING:  # torch is imported where the statistics run: the registry loads this module before torch
    import torch
    from torch import nn

    from alphaprune.arch import MatrixRef
    from alphaprune.calibrate import InputStats

Progress = Callable[[float, str], None]
REDUCTIONS = ("mean", "median")
DLP_ALPHA = 0.15  # the repo's scripts, at 70%


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise UserError(
            f"DLP's reduction must be 'mean' (the released code) or 'median' (the paper), got {reduction!r}"
        )


def check_dlp_alpha(alpha: float) -> None:
    """UserError unless alpha is a finite number >= 0."""
    if not 0.0 <= alpha < np.inf:  # also rejects NaN
        raise UserError(f"DLP's alpha must be a number >= 0, got {alpha}; set {setting('dlp_alpha')}")


def _scores(ref: MatrixRef, stats: InputStats) -> torch.Tensor:
    """Wanda scores |W_ij| ||X_j||_2 of one matrix, (out, in) float32, a fresh tensor."""
    import torch

    norms = stats.col_sq.float().sqrt().to(ref.module.weight.device)  # (in,)
    return ref.weight().to(torch.float32, copy=True).abs_().mul_(norms[None, :])


def _lower_median(refs: list[MatrixRef], stats: dict[str, InputStats]) -> float:
    """The ((n - 1) // 2)-th smallest score of the block (torch.median's convention)."""
    import torch

    count = sum(ref.params for ref in refs)
    flat = torch.empty(count, dtype=torch.float32)  # (n,) on the CPU: 4 bytes per weight
    start = 0
    for ref in refs:
        scores = _scores(ref, stats[ref.name]).flatten()
        flat[start : start + scores.numel()] = scores
        start += scores.numel()
        del scores  # one matrix's scores at a time
    values = flat.numpy()  # shares flat's memory
    k = (count - 1) // 2
    values.partition(k)  # in place
    return float(values[k])


def block_unimportance(refs: list[MatrixRef], run, reduction: str = "mean") -> float:
    """DLP's unimportance of one dense block: the mean or median of its matrices' Wanda scores,
    with `run()` feeding the calibration activations through it (as prune.block_outlier_ratio)."""
    import torch

    from alphaprune.calibrate import collect

    check_reduction(reduction)
    with torch.no_grad():
        stats = collect(refs, run)
        if reduction == "median":
            return _lower_median(refs, stats)
        total = sum(float(_scores(ref, stats[ref.name]).sum()) for ref in refs)
    return total / sum(ref.params for ref in refs)


def dlp_unimportance(
    model: nn.Module, windows: torch.Tensor, reduction: str = "mean", progress: Progress | None = None
) -> list[float]:
    """DLP's unimportance of every block, from the dense model's activations (windows (N, seqlen))."""
    from alphaprune.prune import block_statistics

    check_reduction(reduction)
    return block_statistics(model, windows, lambda refs, run, p: block_unimportance(refs, run, reduction), {}, progress)


def _spread(unimportance: np.ndarray, alpha: float) -> np.ndarray:
    """d_l: importance 1 - U_l / sum U min-max scaled onto [0, 2 alpha]; zeros when all U are equal."""
    total = unimportance.sum()
    importance = 1.0 - unimportance / total if total > 0 else np.zeros_like(unimportance)
    low, high = importance.min(), importance.max()
    if not high > low:
        return np.zeros_like(unimportance)
    return (importance - low) / (high - low) * 2.0 * alpha


def dlp(
    matrices: Sequence[Matrix],
    target: float,
    unimportance: Sequence[float],
    alpha: float = DLP_ALPHA,
    ceiling: float = DEFAULT_CEILING,
) -> Allocation:
    """DLP's block sparsities from one unimportance per block (in block order; see the module docstring)."""
    check_target(target, ceiling)
    check_dlp_alpha(alpha)
    blocks = sorted({m.block for m in matrices})
    u = np.asarray(unimportance, dtype=np.float64)  # (L,)
    if u.shape != (len(blocks),):
        raise ValueError(f"{u.size} unimportance values for {len(blocks)} blocks")
    if not (np.all(np.isfinite(u)) and u.min() >= 0.0):
        raise ValueError(f"unimportance values must be finite and >= 0, got {u.tolist()}")
    per_block = dict(zip(blocks, _spread(u, alpha), strict=True))
    d = np.asarray([per_block[m.block] for m in matrices])  # (matrices,)
    params = np.asarray([m.params for m in matrices], dtype=np.float64)
    raw = target + np.dot(params, d) / params.sum() - d  # weighted mean exactly the target
    settings = {"dlp_alpha": alpha, "unimportance": [float(x) for x in u]}
    return _allocation("dlp", matrices, target, raw, ceiling, "shift", settings)


def statistic(refs, run, params) -> float:
    return block_unimportance(refs, run, params["dlp_reduction"])


def allocate(given: RuleInput) -> Allocation:
    return dlp(given.matrices, given.target, given.statistics, given.params["dlp_alpha"], given.ceiling)


SPEC = Rule(
    name="dlp",
    summary="block unimportance from Wanda scores of calibration activations: more important, less sparse",
    needs=ACTIVATIONS,
    allocate=allocate,
    params=(
        Param(
            "dlp_alpha",
            DLP_ALPHA,
            "spread: block sparsities span 2 alpha around the target (mean kept)",
            "DLP range alpha",
            low=0.0,
            high=0.5,
            step=0.01,
            auto=True,
            grid=(0.05, 0.1, 0.15, 0.2, 0.25),
        ),
        Param(
            "dlp_reduction",
            "mean",
            "how a block's Wanda scores become its unimportance (code: mean; paper: median)",
            "DLP reduction",
            kind="choice",
            choices=REDUCTIONS,
        ),
    ),  # fmt: skip
    statistic=statistic,
    statistic_params=("dlp_reduction",),
    order=40,
)
