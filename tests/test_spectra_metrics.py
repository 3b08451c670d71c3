"""Eigenvalues (alphaprune/spectra.py) and the other per-matrix metrics (metrics.py).

.venv/bin/python -m pytest tests/test_spectra_metrics.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from alphaprune.metrics import mp_density, mp_edges, mp_fit, spectral_metrics
from alphaprune.spectra import eigenvalues


def svd_squared(w: torch.Tensor) -> np.ndarray:
    return np.sort(torch.linalg.svdvals(w.double()).numpy() ** 2)


@pytest.mark.parametrize("shape", [(40, 100), (100, 40), (64, 64)])
@pytest.mark.parametrize("precision", ["float64", "auto"])
def test_eigenvalues_are_squared_singular_values(shape, precision):
    torch.manual_seed(0)
    w = torch.randn(*shape)
    ev = eigenvalues(w, precision)
    assert ev.shape == (min(shape),)
    assert np.all(np.diff(ev) >= 0)
    np.testing.assert_allclose(ev, svd_squared(w), rtol=1e-9, atol=1e-9 * ev.max())


def test_float32_close_for_large_eigenvalues_and_bf16_input():
    torch.manual_seed(1)
    w = torch.randn(80, 120)
    ev32 = eigenvalues(w, "float32")
    ref = svd_squared(w)
    np.testing.assert_allclose(ev32, ref, rtol=0, atol=1e-5 * ref.max())
    ev_bf16 = eigenvalues(w.to(torch.bfloat16), "float64")
    np.testing.assert_allclose(ev_bf16, svd_squared(w.to(torch.bfloat16).float()), rtol=1e-9, atol=1e-9 * ref.max())


def planted(rows: int, cols: int, smallest: float, seed: int = 2) -> torch.Tensor:
    """A float32 matrix with singular values from 1 down to `smallest`."""
    torch.manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, dtype=torch.float64))
    s = torch.logspace(0, np.log10(smallest), k, dtype=torch.float64)
    return ((u * s) @ v.T).float()


def test_auto_redoes_unresolved_spectra_in_float64():
    w = planted(600, 300, smallest=1e-4)  # lambda_min / lambda_max = 1e-8: float32 cannot see it
    ev = eigenvalues(w, "auto")
    ref = svd_squared(w)
    assert ev[0] == pytest.approx(ref[0], rel=1e-3)
    assert abs(eigenvalues(w, "float32")[0] - ref[0]) > 0.5 * ref[0]  # the reason for the rule


def test_auto_keeps_float32_where_resolved():
    w = planted(600, 300, smallest=0.2)  # lambda_min / lambda_max = 0.04
    ev = eigenvalues(w, "auto")
    np.testing.assert_allclose(ev, svd_squared(w), rtol=1e-4)
    np.testing.assert_array_equal(ev, eigenvalues(w, "float32"))  # float32 was kept


def test_auto_uses_float64_for_square_matrices():
    w = planted(300, 300, smallest=0.2)
    np.testing.assert_array_equal(eigenvalues(w, "auto"), eigenvalues(w, "float64"))


def test_bad_precision():
    with pytest.raises(ValueError):
        eigenvalues(torch.randn(4, 4), "float16")


def test_spectral_metrics_against_direct_formulas():
    torch.manual_seed(3)
    w = torch.randn(60, 30, dtype=torch.float64)
    ev = eigenvalues(w, "float64")
    m = spectral_metrics(ev, alpha=3.0)
    spectral = torch.linalg.matrix_norm(w, ord=2).item() ** 2
    fro = torch.linalg.matrix_norm(w).item() ** 2
    assert m["spectral_norm"] == pytest.approx(spectral)
    assert m["norm"] == pytest.approx(fro)
    assert m["stable_rank"] == pytest.approx(fro / spectral)
    assert m["alpha_hat"] == pytest.approx(3.0 * np.log10(spectral))
    assert m["log_norm"] == pytest.approx(np.log10(fro))
    assert 0.8 < m["entropy"] <= 1.0  # a random matrix has a nearly flat spectrum
    assert m["rank"] == 30


def test_entropy_of_rank_one_is_zero():
    assert spectral_metrics(np.array([0.0, 0.0, 5.0]), alpha=2.0)["entropy"] == 0.0


@pytest.mark.parametrize("shape", [(400, 100), (100, 400), (200, 200)])
def test_mp_density_is_a_density(shape):
    low, high = mp_edges(*shape, 0.5)
    total, _ = quad(lambda x: mp_density(np.array([x]), shape, 0.5)[0], low, high, limit=200)
    assert total == pytest.approx(1.0, abs=2e-3)


def test_mp_fit_on_random_matrix_finds_the_bulk():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1000, 250)) * 0.1
    ev = np.sort(np.linalg.eigvalsh(w.T @ w))
    fit = mp_fit(ev, w.shape)
    assert fit.sigma2 == pytest.approx(0.01, rel=0.05)
    assert ev[-1] == pytest.approx(fit.edge_high, rel=0.05)
    assert fit.num_spikes <= 3


def test_mp_fit_counts_planted_spikes():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((1000, 250)) * 0.1
    u = rng.standard_normal((1000, 3))
    v = rng.standard_normal((3, 250))
    w = w + u @ v * 0.05  # three strong directions on top of the noise
    ev = np.sort(np.linalg.eigvalsh(w.T @ w))
    assert mp_fit(ev, w.shape).num_spikes == 3
