"""Magnitude pruning: remove the weights of smallest |W| within each matrix (no data needed).

registry.pruner("magnitude").mask(w, None, 0.7, None, {})   # bool (out, in), True = removed
"""

from __future__ import annotations

from alphaprune.registry import WEIGHTS, Pruner


def mask(w, stats, sparsity: float, nm, params):
    from alphaprune.pruners import magnitude_mask

    return magnitude_mask(w, sparsity, nm)


SPEC = Pruner(
    name="magnitude",
    summary="smallest |W| in each matrix; no data needed",
    needs=WEIGHTS,
    mask=mask,
    recipe={
        "note": (
            "llm-compressor has no one-shot magnitude pruner (MagnitudePruningModifier is a",
            "training-time schedule with one global sparsity).",
        )
    },
    order=0,
)
