"""Eigenvalues of weight matrices: the empirical spectral density (method.md section 2).

lambda_i = sigma_i(W)^2 are the eigenvalues of the smaller Gram matrix (W W^T or W^T W),
which `eigvalsh` gives far faster than an SVD. Precision:

- "float64": Gram and eigvalsh in float64 (reference grade).
- "float32": both in float32; about 2x faster on CPU, but the small eigenvalues of a
  float32 Gram matrix are off by up to eps32 x lambda_max. That moves the ESD's lowest
  log-bin edge and with it the histogram peak that alpha_peak starts from: on SmolLM2-135M
  35 of 210 alpha_peak values move by more than 1% (alpha_mid and alpha_ks do not).
- "auto" (default), per matrix: float32 only where float32 is accurate enough for the
  fits, float64 elsewhere. A matrix with aspect ratio >= 2 has a Marchenko-Pastur-like
  bulk bounded away from zero, so its lambda_min is resolved in float32; the computed
  spectrum must confirm it (lambda_min >= 1e-3 lambda_max) or the matrix is redone in
  float64. Square-ish matrices (q/o projections), whose spectra reach down to ~1e-9
  lambda_max, and small ones (min side <= 256, cheap anyway) always use float64.
  Display-only matrices (embeddings, LM head: the largest, never allocated) use float32
  unless their median eigenvalue is below 1e-3 lambda_max (then the plot would suffer).
  On SmolLM2-135M, "auto" vs "float64": alpha_mid and alpha_ks agree within 1e-4 on all
  210 matrices; alpha_peak within 1% on 209 (the peak bin of one spectrum sits on a
  count tie that a 1e-5 relative shift of lambda_min flips).

On CUDA every matrix uses float64 (GPUs make it cheap) through torch. On CPU the Gram
matrix and its eigenvalues come from scipy's BLAS/LAPACK (syrk + syevr); see
alphaprune/analysis.py for how matrices are spread over the cores.

    from alphaprune.spectra import eigenvalues
    ev = eigenvalues(weight)                       # np.ndarray, ascending, float64
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import blas, lapack

PRECISIONS = ("auto", "float32", "float64")
_F32_MIN_ASPECT = 2.0  # auto: float32 is tried only for matrices at least this elongated
_F32_MIN_SIDE = 256  # auto: at or below, float64 always (cheap)
_F32_LAMBDA_MIN_RATIO = 1e-3  # auto: float32 kept only if lambda_min >= this x lambda_max
_F32_DISPLAY_MEDIAN_RATIO = 1e-3  # auto, display-only: float32 kept if median >= this x max
_ROWS_CHUNKED = 4 * 2**20  # weights: above, the Gram is summed over blocks of rows (SmolLM2: its embedding)
_HUGE = 64 * 2**20  # weights: an embedding / LM head of a 7B model (131M); analysed one at a time
BLOCK_WEIGHTS = 4 * 2**20  # weights per block of rows: 16 MiB in float32, 32 MiB in float64


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _gram_eigvalsh_torch(weight: torch.Tensor, dtype: torch.dtype, device: torch.device) -> np.ndarray:
    w = weight.to(device=device, dtype=dtype)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w  # (min, min)
    return torch.linalg.eigvalsh(gram).double().cpu().numpy()


def _gram_eigvalsh_cpu(weight: torch.Tensor, use64: bool) -> np.ndarray:
    """CPU path through scipy's BLAS/LAPACK: syrk (half the flops of a matmul) + syevr.

    Staying in one BLAS avoids torch's OpenMP threads spinning against OpenBLAS's.
    """
    syevr = lapack.dsyevr if use64 else lapack.ssyevr
    w = weight.detach().cpu()
    gram = _gram_by_rows(w, use64) if w.numel() > _ROWS_CHUNKED else _gram_whole(w, use64)
    out = syevr(gram, compute_v=0, lower=0, overwrite_a=1)  # (w, z, m, isuppz, info)
    values, info = out[0], out[-1]
    if info != 0:  # a Gram that overflowed (inf entries); a finite symmetric matrix never fails
        raise np.linalg.LinAlgError(f"LAPACK syevr failed with info={info}")
    return np.asarray(values, dtype=np.float64)


def _as_fortran_t(w: torch.Tensor, use64: bool) -> np.ndarray:
    """W (n, m) as the Fortran-ordered (m, n) array a = W^T: a C-ordered (n, m) array is one,
    so no transposing copy, at most a contiguous dtype conversion (bf16 / fp16 have no numpy view)."""
    if w.dtype not in (torch.float32, torch.float64):
        w = w.float()
    return np.ascontiguousarray(w.numpy(), dtype=np.float64 if use64 else np.float32).T


def _gram_whole(w: torch.Tensor, use64: bool) -> np.ndarray:
    """The smaller Gram matrix in one syrk: trans=1: a^T a = W W^T; trans=0: a a^T = W^T W."""
    syrk = blas.dsyrk if use64 else blas.ssyrk
    a = _as_fortran_t(w, use64)  # (m, n)
    return syrk(1.0, a, trans=1 if a.shape[0] >= a.shape[1] else 0, lower=0)


def _gram_by_rows(w: torch.Tensor, use64: bool) -> np.ndarray:
    """The smaller Gram of a large matrix (above _ROWS_CHUNKED weights: every matrix of a 7B
    model) summed over blocks of ~4M weights of rows of the longer side, so that only one
    block is ever converted to float32 / float64 (a bf16 weight read from the files is never
    copied whole). Same result on either path (a float32 weight in memory is cut the same
    way); the Gram differs from one syrk only in the order of the sums."""
    syrk = blas.dsyrk if use64 else blas.ssyrk
    tall = w if w.shape[0] >= w.shape[1] else w.t()  # (long, short): Gram = tall^T tall
    gram = None
    step = max(1, BLOCK_WEIGHTS // tall.shape[1])
    for start in range(0, tall.shape[0], step):
        a = _as_fortran_t(tall[start : start + step].contiguous(), use64)  # (short, rows)
        gram = syrk(1.0, a, trans=0, lower=0) if gram is None else syrk(1.0, a, beta=1.0, c=gram, trans=0,
                                                                         lower=0, overwrite_c=1)  # fmt: skip
    return gram


def is_huge(numel: int) -> bool:
    """A matrix as large as a 7B model's embedding or LM head: its pages and blocks take ~0.45 GiB."""
    return numel > _HUGE


