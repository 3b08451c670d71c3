"""RIA, Relative Importance and Activations (Zhang et al., "Plug-and-Play", ICLR 2024).

A weight's score is its share of its input column plus its share of its output row, times
the input feature's norm to the power a (method.md section 8):

    score_ij = (|W_ij| / sum_i |W_ij| + |W_ij| / sum_j |W_ij|) * ||X_j||_2 ** a,   a = 0.5

The lowest scores go as the authors' code removes them by default: one threshold over the
whole matrix, the weights <= the int(s * numel)-th smallest score; `per_row=True` per output
row as Wanda does (stable sort, int(s * in) per row); per group of M inputs for N:M.

    mask = ria_mask(w, stats.col_sq, 0.7)               # w: (out, in); True = removed
    mask = ria_mask(w, stats.col_sq, 0.0, nm=(2, 4))

col_sq (in,) is what calibrate.InputStats.col_sq holds: the sum over the calibration tokens
of x_j^2 divided by the number of windows. That factor multiplies every score of the
matrix by the same number (1 / windows) ** (a / 2), so the mask is the one of the paper's
||X_j||_2 = sqrt(sum over all tokens of x_j^2), and the same as the authors' code, whose
scaler_row is kept at that scale too.

The authors' optional channel permutation for N:M (heuristic reallocation, linear sum
assignment) is left out: plain N:M groups only.
"""

from __future__ import annotations

import torch

from alphaprune.patterns import NM
from alphaprune.pruners import _nm_mask, _threshold_mask

TINY = torch.finfo(torch.float32).tiny  # a zero column / row sum: its weights are all zero


def ria_score(w: torch.Tensor, col_sq: torch.Tensor, a: float = 0.5) -> torch.Tensor:
    """RIA's score (out, in), float32. w: (out, in); col_sq: (in,) at any positive scale."""
    mag = w.float().abs()  # (out, in)
    col_sum = mag.sum(dim=0, keepdim=True).clamp_min(TINY)  # (1, in): over the output rows i
    row_sum = mag.sum(dim=1, keepdim=True).clamp_min(TINY)  # (out, 1): over the inputs j
    relative = mag / col_sum + mag / row_sum
    return relative * col_sq.float().sqrt()[None, :] ** a


def ria_mask(
    w: torch.Tensor,
    col_sq: torch.Tensor,
    sparsity: float,
    nm: NM | None = None,
    a: float = 0.5,
    per_row: bool = False,
) -> torch.Tensor:
    """True where a weight is removed, (out, in). The ratio does not apply under N:M. Scope as
    the spec's default (the authors'): one threshold over the matrix; `per_row` as Wanda."""
    score = ria_score(w, col_sq, a)
    if nm is not None:
        return _nm_mask(score, nm)
    if not per_row:
        return _threshold_mask(score, sparsity)
    per_row_count = int(score.shape[1] * sparsity)
    order = torch.argsort(score, dim=1, stable=True)[:, :per_row_count]  # lowest of each row
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)
