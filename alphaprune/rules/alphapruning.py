"""AlphaPruning (NeurIPS 2024): sparsity from the heavy-tailed alpha of each layer's ESD.

method.md section 4: the metric (default alpha_peak) per matrix, or its mean per block
(mapping "block", the reference default), mapped linearly onto [1 - eps, 1 + eps] and
rescaled so the parameter-weighted mean is the target; higher alpha, more sparsity.
Needs the spectral analysis, no data.

    registry.rule("alphapruning").allocate(RuleInput(analysis.prunable, 0.7, 0.99, {"epsilon": 0.3, ...}))
"""

from __future__ import annotations

from alphaprune import allocation as alloc
from alphaprune.registry import ANALYSIS, Param, Rule, RuleInput

EPSILON = Param(
    "epsilon", alloc.DEFAULT_EPSILON, "allocation range: block ratios span about S(1-eps)..S(1+eps)",
    "Allocation range epsilon", low=0.0, high=1.0, auto=True, step=0.01, grid=(0.1, 0.2, 0.3, 0.4, 0.5),
)  # fmt: skip
METRIC = Param(
    "metric", alloc.DEFAULT_METRIC, "spectral metric that sets each layer's sparsity (a column of analyze)",
    "Metric", kind="text", checker=alloc.check_metric,
)  # fmt: skip


def analysis_options(params) -> dict:
    """The FARMS column, with its default windows, when it is the chosen metric."""
    if params["metric"] != "alpha_farms":
        return {}
    from alphaprune.farms import FarmsSettings

    return {"farms": FarmsSettings()}


def allocate(given: RuleInput) -> alloc.Allocation:
    p = given.params
    return alloc.alphapruning(given.matrices, given.target, p["epsilon"], p["metric"], given.granularity, given.ceiling)


SPEC = Rule(
    name="alphapruning",
    summary="heavy-tailed alpha of each layer's spectrum: higher alpha, more sparsity",
    needs=ANALYSIS,
    allocate=allocate,
    params=(EPSILON, METRIC),
    analysis_options=analysis_options,
    granularities=("block", "matrix"),
    order=10,
)
