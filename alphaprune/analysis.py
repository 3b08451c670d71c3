"""Analyse a model: every weight matrix's spectrum, its power-law fits and metrics.

    from alphaprune.analysis import analyze, analyze_checkpoint
    result = analyze(model, model_name="smollm2-135m")   # Analysis
    result.layers[5].alpha_peak, result.eigenvalues["model.layers.0.mlp.up_proj"]

    from alphaprune.checkpoint import checkpoint_location, open_checkpoint
    ckpt = open_checkpoint(checkpoint_location("smollm2-135m"))   # or a folder / .gguf
    result = analyze_checkpoint(ckpt, "smollm2-135m")    # the same Analysis, from the files

Per matrix (alphaprune/arch.py says which): eigenvalues (alphaprune/spectra.py), the four
xmin rules (alphaprune/fits.py) and the other metrics (alphaprune/metrics.py).

Speed: on a CPU the matrices are spread over one worker process per core (forked, so the
weights are shared, never copied or pickled), each with one BLAS thread: the LAPACK
tridiagonal reduction does not scale over threads, but two matrices at once do. A huge
display-only matrix (a 7B model's embedding or LM head) is measured one at a time. Results
are cached on disk by a fingerprint of the weights (alphaprune/cache.py).

From files (`analyze_checkpoint`): the model is never instantiated; each matrix is read from
the checkpoint (alphaprune/checkpoint.py), cast to float32, measured by the same
`measure_weight` and freed, each forked worker reading its own. The fingerprint is that of
the float32 weights, so both paths give the same results and share cache entries.

FARMS (opt-in, alphaprune/farms.py): `analyze(model, farms=FarmsSettings())` adds each
matrix's `alpha_farms` (the fit of its pooled sub-matrix spectrum; NaN when not asked for),
a metric like any other (METRIC_NAMES). Its cache entry's key adds the settings' tag; the
entry of the same analysis without FARMS is kept (and reused: then only FARMS is computed).

    result = analyze(model, farms=FarmsSettings())        # result.layers[5].alpha_farms
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from alphaprune import cache
from alphaprune.arch import MatrixRef, all_matrices
from alphaprune.checkpoint import Checkpoint
from alphaprune.errors import UserError
from alphaprune.farms import FarmsSettings, farms_fit
from alphaprune.fits import XMIN_RULES, fit_all
from alphaprune.layer_metrics import METRIC_NAMES, LayerMetrics  # noqa: F401 (re-exported)
from alphaprune.metrics import mp_fit, spectral_metrics
from alphaprune.spectra import PRECISIONS, all_finite, eigenvalues, is_huge, resolve_device

ANALYSIS_VERSION = 1  # bump when a metric's definition changes: old cache entries are ignored
Progress = Callable[[float, str], None]  # (fraction done in [0, 1], message)


@dataclass(frozen=True, eq=False)
class Analysis:
    """The analysis of one model: per-matrix metrics, in module order, and eigenvalues."""

    model: str
    fingerprint: str | None
    precision: str
    device: str
    seconds_analysis: float  # spectra + fits (+ fingerprint and cache I/O when cached)
    from_cache: bool
    layers: tuple[LayerMetrics, ...]
    eigenvalues: dict[str, np.ndarray] = field(repr=False)
    farms: FarmsSettings | None = None  # the FARMS settings of the alpha_farms column, None: not computed

    @property
    def prunable(self) -> tuple[LayerMetrics, ...]:
        return tuple(layer for layer in self.layers if layer.prunable)

    def layer(self, name: str) -> LayerMetrics:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        """The JSON document of `alphaprune analyze --out FILE.json` ("farms" only when computed)."""
        out = {
            "model": self.model,
            "fingerprint": self.fingerprint,
            "precision": self.precision,
            "device": self.device,
            "seconds_analysis": self.seconds_analysis,
            "from_cache": self.from_cache,
        }
        if self.farms is not None:
            out["farms"] = dataclasses.asdict(self.farms)
        out["layers"] = [layer.to_dict() for layer in self.layers]
        return out


def measure_matrix(
    ref: MatrixRef, precision: str = "auto", device: str = "auto", farms: FarmsSettings | None = None
) -> tuple[np.ndarray, LayerMetrics]:
    """Eigenvalues and all metrics of one matrix of a model in memory (see measure_weight)."""
    return measure_weight(ref, ref.weight(), precision, device, farms)


def measure_weight(
    ref: MatrixRef,
    weight: torch.Tensor,
    precision: str = "auto",
    device: str = "auto",
    farms: FarmsSettings | None = None,
) -> tuple[np.ndarray, LayerMetrics]:
    """Eigenvalues and all metrics of `weight` (out, in), the matrix `ref` names; UserError
    naming it if its weights are not finite. Both paths (model in memory, files) use it.
    With `farms`, alpha_farms too (else it stays NaN)."""
    if not all_finite(weight):
        raise UserError(
            f"{ref.name} holds NaN or infinite weights, so it has no spectrum: the checkpoint is damaged "
            "or a step before overflowed; reload the model from its files"
        )
    try:
        evals = eigenvalues(weight, precision, device, display_only=not ref.prunable)
    except ValueError as exc:  # weights beyond float64's square root: the Gram overflows
        raise UserError(f"{ref.name} has no finite spectrum ({exc}); reload the model from its files") from None
    fits = fit_all(evals)
    shape = ref.shape
    fields: dict = {"name": ref.name, "block": ref.block, "kind": ref.kind, "shape": shape}
    fields.update(params=ref.params, prunable=ref.prunable)
    for rule in XMIN_RULES:
        fit = fits[rule]
        fields.update(
            {f"alpha_{rule}": fit.alpha, f"xmin_{rule}": fit.xmin, f"D_{rule}": fit.D, f"n_tail_{rule}": fit.n_tail}
        )
    fields.update(spectral_metrics(evals, fits["peak"].alpha))
    mp = mp_fit(evals, shape)
    fields.update(
        mp_sigma2=mp.sigma2,
        mp_edge_low=mp.edge_low,
        mp_edge_high=mp.edge_high,
        mp_num_spikes=mp.num_spikes,
        mp_softrank=mp.softrank,
    )
    if farms is not None:
        fields["alpha_farms"] = farms_fit(weight, farms, device, precision).alpha
    return evals, LayerMetrics(**fields)


Reader = Callable[[MatrixRef], torch.Tensor]  # ref -> its weight as (out, in)
Task = Callable[[MatrixRef], object]  # ref -> what is measured on it (read inside)

# The forked workers read the matrices from this module global (shared memory, no pickling):
# the refs, the task (which reads a model's weights, or a checkpoint's files) and the lock
# that lets one huge matrix at a time be measured.
_POOL_JOB: tuple[list[MatrixRef], Task, object] | None = None


def _pool_init() -> None:
    import signal

    import torch
    from threadpoolctl import threadpool_limits

    # A forked worker inherits the parent's signal handlers: under `streamlit run` its
    # SIGTERM handler only prints "Stopping...", so the pool's terminate() at the end
    # would wait forever for an idle worker. Workers die on SIGTERM / SIGINT as usual.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    torch.set_num_threads(1)
    threadpool_limits(1)  # one BLAS thread per worker process


def _pool_task(index: int) -> tuple[int, object]:
    refs, task, huge_lock = _POOL_JOB
    ref = refs[index]
    with huge_lock if _one_at_a_time(ref) else contextlib.nullcontext():
        return index, task(ref)  # the weight task read is freed on return


def _one_at_a_time(ref: MatrixRef) -> bool:
    """A huge display-only matrix (a 7B model's embedding or LM head, ~0.45 GiB of work each):
    the two of them measured at once would double the analysis' peak for no prunable layer."""
    return not ref.prunable and is_huge(ref.params)


def _pool_order(refs: list[MatrixRef]) -> list[int]:
    """Largest first, so the pool does not end waiting on one big matrix; the huge display-only
    ones spread over the run, so that the lock in _pool_task rarely waits."""
    order = sorted(range(len(refs)), key=lambda i: -refs[i].params)
    huge = [i for i in order if _one_at_a_time(refs[i])]
    rest = [i for i in order if not _one_at_a_time(refs[i])]
    gap = max(1, len(rest) // max(1, len(huge)))
    for k, i in enumerate(huge):
        rest.insert(k * (gap + 1), i)
    return rest


def _measure_task(read: Reader, precision: str, device: str, farms: FarmsSettings | None) -> Task:
    """ref -> (eigenvalues, LayerMetrics): the whole measurement of one matrix."""
    return lambda ref: measure_weight(ref, read(ref), precision, device, farms)


def _farms_task(read: Reader, precision: str, device: str, farms: FarmsSettings) -> Task:
    """ref -> alpha_farms only (the other metrics came from the cache)."""
    return lambda ref: farms_fit(read(ref), farms, device, precision).alpha


def _workers(device: str, n_jobs: int) -> int:
    if device != "cpu" or n_jobs < 8 or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return analysis_workers()


def analysis_workers() -> int:
    """Processes a CPU analysis of a model runs at once (each holds one matrix's work)."""
    return max(1, min(os.cpu_count() or 1, 8))


def _measure_all(refs: list[MatrixRef], task: Task, device: str, progress: Progress | None, label: str = "spectra"):
    """task(ref) for every ref, in order; progress after each matrix ("{label} 3/210")."""
    global _POOL_JOB
    results: list = [None] * len(refs)
    workers = _workers(device, len(refs))

    def report(done: int) -> None:
        if progress is not None:
            progress(done / len(refs), f"{label} {done}/{len(refs)}")

    if workers == 1:
        for i, ref in enumerate(refs):
            results[i] = task(ref)
            report(i + 1)
        return results
    context = multiprocessing.get_context("fork")
    _POOL_JOB = (refs, task, context.Lock())
    try:
        with context.Pool(workers, initializer=_pool_init) as pool:
            for done, (i, result) in enumerate(pool.imap_unordered(_pool_task, _pool_order(refs)), start=1):
                results[i] = result
                report(done)
    finally:
        _POOL_JOB = None
    return results


def _cache_key(fingerprint: str, precision: str, farms: FarmsSettings | None = None) -> str:
    """The entry of an analysis; with FARMS its settings' tag is added (without: today's key)."""
    key = f"{fingerprint[:32]}-{precision}-v{ANALYSIS_VERSION}"
    return key if farms is None else f"{key}-{farms.tag()}"


def analyze(
    model: nn.Module,
    model_name: str = "model",
    precision: str = "auto",
    device: str = "auto",
    use_cache: bool = True,
    progress: Progress | None = None,
    farms: FarmsSettings | None = None,
) -> Analysis:
    """Spectra and metrics of every prunable matrix plus embeddings / LM head. `model`: an
    nn.Module in memory, or a checkpoint.Checkpoint, then read from its files (_analyze_files).
    `farms`: also each matrix's alpha_farms with these settings (alphaprune/farms.py)."""
    if farms is not None:
        farms.validate()
    if isinstance(model, Checkpoint):
        return _analyze_files(model, model_name, precision, device, use_cache, progress, farms)
    refs = all_matrices(model)
    fingerprint = (lambda: cache.weights_fingerprint(refs)) if use_cache else None
    return _analyze(refs, MatrixRef.weight, fingerprint, model_name, precision, device, progress, farms)


def _checkpoint_weight(ckpt: Checkpoint, ref: MatrixRef) -> torch.Tensor:
    """`ref`'s weight (out, in) read from the files in its stored dtype: spectra.py converts it
    to float32 / float64 exactly as a float32 load would hold it (bf16 / fp16 -> float32 is
    exact), a block of rows at a time for the largest matrices."""
    w = ckpt.tensor(ref.tensor_name)
    return w.t() if ref.transposed else w


def _stored_weight(ckpt: Checkpoint, ref: MatrixRef) -> torch.Tensor:
    return ckpt.tensor(ref.tensor_name)  # the module's layout, the stored dtype


def analyze_checkpoint(ckpt: Checkpoint, *args, **kwargs) -> Analysis:
    """`analyze` of the model a checkpoint holds, read from its files (same arguments)."""
    return analyze(ckpt, *args, **kwargs)


def _analyze_files(
    ckpt: Checkpoint, model_name: str, precision: str, device: str, use_cache: bool, progress, farms=None
):
    """`analyze` of the model a checkpoint holds, read from its files one matrix at a time.

    The matrices come from the config's meta-device skeleton (alphaprune/arch.py); each is
    read, cast to float32, measured and freed before the next (in each worker of the pool),
    so results, fingerprint and cache entry equal `analyze` of the float32 model in memory.
    Peak memory: about one matrix, its Gram matrix and its eigenvalues per worker.
    """
    refs = all_matrices(ckpt.skeleton())
    for ref in refs:
        ckpt.shape(ref.tensor_name)  # UserError now, before any work, when a matrix is missing
    fingerprint = None
    if use_cache:

        def fingerprint() -> str:  # a first pass over the files: each matrix read, hashed as float32, freed
            def step(done: int) -> None:
                if progress is not None:
                    progress(0.0, f"fingerprint {done}/{len(refs)}")

            read = functools.partial(_stored_weight, ckpt)
            return cache.weights_fingerprint(refs, read, as_dtype=torch.float32, threads=2, progress=step)

    read = functools.partial(_checkpoint_weight, ckpt)
    return _analyze(refs, read, fingerprint, model_name, precision, device, progress, farms)


def _analyze(
    refs: list[MatrixRef],
    read: Reader,
    fingerprint_fn: Callable[[], str] | None,
    model_name: str,
    precision: str,
    device: str,
    progress: Progress | None,
    farms: FarmsSettings | None = None,
) -> Analysis:
    """The cached analysis of `refs`, each weight from `read`; no cache without `fingerprint_fn`.

    With `farms`: its own entry if there is one; else the entry without FARMS plus a FARMS
    pass only; else everything, saved under both keys (alpha_farms NaN in the plain one).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    dev = str(resolve_device(device))
    start = time.perf_counter()
    fingerprint = fingerprint_fn() if fingerprint_fn is not None else None

    def done(layers, evals, from_cache: bool) -> Analysis:
        seconds = time.perf_counter() - start
        return Analysis(model_name, fingerprint, precision, dev, seconds, from_cache, layers, evals, farms)

    if fingerprint is not None:
        entry = _load_cached(_cache_key(fingerprint, precision, farms), refs)
        if entry is not None:
            if progress is not None:
                progress(1.0, "spectra loaded from cache")
            return done(*entry, from_cache=True)
    plain = (
        _load_cached(_cache_key(fingerprint, precision), refs)
        if farms is not None and fingerprint is not None
        else None
    )
    if plain is not None:  # the whole-matrix part is cached: FARMS only
        alphas = _measure_all(refs, _farms_task(read, precision, dev, farms), dev, progress, "FARMS")
        layers = tuple(dataclasses.replace(m, alpha_farms=a) for m, a in zip(plain[0], alphas, strict=True))
        evals = plain[1]
    else:
        results = _measure_all(refs, _measure_task(read, precision, dev, farms), dev, progress)
        layers = tuple(metrics for _, metrics in results)
        evals = {ref.name: ev for ref, (ev, _) in zip(refs, results, strict=True)}
        if fingerprint is not None and farms is not None:
            unfarmed = [dataclasses.replace(m, alpha_farms=float("nan")).to_dict() for m in layers]
            cache.save_entry(_cache_key(fingerprint, precision), unfarmed, evals)
    if fingerprint is not None:
        cache.save_entry(_cache_key(fingerprint, precision, farms), [m.to_dict() for m in layers], evals)
    return done(layers, evals, from_cache=False)


def _load_cached(key: str, refs: list[MatrixRef]) -> tuple[tuple[LayerMetrics, ...], dict[str, np.ndarray]] | None:
    """(layers, eigenvalues) of a cache entry of exactly these matrices, or None."""
    entry = cache.load_entry(key)
    if entry is None or [r["name"] for r in entry[0]] != [ref.name for ref in refs]:
        return None
    return tuple(LayerMetrics.from_dict(r) for r in entry[0]), entry[1]
