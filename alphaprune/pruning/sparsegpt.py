"""SparseGPT (ICML 2023): prune column blocks by w^2 / [H^-1]_jj^2, spreading each error onward.

With a refiner (DSnoT's paper's "SparseGPT + DSnoT"): on the matrices it refines, the mask of
the lowest saliency per row, from the weights as they are, is refined and no error is spread;
the matrices it leaves (dsnot_scope attention: the MLP) get SparseGPT alone, updates and all.
DSnoT's released code means the first (initial_method "sparsegpt") but never fills its H, so
as released it scores every weight 0 and removes each row's first columns.

registry.pruner("sparsegpt").update(w, stats, 0.7, None, {})        # the new weight, float32
registry.pruner("sparsegpt").refine_from(w, stats, 0.7, None, {})   # the mask DSnoT starts from
"""

from __future__ import annotations

from alphaprune.registry import HESSIAN, Pruner


def update(w, stats, sparsity: float, nm, params):
    from alphaprune.pruners import sparsegpt

    return sparsegpt(w, stats.hessian(), sparsity, nm)


def refine_from(w, stats, sparsity: float, nm, params):
    from alphaprune.pruners import sparsegpt_saliency_mask

    return sparsegpt_saliency_mask(w, stats.hessian(), sparsity, nm)


SPEC = Pruner(
    name="sparsegpt",
    summary="second-order: Hessian of the calibration inputs, errors compensated",
    needs=HESSIAN,
    update=update,
    refine_from=refine_from,
    recipe={"modifier": "SparseGPTModifier", "options": {"block_size": 128, "dampening_frac": 0.01}},  # as ours
    order=20,
)
