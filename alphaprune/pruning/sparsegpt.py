"""SparseGPT (ICML 2023): prune column blocks by w^2 / [H^-1]_jj^2, spreading each error onward.

registry.pruner("sparsegpt").update(w, stats, 0.7, None, {})   # the new weight, float32
"""

from __future__ import annotations

from alphaprune.registry import HESSIAN, Pruner


def update(w, stats, sparsity: float, nm, params):
    from alphaprune.pruners import sparsegpt

    return sparsegpt(w, stats.hessian(), sparsity, nm)


SPEC = Pruner(
    name="sparsegpt",
    summary="second-order: Hessian of the calibration inputs, errors compensated",
    needs=HESSIAN,
    update=update,
    recipe={"modifier": "SparseGPTModifier", "options": {"block_size": 128, "dampening_frac": 0.01}},  # as ours
    order=20,
)
