"""RIA (Relative Importance and Activations, ICLR 2024): a weight's share of its row and column
sums times its input's activation norm to the power a, at Wanda's cost (alphaprune/ria.py).

    registry.pruner("ria").mask(w, stats, 0.7, None, {"ria_a": 0.5, "ria_scope": "matrix"})
"""

from __future__ import annotations

from alphaprune.registry import ACTIVATIONS, Param, Pruner

RIA_A = Param(
    "ria_a", 0.5, "power of the input activation norm in the score", "RIA activation power a",
    low=0.0, high=2.0, step=0.05,
)  # fmt: skip
RIA_SCOPE = Param(
    "ria_scope", "matrix", "where the lowest scores are removed: over the whole matrix (the authors' "
    "default) or within each output row (as Wanda)", "RIA comparison group", kind="choice", choices=("matrix", "row"),
)  # fmt: skip


def mask(w, stats, sparsity: float, nm, params):
    from alphaprune.ria import ria_mask

    return ria_mask(w, stats.col_sq, sparsity, nm, params["ria_a"], per_row=params["ria_scope"] == "row")


SPEC = Pruner(
    name="ria",
    summary="relative importance in row and column x input norm^a; calibration activations",
    needs=ACTIVATIONS,
    mask=mask,
    params=(RIA_A, RIA_SCOPE),
    recipe={"note": ("llm-compressor has no RIA modifier: the one-shot stage below uses Wanda's scores instead.",)},
    order=30,
)
