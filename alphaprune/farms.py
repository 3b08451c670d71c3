"""FARMS: alpha of a matrix from the pooled spectra of fixed-shape sub-matrices (method.md section 8).

An ESD's shape depends on the matrix's aspect ratio (Marchenko-Pastur: a square matrix's
bulk reaches down to 0, a 1536 x 576 one's stays away from it), so whole-matrix alphas of
square and rectangular matrices are biased against each other. FARMS (Fixed-Aspect-Ratio
Matrix Subsampling; Hu et al., ICML 2025, arXiv 2506.06280; code HUST-AI-HYZ/FARMS) cuts
every weight matrix W (out, in) into overlapping square windows of one size, pools the
eigenvalues of all windows' Gram matrices into one spectrum and fits alpha on that with
the usual Hill estimator and xmin rule (alphaprune/fits.py; the reference uses "peak").

Window placement (the released code's `fixed_sampling`, Q = 1 as in all its LLM runs):
the window is s x s with s = min(window, out, in); along a side of length L at most k =
max_per_side windows start at i * step, i = 0, 1, ..., with

    step  = max(1, (L - s) // (k - 1))        (k = 1: one window at 0)
    count = min(k, (L - s) // step + 1)

so the grid is count_rows x count_cols windows, row-major; up to k - 2 rows / columns at
the far end may be left out (floor division), as in the reference. A matrix no larger than
the window on both sides is one window: the matrix itself, and its FARMS alpha is its
whole-matrix alpha.

A window's spectrum (`spectrum`), no normalisation in any:
- "code" (default): the released code's arithmetic throughout. A window's spectrum is its
  squared singular values in float32, as the code computes them
  (`torch.square(torch.linalg.svdvals(sub))` on the float32 weight), and the fit on the pooled
  spectrum is the code's own float32 loop over the candidates (fits.fit_rule32), both here on
  one CPU thread; the authors ran it on a GPU, whose float32 SVD rounds otherwise again. The
  smallest of a square window's are float32 rounding, and they set the low end of the
  log-spaced histogram whose peak bounds the xmin search, so a precise spectrum moves that
  peak: on SmolLM2, 11 of 210 alphas changed (block 0's v_proj 3.61 -> 2.81) and FARMS (eps
  0.3, Wanda, 70%) went from the code's 720.90 to 507.78 (bench/reference_check.py;
  docs/fidelity.md). The float32 fit gives the code's 210 alphas bit for bit on one thread;
  a float64 fit of the same spectrum does not (docs/fidelity.md: SparseGPT at 70% moved by 12%).
- "svd32": the same float32 spectrum, fit in float64 (fits.fit_rule), as before the "code"
  choice existed: runs recorded with it keep their meaning.
- "exact": spectra.eigenvalues of the window's Gram matrix (float64 for a square window on
  CPU under precision "auto"), as our whole-matrix spectra, fit in float64.
One window is held at a time.

Defaults for SmolLM2-135M (hidden 576, MLP 1536, k/v 192): window 256 (about the paper's
window / hidden ratio, 2000 / 4096) and 6 per side (the fewest 256-windows that cover the
1536 side, the reference's own sanity rule ops >= max(out, in) / window): 36 windows and
9216 pooled eigenvalues per 576-wide matrix, 6 windows of 192 for k/v. Cost on this
project's 2-core VM: ~43 s of one core for the 210 matrices, about half of it the peak
rule's KS scan of the pooled spectra (which grows as max_per_side^4); 4 per side: ~15 s.
The reference's LLaMA-7B/13B setting is `FarmsSettings.paper()` (2000 x 2000, up to 15 x 15).

    from alphaprune.farms import FarmsSettings, farms_fit, estimate_cost, window_grid
    settings = FarmsSettings()                            # window 256, 6 per side, rule "peak", spectrum "code"
    window_grid((1536, 576), settings)[:2]                # [(0, 256, 0, 256), (0, 256, 64, 320)]
    fit = farms_fit(weight, settings)                     # fits.Fit(alpha, xmin, D, n_tail)
    estimate_cost([(576, 576), (1536, 576)], settings)    # Cost(windows=72, ..., seconds=...)
"""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from alphaprune.errors import UserError
from alphaprune.fits import XMIN_RULES, Fit, fit_rule, fit_rule32
from alphaprune.spectra import eigenvalues, resolve_device

_FLOAT32_SVD = ("code", "svd32")  # the spectra of the code's float32 squared singular values
_MIN_WINDOW = 8  # a smaller window's ESD has too few eigenvalues to fit a tail in
_MAX_PER_SIDE = 32  # 32 x 32 windows of a matrix: already ~1000x the paper's work on a 7B model

