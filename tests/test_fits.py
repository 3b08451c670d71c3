"""Power-law fits (alphaprune/fits.py) against a plain loop, the powerlaw package and
synthetic Pareto samples of known exponent.

    .venv/bin/python -m pytest tests/test_fits.py -q
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from alphaprune.fits import esd_peak, fit_all, ks_scan, peak_window


def loop_fit(evals: np.ndarray, lower: float = -np.inf, upper: float = np.inf):
    """Reference-style loop over xmin candidates (method.md section 3), written plainly."""
    n_total = len(evals)
    alphas, Ds = np.zeros(n_total - 1), np.ones(n_total - 1)
    for i, xmin in enumerate(evals[:-1]):
        if xmin < lower:
            continue
        if xmin > upper:
            break
        tail = evals[i:]
        n = len(tail)
        alpha = 1 + n / np.sum(np.log(tail / xmin))
        alphas[i] = alpha
        if alpha > 1:
            Ds[i] = np.max(np.abs(1 - (tail / xmin) ** (1 - alpha) - np.arange(n) / n))
    best = int(np.argmin(Ds))
    return alphas[best], evals[best], Ds[best]


def spectrum(seed: int, n: int = 300) -> np.ndarray:
    """Eigenvalues of a random matrix with a heavy-tailed part: a realistic ESD."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((2 * n, n)) + rng.standard_t(3, (2 * n, n)) * 0.3
    return np.sort(np.linalg.eigvalsh(w.T @ w))


@pytest.mark.parametrize("seed", range(5))
def test_scan_matches_loop_full(seed):
    evals = spectrum(seed)
    fits = fit_all(evals)
    alpha, xmin, D = loop_fit(evals)
    assert fits["ks"].alpha == pytest.approx(alpha, rel=1e-9)
    assert fits["ks"].xmin == xmin
    assert fits["ks"].D == pytest.approx(D, rel=1e-9)
    assert fits["ks"].n_tail == int(np.sum(evals >= xmin))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rule,corrected", [("peak", False), ("peak_fixed", True)])
def test_peak_matches_loop_with_window(seed, rule, corrected):
    evals = spectrum(seed) * 10.0 ** (seed - 2)  # scales where the log10 quirk bites differently
    lower, upper = peak_window(evals, corrected)
    alpha, xmin, D = loop_fit(evals, lower, upper)
    fit = fit_all(evals)[rule]
    assert fit.alpha == pytest.approx(alpha, rel=1e-9)
    assert fit.D == pytest.approx(D, rel=1e-9)


def test_peak_quirk_differs_from_corrected_window():
    """The reference's lower bound is log10(0.95 peak), far below 0.95 peak for peaks > 1."""
    evals = spectrum(1) * 100
    peak = esd_peak(evals)
    assert peak > 10
    assert peak_window(evals, corrected=False)[0] == pytest.approx(np.log10(0.95 * peak))
    assert peak_window(evals, corrected=True)[0] == pytest.approx(0.95 * peak)


def test_peak_is_left_edge_of_fullest_log_bin():
    evals = np.sort(np.concatenate([np.full(50, 10.0), np.logspace(-2, 3, 100)]))
    peak = esd_peak(evals)
    edges = np.linspace(-2, 3, 101)
    k = np.searchsorted(edges, 1.0, side="right") - 1  # the bin holding log10(10) = 1
    assert peak == pytest.approx(10 ** edges[k], rel=1e-5)


def test_mid_uses_median_index():
    evals = spectrum(3)
    fit = fit_all(evals)["mid"]
    i = len(evals) // 2
    assert fit.xmin == evals[i]
    assert fit.alpha == pytest.approx(1 + (len(evals) - i) / np.sum(np.log(evals[i:] / evals[i])))


def test_scan_is_vectorised_over_all_candidates():
    evals = spectrum(0)
    scan = ks_scan(evals)
    assert scan.alphas.shape == scan.Ds.shape == (len(evals) - 1,)
    assert np.all((scan.Ds >= 0) & (scan.Ds <= 1))


@pytest.mark.parametrize("alpha_true", [2.0, 3.0, 4.5, 6.0])
def test_recovers_pareto_exponent_and_agrees_with_powerlaw(alpha_true):
    """Synthetic Pareto samples with density exponent alpha_true, xmin = 1."""
    powerlaw = pytest.importorskip("powerlaw")
    rng = np.random.default_rng(int(alpha_true * 10))
    x = np.sort(rng.pareto(alpha_true - 1, 4000) + 1.0)
    ours = fit_all(x)["ks"]
    assert ours.alpha == pytest.approx(alpha_true, rel=0.08)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # powerlaw 2.x clamps alpha to [0, 3] unless the range is opened.
        theirs = powerlaw.Fit(x, parameter_ranges={"alpha": [1, None]}, verbose=False)
        fixed = powerlaw.Fit(x, xmin=ours.xmin, parameter_ranges={"alpha": [1, None]}, verbose=False)
    assert fixed.power_law.alpha == pytest.approx(ours.alpha, rel=1e-6)
    assert theirs.power_law.alpha == pytest.approx(ours.alpha, rel=0.02)


def test_degenerate_spectra():
    assert np.isnan(fit_all(np.array([1.0]))["ks"].alpha)
    zeros = np.zeros(10)
    fits = fit_all(zeros)  # a pruned-away matrix: no valid candidate, reference gives alpha 0
    assert fits["ks"].alpha == 0.0 and fits["ks"].D == 1.0
    with_zeros = np.sort(np.concatenate([np.zeros(20), spectrum(2)]))
    assert np.isfinite(fit_all(with_zeros)["ks"].alpha)


@pytest.mark.slow
def test_real_matrices_match_loop(real_analysis):
    """On the real default model, the vectorised scan equals the plain loop."""
    for layer in real_analysis.prunable[:14]:
        evals = real_analysis.eigenvalues[layer.name]
        alpha, _, _ = loop_fit(evals)
        assert layer.alpha_ks == pytest.approx(alpha, rel=1e-9)
        lower, upper = peak_window(evals, corrected=False)
        assert layer.alpha_peak == pytest.approx(loop_fit(evals, lower, upper)[0], rel=1e-9)
