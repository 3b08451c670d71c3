"""FARMS (arXiv 2506.06280, ICML 2025): AlphaPruning's mapping on the alpha of each matrix's
pooled ESD over fixed-size square windows, which removes the aspect-ratio bias of whole-matrix
alphas (alphaprune/farms.py computes it; the analysis holds it as the `alpha_farms` column).

    registry.rule("farms").analysis_options(params)   # {"farms": FarmsSettings(window=256, ...)}
    registry.rule("farms").allocate(RuleInput(analysis.prunable, 0.7, 0.99, {"epsilon": 0.3, ...}))
"""

from __future__ import annotations

import dataclasses

from alphaprune import allocation as alloc
from alphaprune.registry import ANALYSIS, Param, Rule, RuleInput
from alphaprune.rules.alphapruning import EPSILON

FARMS_WINDOW = Param(
    "farms_window", 256, "side of the square sub-matrices whose spectra are pooled (2000 for 7B models)",
    "FARMS window", kind="int", low=16, high=4096, step=16,
)  # fmt: skip
FARMS_PER_SIDE = Param(
    "farms_per_side", 6, "at most this many windows along each side of a matrix (cost grows with its square)",
    "FARMS windows per side", kind="int", low=1, high=32, step=1,
)  # fmt: skip
FARMS_SPECTRUM = Param(
    "farms_spectrum", "code", "a window's spectrum and the fit's arithmetic: the authors' code's (code: float32 "
    "squared singular values, float32 fit), that spectrum fit in float64 (svd32), or the exact eigenvalues of "
    "its Gram matrix (exact); they can set another ESD peak",
    "FARMS window spectrum", kind="choice", choices=("code", "svd32", "exact"), legacy="exact",
)  # fmt: skip
ANALYSIS_PARAMS = (FARMS_WINDOW, FARMS_PER_SIDE, FARMS_SPECTRUM)  # what the analysis' alpha_farms depends on


def settings(params):
    """The FARMS settings (alphaprune/farms.py) these parameters ask for."""
    from alphaprune.farms import FarmsSettings

    return FarmsSettings(
        window=params["farms_window"], max_per_side=params["farms_per_side"], spectrum=params["farms_spectrum"]
    ).validate()


def settings_for(config):
    """The FARMS settings a run's config asks for (its rule's analysis options: FARMS' own, or
    AlphaPruning's on alpha_farms), else the defaults: what the Spectra page offers to compute."""
    from alphaprune.farms import FarmsSettings

    rule = config.rule
    options = rule.analysis_options(config.rule_params()) if rule.analysis_options else {}
    return options.get("farms", FarmsSettings())


def analysis_options(params) -> dict:
    return {"farms": settings(params)}


def allocate(given: RuleInput) -> alloc.Allocation:
    p = given.params
    out = alloc.alphapruning(
        given.matrices, given.target, p["epsilon"], "alpha_farms", given.granularity, given.ceiling
    )
    own = {"epsilon": p["epsilon"], **{q.name: p[q.name] for q in ANALYSIS_PARAMS}}
    return dataclasses.replace(out, method="farms", settings={**own, "mapping": given.granularity})


SPEC = Rule(
    name="farms",
    summary="AlphaPruning on the alpha of pooled fixed-size windows: no aspect-ratio bias",
    needs=ANALYSIS,
    allocate=allocate,
    params=(EPSILON, *ANALYSIS_PARAMS),
    granularities=("block", "matrix"),
    analysis_options=analysis_options,
    order=15,
)