# Cost model, measured on this project's 2-core x86 CPU VM (OpenBLAS, one thread, while other
# jobs ran: expect +-2x) over SmolLM2-135M's 210 matrices with the defaults: seconds of
# spectra.eigenvalues on an s x s float64 window ~ overhead + s^3 x per_s3 (23.5 s for 5760
# windows of 256 and 192), and of the peak-rule fit of N pooled eigenvalues ~ N^2 x per_n2
# (19.0 s for 210 spectra of 9216 / 1152). The same constants predict windows of 256 with 4
# and 8 per side within 5% (15.0 s and 105.6 s measured). Other machines differ.
_EIG_OVERHEAD_S = 2.6e-4
_EIG_S_PER_N3 = 2.36e-10
_FIT_S_PER_N2 = 1.5e-9
# Per spectrum choice: (window factor, fit factor) on the constants above. A float32 SVD of a window
# against the float64 Gram + eigvalsh ("exact"): 2.4-2.5x per window, measured side by side on 1536
# x 576 (36 windows of 256) and 192 x 576 (6 of 192). The code's float32 loop (fits.fit_rule32)
# against fit_rule over SmolLM2's 210 pooled spectra, side by side in one process: 45.7 s / 18.3 s,
# rule "peak"; "ks" loops over every candidate in Python, so its factor is likely larger (not measured).
_COST = {"code": (2.4, 2.5), "svd32": (2.4, 1.0), "exact": (1.0, 1.0)}
SPECTRA = tuple(_COST)  # a window's spectrum and the fit's arithmetic (module docstring)


@dataclass(frozen=True)
class FarmsSettings:
    """Square windows of `window` (clipped to the matrix), at most `max_per_side` along each side."""

    window: int = 256
    max_per_side: int = 6
    rule: str = "peak"  # the xmin rule of the fit on the pooled spectrum (fits.XMIN_RULES)
    spectrum: str = "code"  # the code's arithmetic ("code"), its spectrum with a float64 fit ("svd32"), or "exact"

    @classmethod
    def paper(cls) -> FarmsSettings:
        """The reference's setting for LLaMA-7B / 13B: 2000 x 2000 windows, up to 15 x 15."""
        return cls(window=2000, max_per_side=15)

    def validate(self) -> FarmsSettings:
        """Self, or UserError saying which setting to change."""
        if not _is_int(self.window) or self.window < _MIN_WINDOW:
            raise UserError(
                f"FARMS window must be a whole number >= {_MIN_WINDOW}, got {self.window!r}; "
                "use e.g. 256 for a model of hidden size ~500, 2000 for a 7B model"
            )
        if not _is_int(self.max_per_side) or not 1 <= self.max_per_side <= _MAX_PER_SIDE:
            raise UserError(
                f"FARMS windows per side must be a whole number in 1..{_MAX_PER_SIDE}, got {self.max_per_side!r}; "
                "use e.g. 6 (the paper uses 10-15 on 7B models)"
            )
        if self.spectrum not in SPECTRA:
            raise UserError(f"FARMS spectrum must be one of {', '.join(SPECTRA)}, got {self.spectrum!r}")
        if self.rule not in XMIN_RULES:
            raise UserError(f"FARMS xmin rule must be one of {', '.join(XMIN_RULES)}, got {self.rule!r}")
        return self

    def tag(self) -> str:
        """A short name of these settings for cache keys and file names: 'farms-w256-k6-peak-code'."""
        return f"farms-w{self.window}-k{self.max_per_side}-{self.rule}-{self.spectrum}"


