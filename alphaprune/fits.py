"""Power-law fits of the tail of an eigenvalue spectrum (method.md section 3).

For a candidate xmin = lambda_i (eigenvalues ascending, tail lambda_i..lambda_{N-1}, n = N - i):

    alpha_i = 1 + n / sum_{j>=i} ln(lambda_j / lambda_i)                    (Hill / MLE)
    D_i     = max_{k<n} | 1 - (lambda_{i+k} / lambda_i)^(1 - alpha_i) - k / n |   (KS)

`ks_scan` computes (alpha_i, D_i) for every candidate at once with numpy (suffix sums for
alpha, a blocked (candidates x tail eigenvalues) matrix for D), no Python loop over candidates.
The xmin rules are then choices over that scan:

- `mid`: xmin = lambda_{floor(N/2)}, one fit.
- `ks`: every eigenvalue but the largest is a candidate; smallest D wins.
- `peak`: candidates in a window around the ESD's peak, exactly as the AlphaPruning code
  (its lower bound compares eigenvalues with log10(0.95 peak): a quirk kept on purpose).
- `peak_fixed`: the same window with the lower bound 0.95 peak, as the window was meant.

As in the reference code, a candidate whose alpha <= 1 gets D = 1, and a candidate left
out of the window counts as alpha = 0, D = 1 (so an empty window returns alpha 0).

`fit_rule32` is the same fit in the FARMS code's own float32 arithmetic, one candidate at a
time as its loop (alphaprune/farms.py's default spectrum "code"): bit for bit its alphas.

    from alphaprune.fits import fit_all
    fits = fit_all(np.sort(eigenvalues))     # {"peak": Fit(...), "mid": ..., ...}
    fit = fit_rule(np.sort(eigenvalues), "peak")   # one rule only: fit_all(...)["peak"], less work
    fit = fit_rule32(np.sort(eigenvalues), "peak") # as the FARMS code computes it, in float32
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

XMIN_RULES = ("peak", "peak_fixed", "mid", "ks")
PEAK_BINS = 100
_PEAK_LOW, _PEAK_HIGH = 0.95, 1.5  # the peak window's bounds, as multiples of the ESD peak
_BLOCK_ROWS = 64  # candidates per block of the KS matrix


@dataclass(frozen=True)
class Fit:
    """One power-law fit: exponent, where the tail starts, goodness, tail size."""

    alpha: float
    xmin: float
    D: float
    n_tail: int


@dataclass(frozen=True)
class Scan:
    """alpha and D for every candidate xmin = evals[i], i = 0..N-2."""

    xmins: np.ndarray  # (N-1,)
    alphas: np.ndarray  # (N-1,)
    Ds: np.ndarray  # (N-1,)


NO_FIT = Fit(alpha=float("nan"), xmin=float("nan"), D=float("nan"), n_tail=0)  # fewer than 2 eigenvalues: no tail


def _known(rule: str) -> None:
    """ValueError unless `rule` is one of XMIN_RULES (fit_rule and fit_rule32 take the same rules)."""
    if rule not in XMIN_RULES:
        raise ValueError(f"rule must be one of {XMIN_RULES}, got {rule!r}")


def _alphas(evals: np.ndarray) -> np.ndarray:
    """Hill estimate for every candidate via suffix sums of log-eigenvalues: O(N)."""
    n_total = len(evals)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(evals)
        suffix = np.cumsum(logs[::-1])[::-1]  # suffix[i] = sum_{j>=i} ln lambda_j
        n = (n_total - np.arange(n_total - 1)).astype(np.float64)
        return 1.0 + n / (suffix[:-1] - n * logs[:-1])


def _ks_distances(evals: np.ndarray, alphas: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """D_i for the ascending candidate indices `rows`, a block of rows at a time.

    A block of rows starting at candidate i0 only needs the columns j >= i0 (the tails), so
    the work is about half the full (candidates x eigenvalues) matrix, and a block of
    _BLOCK_ROWS x N float64 stays in the L2 cache: ~8x faster than one big matrix.
    """
    n_total = len(evals)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        logs = np.log(evals)
        out = np.empty(len(rows))
        for start in range(0, len(rows), _BLOCK_ROWS):
            i = rows[start : start + _BLOCK_ROWS]  # (c,)
            first = int(i[0])
            k = np.arange(first, n_total)[None, :] - i[:, None]  # (c, N - first): position in the tail
            n = (n_total - i).astype(np.float64)[:, None]  # (c, 1)
            gap = (1.0 - alphas[i])[:, None] * (logs[None, first:] - logs[i][:, None])
            np.exp(gap, out=gap)  # (lambda_j / lambda_i)^(1 - alpha_i)
            gap = np.abs((1.0 - gap) - k / n)  # |model CDF - empirical CDF|
            gap[k < 0] = 0.0  # eigenvalues below xmin are not in the tail
            out[start : start + _BLOCK_ROWS] = gap.max(axis=1)
    return out


def ks_scan(evals: np.ndarray) -> Scan:
    """alpha and KS distance for every candidate xmin (all eigenvalues but the largest)."""
    evals = np.asarray(evals, dtype=np.float64)
    if len(evals) < 2:
        empty = np.empty(0)
        return Scan(empty, empty, empty)
    alphas = _alphas(evals)
    valid = np.isfinite(alphas) & (alphas > 1.0) & (evals[:-1] > 0)
    Ds = np.ones(len(alphas))
    rows = np.flatnonzero(valid)
    if len(rows):
        Ds[rows] = _ks_distances(evals, alphas, rows)
    alphas = np.where(np.isfinite(alphas), alphas, 0.0)
    return Scan(xmins=evals[:-1], alphas=alphas, Ds=Ds)


def esd_peak(evals: np.ndarray, bins: int = PEAK_BINS) -> float:
    """Left edge of the fullest bin of a histogram of log10(lambda), as the reference does.

    Computed with torch.histc in float32 like the AlphaPruning code, so that a value on a
    bin edge lands in the same bin as there. Zeros are dropped after the cast to float32:
    an eigenvalue of a pruned matrix can be positive in float64 (1e-50) and 0 in float32,
    and its log would be -inf. 0 when no eigenvalue is positive (and within float32's range).
    """
    peak = _peak32(torch.as_tensor(np.asarray(evals), dtype=torch.float32), bins)
    return 0.0 if peak is None else float(peak)


def _peak32(ev32: torch.Tensor, bins: int = PEAK_BINS) -> torch.Tensor | None:
    """esd_peak as a 0-dim tensor: float32 as the code's `xmin2` (float64 when the spectrum has one
    distinct value, as esd_peak always gave), None when no eigenvalue is positive."""
    logs = torch.log10(ev32[(ev32 > 0) & torch.isfinite(ev32)])  # above 3.4e38 float32 overflows
    if logs.numel() == 0:
        return None
    lo, hi = float(logs.min()), float(logs.max())
    if not hi > lo:  # one distinct value (e.g. a rank-1 matrix): no histogram; float64, as esd_peak always gave
        return torch.tensor(10**lo, dtype=torch.float64)
    counts = torch.histc(logs, bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)  # (bins + 1,) float32
    return 10 ** edges[int(torch.argmax(counts))]


def peak_window(evals: np.ndarray, corrected: bool) -> tuple[float, float]:
    """(lower, upper) bounds on xmin around the ESD peak; see the module docstring."""
    peak = esd_peak(evals)
    if peak <= 0:
        return (np.inf, -np.inf)
    lower = _PEAK_LOW * peak if corrected else float(np.log10(_PEAK_LOW * peak))
    return (lower, _PEAK_HIGH * peak)


def _pick(scan: Scan, allowed: np.ndarray, n_total: int) -> Fit:
    """Smallest D among allowed candidates; the first one on ties (as torch.argmin)."""
    alphas = np.where(allowed, scan.alphas, 0.0)
    Ds = np.where(allowed, scan.Ds, 1.0)
    i = int(np.argmin(Ds))
    return Fit(alpha=float(alphas[i]), xmin=float(scan.xmins[i]), D=float(Ds[i]), n_tail=n_total - i)


def fit_at(evals: np.ndarray, i: int) -> Fit:
    """The fit with xmin = evals[i] (no check on alpha, as the reference's xmin_mid)."""
    evals = np.asarray(evals, dtype=np.float64)
    n = len(evals) - i
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(evals[i:])
        alpha = 1.0 + n / (logs.sum() - n * logs[0])
        cdf = 1.0 - np.exp((1.0 - alpha) * (logs - logs[0]))
        D = float(np.max(np.abs(cdf - np.arange(n) / n)))
    if not np.isfinite(alpha):  # a tail of equal values (or zeros) has no power law
        alpha, D = float("nan"), float("nan")
    return Fit(alpha=float(alpha), xmin=float(evals[i]), D=D, n_tail=n)


def fit_all(evals: np.ndarray, scan: Scan | None = None) -> dict[str, Fit]:
    """All four xmin rules on one ascending spectrum. Pass `scan` to reuse a ks_scan."""
    evals = np.asarray(evals, dtype=np.float64)
    n_total = len(evals)
    if n_total < 2:
        return {rule: NO_FIT for rule in XMIN_RULES}
    scan = scan if scan is not None else ks_scan(evals)
    everything = np.ones(n_total - 1, dtype=bool)
    fits = {"ks": _pick(scan, everything, n_total), "mid": fit_at(evals, n_total // 2)}
    for rule, corrected in (("peak", False), ("peak_fixed", True)):
        lower, upper = peak_window(evals, corrected)
        fits[rule] = _pick(scan, (scan.xmins >= lower) & (scan.xmins <= upper), n_total)
    return fits


def fit_rule(evals: np.ndarray, rule: str) -> Fit:
    """`fit_all(evals)[rule]`, computing the KS distance only of the candidates `rule` allows.

    For long pooled spectra (alphaprune/farms.py: 10^4-10^5 eigenvalues) the full scan's
    (candidates x eigenvalues) work is what costs; the peak rules need a part of it. Same
    numbers as fit_all, bit for bit (each D_i is computed by the same expression).
    """
    _known(rule)
    evals = np.asarray(evals, dtype=np.float64)
    n_total = len(evals)
    if n_total < 2:
        return NO_FIT
    if rule == "mid":
        return fit_at(evals, n_total // 2)
    xmins = evals[:-1]
    if rule == "ks":
        allowed = np.ones(n_total - 1, dtype=bool)
    else:
        lower, upper = peak_window(evals, corrected=rule == "peak_fixed")
        allowed = (xmins >= lower) & (xmins <= upper)
    alphas = _alphas(evals)
    Ds = np.ones(n_total - 1)
    rows = np.flatnonzero(allowed & np.isfinite(alphas) & (alphas > 1.0) & (xmins > 0))
    if len(rows):
        Ds[rows] = _ks_distances(evals, alphas, rows)
    alphas = np.where(np.isfinite(alphas), alphas, 0.0)
    return _pick(Scan(xmins=xmins, alphas=alphas, Ds=Ds), allowed, n_total)


def fit_rule32(evals: np.ndarray, rule: str) -> Fit:
    """fit_rule in the authors' FARMS code's own arithmetic (its esd_utils_farms analysis_esd):
    float32 throughout, one candidate at a time, each tail's alpha and D by the same torch calls
    in the same order as its loop, so that the same float32 spectrum gives its alpha bit for bit.

    Why not fit_rule: float64 against float32 moves every alpha by rounding, and where two
    candidates' D nearly tie, the pick: on SmolLM2 enough to move FARMS with SparseGPT at 70% by
    12% at ceiling 1 (docs/fidelity.md). Cost: a Python loop over the
    candidates the rule allows, ~2.5x fit_rule's time on SmolLM2's pooled spectra (alphaprune/
    farms.py's _COST). Needs an ascending spectrum; run it on one torch thread (a float32 sum of
    more than ~32k values is split over the threads, and its rounding follows them). Where the
    code has no answer (zeros in the spectrum: its log10 histogram has no range; a tail of equal
    values: an infinite alpha), the conventions of fit_rule apply.
    """
    _known(rule)
    ev = torch.as_tensor(np.asarray(evals), dtype=torch.float32).contiguous()  # (N,) ascending
    n_total = len(ev)
    if n_total < 2:
        return NO_FIT
    logs = torch.log(ev)  # (N,)
    if rule == "mid":
        i = n_total // 2
        alpha = _alpha32(logs, i)
        if not torch.isfinite(alpha):  # a tail of equal values (or zeros) has no power law
            return Fit(alpha=float("nan"), xmin=float(ev[i]), D=float("nan"), n_tail=n_total - i)
        return Fit(alpha=float(alpha), xmin=float(ev[i]), D=float(_ks32(ev, i, alpha)), n_tail=n_total - i)
    lower, upper = _window32(ev, rule)
    alphas = torch.zeros(n_total - 1, dtype=torch.float32)  # (N - 1,): 0 out of the window
    Ds = torch.ones(n_total - 1, dtype=torch.float32)  # (N - 1,): 1 out of the window or alpha <= 1
    for i in range(n_total - 1):
        if ev[i] < lower:
            continue
        if ev[i] > upper:
            break
        alpha = _alpha32(logs, i)
        if torch.isfinite(alpha):
            alphas[i] = alpha
            if alpha > 1:
                Ds[i] = _ks32(ev, i, alpha)
    i = int(torch.argmin(Ds))  # the first of equal D, as the code's torch.argmin
    return Fit(alpha=float(alphas[i]), xmin=float(ev[i]), D=float(Ds[i]), n_tail=n_total - i)


def _alpha32(logs: torch.Tensor, i: int) -> torch.Tensor:
    """The Hill alpha of the tail from i, as the code computes it: float32 0-dim."""
    n = float(len(logs) - i)
    return 1 + n / (torch.sum(logs[i:]) - n * logs[i])


def _ks32(ev: torch.Tensor, i: int, alpha: torch.Tensor) -> torch.Tensor:
    """The KS distance of the tail from i under `alpha`, as the code computes it: float32 0-dim."""
    n = float(len(ev) - i)
    return torch.max(torch.abs(1 - (ev[i:] / ev[i]) ** (-alpha + 1) - torch.arange(n, dtype=torch.float32) / n))


def _window32(ev: torch.Tensor, rule: str) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The xmin bounds of `rule` in float32, as the code computes them (its lower bound
    log10(0.95 peak) for "peak"); "ks": every candidate; no positive eigenvalue: none."""
    if rule == "ks":
        return -np.inf, np.inf
    peak = _peak32(ev)
    if peak is None:
        return np.inf, -np.inf
    lower = _PEAK_LOW * peak if rule == "peak_fixed" else torch.log10(_PEAK_LOW * peak)
    return lower, _PEAK_HIGH * peak
