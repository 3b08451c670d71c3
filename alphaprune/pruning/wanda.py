"""Wanda (ICLR 2024): score |W_ij| x ||X_j||_2 from calibration activations, lowest removed per row.

registry.pruner("wanda").mask(w, stats, 0.7, None, {})   # stats: calibrate.InputStats of the matrix
"""

from __future__ import annotations

from alphaprune.registry import ACTIVATIONS, Pruner


def mask(w, stats, sparsity: float, nm, params):
    from alphaprune.pruners import wanda_mask

    return wanda_mask(w, stats.col_sq, sparsity, nm)


SPEC = Pruner(
    name="wanda",
    summary="|W| x input norm, lowest of each row removed; calibration activations",
    needs=ACTIVATIONS,
    mask=mask,
    recipe={"modifier": "WandaPruningModifier"},
    order=10,
)
