"""ATP: sparsity rising linearly with depth (arXiv 2502.14770, ICML 2025; method.md section 8).

Block l of L (blocks sorted by index, l = 0..L-1) gets the arithmetic progression

    s_l = S - beta (L - 1) / 2 + l beta

of step beta centred on the target S: lower blocks keep more weights, because their
reconstruction errors propagate through every later block. Granularity is the block, as in
the paper and its code: every matrix of a block gets the block's ratio. No data is needed;
the paper picks beta by a small grid search on perplexity (steps of 0.002 up to the largest
legal beta, `max_beta`).

    max_beta(0.7, 32)                                    # 0.6 / 31 = 0.01935...
    alloc = atp(analysis.prunable, target=0.7, beta=0.01)
    alloc.block_ratios, alloc.clipped

Centre. The paper's formula keeps the arithmetic mean over blocks at S; the invariant here is
the parameter-weighted mean over matrices. The two agree when every block has the same
parameter count (every decoder we load). Otherwise the progression is centred on the
parameter-weighted mean block position instead of (L - 1) / 2: `raw` is the paper's
formula plus one common shift, with the same step beta.

Bounds. The reference code only rejects beta > max_beta (no lower bound, no clipping: at
beta = max_beta and S >= 0.5 its last block is pruned entirely). Here beta must be inside
[0, max_beta], and ratios outside [0, ceiling] are refitted with one common shift
(alphaprune.allocation), which keeps the step between the blocks left unclipped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from alphaprune.allocation import DEFAULT_CEILING, Allocation, Matrix, _allocation, check_target
from alphaprune.errors import UserError, setting
from alphaprune.registry import WEIGHTS, Param, Rule, RuleInput

_PAPER_STEP = 0.002  # the paper's grid of beta
_SNAP = 1e-12  # rounding of beta (L - 1) / 2 against S at beta = max_beta


def max_beta(target: float, blocks: int) -> float:
    """The largest step that keeps every block of the progression inside [0, 1] (0 for one block)."""
    if blocks <= 1:
        return 0.0
    return min(2.0 * target, 2.0 * (1.0 - target)) / (blocks - 1)


def check_beta(beta: float, target: float, blocks: int) -> None:
    """UserError unless 0 <= beta <= max_beta(target, blocks)."""
    limit = max_beta(target, blocks)
    if not 0.0 <= beta <= limit * (1.0 + 1e-9):  # also rejects NaN
        shown = math.floor(limit * 1e4) / 1e4  # rounded down: the bound shown is itself legal
        raise UserError(
            f"ATP's beta must be in [0, {shown:g}] for {target * 100:g}% over {blocks} blocks, "
            f"got {beta:g}; set {setting('beta')}"
        )


def _snap(raw: np.ndarray) -> np.ndarray:
    """Ratios a rounding error outside [0, 1] put on the bound (so they count as unclipped)."""
    raw = raw.copy()
    raw[(raw < 0.0) & (raw > -_SNAP)] = 0.0
    raw[(raw > 1.0) & (raw < 1.0 + _SNAP)] = 1.0
    return raw


def atp(matrices: Sequence[Matrix], target: float, beta: float, ceiling: float = DEFAULT_CEILING) -> Allocation:
    """ATP's arithmetic progression over the blocks, one ratio per block (see the module docstring)."""
    check_target(target, ceiling)
    blocks = sorted({m.block for m in matrices})
    check_beta(beta, target, len(blocks))
    position = {b: float(i) for i, b in enumerate(blocks)}  # l = 0..L-1, whatever the block indices
    depth = np.asarray([position[m.block] for m in matrices])  # (matrices,)
    params = np.asarray([m.params for m in matrices], dtype=np.float64)
    centre = float(np.dot(params, depth) / params.sum())  # (L - 1) / 2 when blocks are of equal size
    raw = _snap(target + beta * (depth - centre))
    return _allocation("atp", matrices, target, raw, ceiling, "shift", {"beta": beta})


def _beta_grid(target: float, blocks: int) -> tuple[float, ...]:
    """ATP's search, as the paper's: beta in steps of 0.002 up to the largest beta of this
    target and depth (rounded down, so every candidate is accepted); quarter steps of it where
    that gives fewer than four candidates (deep models, whose largest beta is small)."""
    top = math.floor(min(max_beta(target, blocks), 0.1) * 1e6) / 1e6  # 0.1: the parameter's own ceiling
    if top <= 0:
        return (0.0,)
    steps = tuple(round(_PAPER_STEP * k, 6) for k in range(1, int(top / _PAPER_STEP + 1e-9) + 1))
    return steps if len(steps) >= 4 else tuple(round(top * f, 6) for f in (0.25, 0.5, 0.75, 1.0))


def _check(params, target: float, blocks: int) -> None:
    """Beta against this target's and depth's largest, before any work (auto: its grid is)."""
    if params["beta"] != "auto":
        check_beta(params["beta"], target, blocks)


def allocate(given: RuleInput) -> Allocation:
    return atp(given.matrices, given.target, given.params["beta"], given.ceiling)


SPEC = Rule(
    name="atp",
    summary="sparsity rising linearly with depth, by beta per block",
    needs=WEIGHTS,
    allocate=allocate,
    check=_check,
    params=(
        Param(
            "beta",
            0.005,
            "sparsity step from one block to the next (at most min(2S, 2(1-S)) / (L-1))",
            "ATP step beta",
            low=0.0,
            high=0.1,
            step=0.001,
            auto=True,
            grid=_beta_grid,
        ),
    ),  # fmt: skip
    order=30,
)
