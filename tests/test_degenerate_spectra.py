"""Any spectrum fits: zeros, denormals, rank-deficient, fully pruned and constant matrices,
and NaN / inf weights get a one-line error naming the matrix (issue 9, item 1).

The bug this guards: a pruned matrix had eigenvalues positive in float64 but 0 in float32,
and the ESD-peak histogram (float32, as the reference) got a range of [-inf, x].

    .venv/bin/python -m pytest tests/test_degenerate_spectra.py -q
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from alphaprune.analysis import METRIC_NAMES, LayerMetrics, analyze, measure_matrix
from alphaprune.arch import MatrixRef, prunable_matrices
from alphaprune.errors import UserError
from alphaprune.fits import XMIN_RULES, esd_peak, fit_all
from alphaprune.prune import prune_model
from alphaprune.spectra import PRECISIONS
from alphaprune.text import calibration_windows, token_ids


def _ref(weight: torch.Tensor, name: str = "block.0.proj") -> MatrixRef:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data = weight.clone()
    return MatrixRef(name=name, block=0, kind="proj", module=layer, transposed=False, prunable=True)


def _denormal(rows: int, cols: int) -> torch.Tensor:
    """Entries ~1e-30: the float64 Gram's eigenvalues (~1e-58) are 0 in float32."""
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float() * 1e-30


def _rank_one(rows: int, cols: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(rows, 1, generator=g) @ torch.randn(1, cols, generator=g)


def _half_zero_rows(rows: int, cols: int) -> torch.Tensor:
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(2))
    w[: rows // 2] = 0  # a rank-deficient, partly pruned matrix
    return w


CASES = {
    "zeros": lambda r, c: torch.zeros(r, c),
    "denormal": _denormal,
    "float32 subnormal entries": lambda r, c: torch.full((r, c), 1e-42),
    "rank one": _rank_one,
    "half the rows pruned": _half_zero_rows,
    "constant": lambda r, c: torch.full((r, c), 0.5),
    "identity-like (all eigenvalues equal)": lambda r, c: torch.eye(r, c),
    "one nonzero weight": lambda r, c: torch.nn.functional.pad(torch.ones(1, 1), (0, c - 1, 0, r - 1)),
}
SHAPES = [(8, 8), (64, 320), (300, 600)]  # tiny, elongated, large enough for float32 in "auto"


def _assert_complete(metrics: LayerMetrics) -> None:
    """Every metric is a number (NaN allowed for an undefined fit), never an exception or None."""
    for name in METRIC_NAMES:
        value = getattr(metrics, name)
        assert isinstance(value, int | float), (name, value)
    for rule in XMIN_RULES:
        alpha = getattr(metrics, f"alpha_{rule}")
        assert math.isnan(alpha) or alpha >= 0, (rule, alpha)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("case", CASES)
def test_degenerate_matrix_fits(case, shape, precision):
    evals, metrics = measure_matrix(_ref(CASES[case](*shape)), precision, "cpu")
    assert len(evals) == min(shape) and np.all(evals >= 0) and np.all(np.isfinite(evals))
    _assert_complete(metrics)


def test_the_float32_zero_eigenvalue_that_crashed_the_histogram():
    # Positive in float64, zero in float32: log10 used to give -inf and torch.histc refused.
    evals = np.sort(np.r_[np.full(10, 1e-50), np.linspace(1.0, 2.0, 50)])
    assert esd_peak(evals) >= 1.0  # the float32-zero eigenvalues are not in the histogram
    fits = fit_all(evals)
    assert all(np.isfinite(fits[rule].alpha) for rule in XMIN_RULES)


@pytest.mark.parametrize(
    "evals",
    [np.zeros(5), np.ones(5), np.array([0.0, 0.0, 3.0]), np.array([1e-320, 1e-300, 1.0]), np.array([2.0])],
    ids=["zeros", "equal", "rank one", "denormal float64", "single"],
)
def test_fit_all_on_degenerate_spectra(evals):
    fits = fit_all(evals)
    for rule in XMIN_RULES:
        assert math.isnan(fits[rule].alpha) or fits[rule].alpha >= 0


def test_large_weights_overflowing_a_float32_gram_are_redone_in_float64():
    w = torch.randn(300, 600, generator=torch.Generator().manual_seed(3)) * 1e18  # Gram ~1e38+ in float32
    evals, metrics = measure_matrix(_ref(w), "float32", "cpu")
    assert np.all(np.isfinite(evals)) and evals[-1] > 1e38
    _assert_complete(metrics)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_name_the_matrix(bad):
    w = torch.randn(16, 32)
    w[3, 5] = bad
    with pytest.raises(UserError, match=r"model\.layers\.7\.mlp\.up_proj holds NaN or infinite weights"):
        measure_matrix(_ref(w, "model.layers.7.mlp.up_proj"), "auto", "cpu")


def test_non_finite_weights_in_a_model_fail_through_the_worker_pool():
    from tests.conftest import tiny_llama

    model = tiny_llama(layers=2)  # 15 matrices: the forked pool path (>= 8 matrices)
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"model\.layers\.1\.self_attn\.k_proj holds NaN"):
        analyze(model, "tiny", use_cache=False)


# --- pruned real matrices of the default model, every pruner, 50 / 70 / 90% --------------

# One prune per pruner covers the three sparsities: each in its own block. Block 10 holds
# the matrices the allocation drives to the ceiling.
SPARSITY_OF_BLOCK = {0: 0.5, 5: 0.7, 10: 0.9}


@pytest.fixture(scope="module")
def calib_windows(real_model):
    return calibration_windows(token_ids("python-docs", real_model.tokenizer), 2, 64, seed=0)


def _first_blocks(model: nn.Module, count: int) -> nn.Module:
    """A copy of the model keeping its first `count` real blocks (the later ones are not pruned)."""
    layers = model.model.layers
    model.model.layers = nn.ModuleList(layers[:count])  # deepcopy only what the test prunes
    try:
        short = copy.deepcopy(model)
    finally:
        model.model.layers = layers
    short.config.num_hidden_layers = count
    return short


@pytest.mark.slow
@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_pruned_real_matrices_fit(real_model, calib_windows, pruner):
    model = _first_blocks(real_model.model, max(SPARSITY_OF_BLOCK) + 1)
    refs = prunable_matrices(model)
    ratios = {ref.name: SPARSITY_OF_BLOCK.get(ref.block, 0.0) for ref in refs}
    prune_model(model, ratios, pruner, None, calib_windows)
    for ref in (r for r in refs if r.block in SPARSITY_OF_BLOCK):
        zeros = float((ref.weight() == 0).float().mean())
        assert zeros >= ratios[ref.name] - 0.01, (ref.name, zeros)
        for precision in ("auto", "float32"):
            evals, metrics = measure_matrix(ref, precision, "cpu")
            assert np.all(np.isfinite(evals)), ref.name
            _assert_complete(metrics)


@pytest.mark.slow
def test_analysis_of_a_model_pruned_to_90_percent_never_fails(real_model):
    model = copy.deepcopy(real_model.model)
    prune_model(model, {ref.name: 0.9 for ref in prunable_matrices(model)}, "magnitude")
    with torch.no_grad():  # and one matrix pruned whole
        model.model.layers[5].mlp.down_proj.weight.zero_()
    result = analyze(model, "pruned", use_cache=False)
    assert len(result.prunable) == 210
    for layer in result.layers:
        _assert_complete(layer)
    whole = result.layer("model.layers.5.mlp.down_proj")
    assert whole.spectral_norm == 0.0 and whole.rank == 0.0
