"""OWL (outlier-weighed layerwise sparsity, ICML 2024): fewer weights removed where outliers are.

method.md section 4: per block, the share of Wanda scores above M x the block's mean
(from calibration activations through the dense block), min-max normalised to
[0, 2 lambda], centred and subtracted from the target.

    registry.rule("owl").statistic(refs, run, {"owl_m": 5.0})     # one block's outlier ratio (%)
    registry.rule("owl").allocate(RuleInput(matrices, 0.7, 0.99, {"owl_lambda": 0.08}, statistics=ratios))
"""

from __future__ import annotations

from alphaprune import allocation as alloc
from alphaprune.registry import ACTIVATIONS, Param, Rule, RuleInput

OWL_M = Param(
    "owl_m", alloc.OWL_M, "outlier threshold: a score above M x the block's mean is an outlier",
    "Outlier threshold M", low=1.0, high=20.0, step=0.5,
)  # fmt: skip
OWL_LAMBDA = Param(
    "owl_lambda", alloc.OWL_LAMBDA, "spread: block sparsities span 2 lambda around the target (mean kept)",
    "Spread lambda", low=0.0, high=0.5, step=0.01, auto=True, grid=(0.04, 0.08, 0.12, 0.16, 0.2),
)  # fmt: skip


def statistic(refs, run, params) -> float:
    from alphaprune.prune import block_outlier_ratio

    return block_outlier_ratio(refs, run, params["owl_m"])


def allocate(given: RuleInput) -> alloc.Allocation:
    p = given.params
    return alloc.owl(given.matrices, given.target, given.statistics, p["owl_lambda"], p["owl_m"], given.ceiling)


SPEC = Rule(
    name="owl",
    summary="outlier ratio of each block's Wanda scores: more outliers, less sparsity",
    needs=ACTIVATIONS,
    allocate=allocate,
    params=(OWL_M, OWL_LAMBDA),
    statistic=statistic,
    statistic_params=("owl_m",),
    order=20,
)
