"""DSnoT (Dynamic Sparse No Training, ICLR 2024): a training-free prune-and-grow refinement of any
mask pruner's mask, row by row, from the calibration inputs' means and variances (alphaprune/dsnot.py).
After SparseGPT it refines SparseGPT's saliency mask with no error updates (the pruner's
`refine_from`, what DSnoT's code means by its initial method "sparsegpt"); a matrix outside the
scope is pruned by the pruner alone (SparseGPT with its updates).

    registry.refiner("dsnot").refine(w, mask, stats, None, registry.defaults())   # every dsnot_* setting
"""

from __future__ import annotations

from alphaprune.registry import Param, Refiner

CYCLES = Param(
    "dsnot_cycles", 50, "most prune-and-grow swaps per row (the released code's default, run there on rows of "
    "4096 or more inputs: the same cap is a larger share of a narrower row's kept weights)", "DSnoT cycles",
    kind="int", low=0, high=500, step=1,
)  # fmt: skip
THRESHOLD = Param(
    "dsnot_threshold", 0.1, "a row stops once its reconstruction error is below this (per-window sums, as the code)",
    "DSnoT threshold", low=0.0, high=10.0, step=0.01,
)  # fmt: skip


SCOPE = Param(
    "dsnot_scope", "attention", "which matrices are refined: the attention's (the released code's default; "
    "the MLP is pruned by the pruner alone) or all", "DSnoT scope", kind="choice", choices=("attention", "all"),
)  # fmt: skip
VARIANCE = Param(
    "dsnot_variance", "windows", "the input variance that orders the weights to grow: each calibration "
    "window's own, averaged (the released code's) or over all tokens together (adds the spread of the "
    "windows' means)", "DSnoT variance", kind="choice", choices=("windows", "tokens"), legacy="tokens",
)  # fmt: skip
CANDIDATES = Param(
    "dsnot_candidates", "released", "unstructured: read the candidate lists as the released code does (a row "
    "whose opposite-sign candidates run out goes on to others, which can change its count) or stop the row "
    "there (strict, its count kept)", "DSnoT candidates", kind="choice", choices=("released", "strict"),
    legacy="strict",
)  # fmt: skip


def applies(ref, params) -> bool:
    return params["dsnot_scope"] == "all" or ref.in_attention


def refine(w, mask, stats, nm, params):
    from alphaprune.dsnot import dsnot

    var = stats.window_var if params["dsnot_variance"] == "windows" else stats.var
    return dsnot(w, mask, stats.window_sum, var, stats.col_sq, params["dsnot_cycles"], params["dsnot_threshold"],
                 nm, read_on=params["dsnot_candidates"] == "released")  # fmt: skip


SPEC = Refiner(
    name="dsnot",
    summary="prune-and-grow refinement of the mask, row by row, no training",
    refine=refine,
    params=(CYCLES, THRESHOLD, SCOPE, VARIANCE, CANDIDATES),
    applies=applies,
    order=0,
)
