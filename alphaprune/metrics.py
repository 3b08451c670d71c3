"""Per-matrix spectral metrics besides alpha, and the Marchenko-Pastur (MP) random bulk.

All take the ascending eigenvalues of W^T W (lambda = sigma^2) of one W of shape (N, M):

- spectral_norm = lambda_max; norm = sum(lambda) = ||W||_F^2; log_norm = log10(norm)
- stable_rank = norm / lambda_max; alpha_hat = alpha x log10(lambda_max) (WeightWatcher's
  alpha_weighted); entropy = -sum p ln p / ln(rank), p = lambda / sum(lambda) (1 = flat)
- MP: for W with i.i.d. entries of variance s2 and N >= M, the eigenvalues of W^T W fill
  N s2 (1 -+ sqrt(M/N))^2. `mp_fit` estimates s2 from the bulk (eigenvalues below the
  edge), iterating until the edge is stable, and counts the spikes beyond it.

    from alphaprune.metrics import spectral_metrics, mp_fit, mp_density
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_RANK_TOL = 1e-10  # relative to lambda_max: below this an eigenvalue counts as zero


@dataclass(frozen=True)
class MPFit:
    """Marchenko-Pastur bulk of a random matrix of the same shape and entry variance."""

    sigma2: float  # entry variance of the matching random matrix
    edge_low: float  # bulk support [edge_low, edge_high] in eigenvalues of W^T W
    edge_high: float
    num_spikes: int  # eigenvalues beyond edge_high + 3 Tracy-Widom scales
    softrank: float  # edge_high / lambda_max (WeightWatcher's mp_softrank)


def spectral_metrics(evals: np.ndarray, alpha: float) -> dict[str, float]:
    """Scale and shape metrics of one spectrum; `alpha` feeds alpha_hat."""
    lam_max = float(evals[-1]) if len(evals) else 0.0
    norm = float(np.sum(evals))
    positive = evals[evals > _RANK_TOL * max(lam_max, 1e-300)]
    p = positive / max(positive.sum(), 1e-300)
    rank = len(positive)
    entropy = float(-(p * np.log(p)).sum() / np.log(rank)) if rank > 1 else 0.0
    log_max = np.log10(lam_max) if lam_max > 0 else float("nan")
    return {
        "spectral_norm": lam_max,
        "log_spectral_norm": float(log_max),
        "norm": norm,
        "log_norm": float(np.log10(norm)) if norm > 0 else float("nan"),
        "stable_rank": norm / lam_max if lam_max > 0 else 0.0,
        "alpha_hat": float(alpha * log_max),
        "entropy": entropy,
        "rank": float(rank),
    }


def mp_edges(n_rows: int, n_cols: int, sigma2: float) -> tuple[float, float]:
    """Support of the MP law for the eigenvalues of W^T W, W (n_rows x n_cols)."""
    big, small = max(n_rows, n_cols), min(n_rows, n_cols)
    root = np.sqrt(small / big)
    return (big * sigma2 * (1 - root) ** 2, big * sigma2 * (1 + root) ** 2)


def tracy_widom_scale(n_rows: int, n_cols: int, sigma2: float) -> float:
    """Fluctuation scale of the largest eigenvalue of a random W^T W around the MP edge."""
    a, b = np.sqrt(n_rows), np.sqrt(n_cols)
    return float(sigma2 * (a + b) * (1 / a + 1 / b) ** (1 / 3))


def _spike_threshold(shape: tuple[int, int], sigma2: float) -> float:
    """Edge plus 3 Tracy-Widom scales: a bulk eigenvalue lies beyond it with p < 1e-3."""
    return mp_edges(*shape, sigma2)[1] + 3 * tracy_widom_scale(*shape, sigma2)


def mp_fit(evals: np.ndarray, shape: tuple[int, int], iterations: int = 50) -> MPFit:
    """Fit the random bulk: s2 = mean(bulk) / max(N, M), bulk = eigenvalues below the
    edge (plus its Tracy-Widom fluctuation), iterated until the bulk stops changing."""
    big = max(shape)
    bulk = evals
    sigma2 = float(np.mean(evals)) / big if len(evals) else 0.0
    for _ in range(iterations):
        new_bulk = evals[evals <= _spike_threshold(shape, sigma2)]
        if len(new_bulk) == 0 or len(new_bulk) == len(bulk):
            break
        bulk = new_bulk
        sigma2 = float(np.mean(bulk)) / big
    low, high = mp_edges(*shape, sigma2)
    lam_max = float(evals[-1]) if len(evals) else 0.0
    return MPFit(
        sigma2=sigma2,
        edge_low=low,
        edge_high=high,
        num_spikes=int(np.sum(evals > _spike_threshold(shape, sigma2))),
        softrank=high / lam_max if lam_max > 0 else 0.0,
    )


def mp_density(x: np.ndarray, shape: tuple[int, int], sigma2: float) -> np.ndarray:
    """MP probability density of the eigenvalues of W^T W at x (zero outside the bulk)."""
    big, small = max(shape), min(shape)
    ratio = small / big
    low, high = mp_edges(*shape, sigma2)
    scale = big * sigma2  # eigenvalues of W^T W = scale x eigenvalues of the unit MP law
    x = np.asarray(x, dtype=np.float64)
    inside = (x > low) & (x < high)
    density = np.zeros_like(x)
    xi = x[inside]
    density[inside] = np.sqrt((high - xi) * (xi - low)) / (2 * np.pi * ratio * scale * xi)
    return density