def all_finite(weight: torch.Tensor) -> bool:
    """No NaN / inf in `weight`, checked a block of rows at a time: a whole-tensor isfinite of a
    bf16 (32000, 4096) embedding holds a float32 copy and a bool mask at once (0.86 GiB)."""
    rows = weight if weight.dim() > 1 else weight.reshape(1, -1)
    step = max(1, BLOCK_WEIGHTS // max(1, rows[0].numel()))
    return all(bool(torch.isfinite(rows[i : i + step]).all()) for i in range(0, rows.shape[0], step))


def _eig(weight: torch.Tensor, use64: bool, dev: torch.device) -> np.ndarray:
    """Ascending eigenvalues, clipped at 0 (rounding makes the Gram's zeros slightly negative).

    A float32 Gram matrix overflows for weights above ~1e19: such a spectrum is redone in
    float64. Weights that are themselves NaN or inf have no spectrum: ValueError.
    """
    try:
        if dev.type == "cpu":
            ev = _gram_eigvalsh_cpu(weight, use64)
        else:
            ev = _gram_eigvalsh_torch(weight, torch.float64 if use64 else torch.float32, dev)
    except (np.linalg.LinAlgError, torch.linalg.LinAlgError):  # LAPACK gives up on a Gram holding inf
        ev = np.array([np.inf])
    if not np.isfinite(ev).all():
        if not use64:
            return _eig(weight, True, dev)
        raise ValueError("the eigenvalues are not finite: the weights hold NaN or inf, or overflow float64")
    return np.clip(ev, 0.0, None)


def _try_float32(shape: tuple[int, ...], display_only: bool, dev: torch.device) -> bool:
    """auto: is float32 worth trying for a matrix of this shape on this device?"""
    small, big = min(shape), max(shape)
    if dev.type == "cuda" or small <= _F32_MIN_SIDE:  # float64 is cheap there
        return False
    return display_only or big / small >= _F32_MIN_ASPECT


def eigenvalues(
    weight: torch.Tensor, precision: str = "auto", device: str = "auto", display_only: bool = False
) -> np.ndarray:
    """Ascending eigenvalues of W^T W (min(n, m) of them), float64, clipped at 0."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dev = resolve_device(device)
    if precision != "auto":
        return _eig(weight, precision == "float64", dev)
    if not _try_float32(tuple(weight.shape), display_only, dev):
        return _eig(weight, True, dev)
    ev = _eig(weight, False, dev)
    # The smallest eigenvalue the fits need resolved: lambda_min, or the median for display.
    needed = ev[len(ev) // 2] if display_only else ev[0]
    ratio = _F32_DISPLAY_MEDIAN_RATIO if display_only else _F32_LAMBDA_MIN_RATIO
    if not ev[-1] > 0 or needed < ratio * ev[-1]:  # not resolved in float32
        ev = _eig(weight, True, dev)
    return ev