@dataclass(frozen=True)
class Cost:
    """What FARMS costs over a list of matrices, before running it (see estimate_cost)."""

    windows: int  # sub-matrices whose spectra are computed
    eig_flops: float  # sum over windows of s^3 (the order of an s x s symmetric eigensolver's work)
    pooled: int  # eigenvalues in all pooled spectra together
    fit_ops: float  # sum over matrices of N^2 (N pooled eigenvalues): the KS scan's order; 0 for "mid"
    seconds: float  # estimate on one core, from the constants measured on this project's CPU


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _starts(length: int, size: int, per_side: int) -> list[int]:
    """Start offsets of the windows of `size` along a side of `length` (module docstring)."""
    span = length - size  # >= 0: size is clipped to the matrix
    if per_side == 1 or span == 0:
        return [0]
    step = max(1, span // (per_side - 1))
    return [i * step for i in range(min(per_side, span // step + 1))]


def window_size(shape: tuple[int, int], settings: FarmsSettings) -> int:
    """The side s of the square windows of a matrix of `shape`: the window, clipped to the matrix."""
    return min(settings.window, int(shape[0]), int(shape[1]))


def window_grid(shape: tuple[int, int], settings: FarmsSettings) -> list[tuple[int, int, int, int]]:
    """(row0, row1, col0, col1) of every window of a matrix of `shape` (out, in), row-major."""
    settings.validate()
    rows, cols = int(shape[0]), int(shape[1])
    if rows < 1 or cols < 1:
        raise ValueError(f"a matrix of shape {shape} has no windows")
    s = window_size(shape, settings)
    row_starts = _starts(rows, s, settings.max_per_side)
    col_starts = _starts(cols, s, settings.max_per_side)
    return [(r, r + s, c, c + s) for r in row_starts for c in col_starts]


def pooled_eigenvalues(
    weight: torch.Tensor, settings: FarmsSettings, device: str = "cpu", precision: str = "auto"
) -> np.ndarray:
    """Every window's spectrum (settings.spectrum), pooled: ascending, float64, s x windows of them.

    `weight` (out, in), any float dtype (a bf16 weight read from files is converted one
    window at a time). "code" and "svd32": float32 squared singular values on `device`
    (`precision` does not apply); "exact": each window through spectra.eigenvalues, so it gets the same precision
    and device handling as a whole matrix; only one window's Gram is alive at once.

    On CPU the windows run with one BLAS thread: threads gain little on matrices this small,
    and on a busy machine OpenBLAS's spinning threads made SmolLM2's first block 7-30x
    slower (about 1 s with one thread, 7-30 s with two, measured here under load).
    """
    if weight.dim() != 2:
        raise ValueError(f"FARMS needs a 2-D weight (out, in), got shape {tuple(weight.shape)}")
    dev = resolve_device(device)
    one_thread = _one_torch_thread(dev) if settings.spectrum in _FLOAT32_SVD else nullcontext()
    with threadpool_limits(1, user_api="blas") if dev.type == "cpu" else nullcontext(), one_thread:
        parts = [
            _window_spectrum(weight[r0:r1, c0:c1], settings.spectrum, precision, dev)  # (s,) each
            for r0, r1, c0, c1 in window_grid(tuple(weight.shape), settings)
        ]
    return np.sort(np.concatenate(parts))


def _window_spectrum(window: torch.Tensor, spectrum: str, precision: str, device: torch.device) -> np.ndarray:
    """One s x s window's spectrum, float64 numpy (s,)."""
    if spectrum == "exact":
        return eigenvalues(window, precision, str(device))
    singular = torch.linalg.svdvals(window.to(device=device, dtype=torch.float32))  # (s,) float32, descending
    return torch.square(singular).double().cpu().numpy()  # on one torch thread (pooled_eigenvalues)


_THREADS = {"lock": threading.Lock(), "depth": 0, "saved": 1}  # nested / concurrent one-thread sections


@contextmanager
def _one_torch_thread(device: torch.device):
    """A float32 CPU SVD's last bits depend on torch's thread count, and on SmolLM2 those bits moved
    12 of the code's 210 FARMS alphas between 1 and 2 threads (11.mlp.up_proj 5.60 -> 4.03: another
    ESD peak). The "code" fit's float32 sums (fits.fit_rule32) are split over the threads above ~32k
    values, so they round by the thread count too. One thread, as the analysis' worker processes
    run, gives the same alphas whatever the thread count (another CPU or LAPACK may still round
    otherwise).
    torch's thread count is the process's: overlapping sections (two app sessions) share one switch,
    and the first one's saved count comes back when the last ends."""
    if device.type != "cpu":
        yield
        return
    with _THREADS["lock"]:
        if _THREADS["depth"] == 0:
            _THREADS["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _THREADS["depth"] += 1
    try:
        yield
    finally:
        with _THREADS["lock"]:
            _THREADS["depth"] -= 1
            if _THREADS["depth"] == 0:
                torch.set_num_threads(_THREADS["saved"])


def farms_fit(weight: torch.Tensor, settings: FarmsSettings, device: str = "cpu", precision: str = "auto") -> Fit:
    """The power-law fit (settings.rule, "peak" by default) of `weight`'s pooled FARMS spectrum:
    in the code's float32 arithmetic under spectrum "code" (on one torch thread), else in float64."""
    if settings.spectrum != "code":
        return fit_rule(pooled_eigenvalues(weight, settings, device, precision), settings.rule)
    with _one_torch_thread(torch.device("cpu")):  # the fit runs on the CPU whatever the device
        return fit_rule32(pooled_eigenvalues(weight, settings, device, precision), settings.rule)


def estimate_cost(shapes: list[tuple[int, int]], settings: FarmsSettings) -> Cost:
    """Windows, eigensolver work, pooled sizes and estimated seconds (one core) of FARMS on `shapes`."""
    windows = pooled = 0
    eig_flops = fit_ops = seconds = 0.0
    for shape in shapes:
        count, s = len(window_grid(shape, settings)), window_size(shape, settings)
        n_pooled = count * s
        windows += count
        pooled += n_pooled
        eig_flops += count * float(s) ** 3
        if settings.rule != "mid":
            fit_ops += float(n_pooled) ** 2
        seconds += count * (_EIG_OVERHEAD_S + _EIG_S_PER_N3 * float(s) ** 3) * _COST[settings.spectrum][0]
    seconds += _FIT_S_PER_N2 * fit_ops * _COST[settings.spectrum][1]
    return Cost(windows=windows, eig_flops=eig_flops, pooled=pooled, fit_ops=fit_ops, seconds=seconds)
