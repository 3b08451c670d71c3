"""Benchmark of alphaprune's spectra analysis against WeightWatcher and a reference-style loop.

One run on one model measures, side by side:

1. model load (`alphaprune.models.load_model`): seconds, and whether the dequantized GGUF
   weights came from the cache;
2. ours, cold: `analyze(model, use_cache=False)`, every spectrum and fit computed;
3. ours, warm: `analyze(model, use_cache=True)` once to fill the cache (timed on its own as
   "first run incl. cache write"), then a second call, which must read the cache;
4. WeightWatcher: `WeightWatcher(model=model).analyze()` with its defaults;
5. a reference-style loop: for every prunable matrix, float32 `torch.linalg.svdvals`
   squared and sorted, then one Python iteration per xmin candidate (Hill alpha and KS
   distance D, as the AlphaPruning code computes them), keeping the candidate of least D.

It prints a table of times, the ratios WW / ours-cold, loop / ours-cold and
ours-cold / ours-warm, and how well our `alpha_ks` agrees with WeightWatcher's `alpha`
and with the loop's alpha on the prunable matrices (share within 1%, max relative gap).

Run from the repository root (WeightWatcher comes from requirements-bench.txt; `make bench`
installs it):

    .venv/bin/python bench/spectra.py [--model smollm2-135m] [--repeats 1] [--fresh-cache]

--repeats N runs each timed step N times and reports the fastest. By default the analysis
cache is the usual cache folder (so the warm run's first call may already be a cache hit);
--fresh-cache points it at a temporary folder for this run. The model load always uses
the usual cache folder. The device is whatever `analyze(device="auto")` picks.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install needed

from alphaprune.analysis import Analysis, analyze  # noqa: E402
from alphaprune.arch import display_matrices, prunable_matrices  # noqa: E402
from alphaprune.models import DEFAULT_MODEL, load_model  # noqa: E402


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(fastest wall time in seconds, result of the last call) over `repeats` calls."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def run_ours(model: torch.nn.Module, name: str, repeats: int) -> dict[str, tuple[float, Analysis]]:
    """Cold (no cache), first cached call (may write the cache) and warm (reads it)."""
    cold = best_of(lambda: analyze(model, name, use_cache=False), repeats)
    first = best_of(lambda: analyze(model, name, use_cache=True), 1)
    warm = best_of(lambda: analyze(model, name, use_cache=True), repeats)
    if not warm[1].from_cache:
        raise RuntimeError("the warm analysis did not come from the cache")
    return {"cold": cold, "first": first, "warm": warm}


def run_weightwatcher(model: torch.nn.Module, repeats: int):
    """(seconds, DataFrame) of WeightWatcher's default analysis, its logging silenced."""
    ww_logger = logging.getLogger("weightwatcher")
    ww_logger.setLevel(logging.ERROR)  # before the import: it logs there about CUDA/SVD choices
    import weightwatcher

    ww_logger.setLevel(logging.ERROR)  # the import sets WARNING
    return best_of(lambda: weightwatcher.WeightWatcher(model=model).analyze(), repeats)


def reference_alpha(weight: torch.Tensor) -> float:
    """alpha at the xmin of least KS distance, scanned one candidate per Python iteration."""
    evals = torch.sort(torch.linalg.svdvals(weight.float()) ** 2).values
    count = len(evals)
    alphas, Ds = torch.zeros(count - 1), torch.ones(count - 1)
    for i in range(count - 1):  # every eigenvalue but the largest is a candidate xmin
        xmin, tail = evals[i], evals[i:]
        n = count - i
        alpha = 1 + n / (torch.sum(torch.log(tail)) - n * torch.log(xmin))
        alphas[i] = alpha
        if alpha <= 1:
            continue  # D stays 1, as in the reference
        cdf_gap = 1 - (tail / xmin) ** (1 - alpha) - torch.arange(n, device=tail.device) / n
        Ds[i] = torch.max(torch.abs(cdf_gap))
    return float(alphas[torch.argmin(Ds)])


def run_reference(model: torch.nn.Module, repeats: int) -> tuple[float, dict[str, float]]:
    """(seconds, module path -> alpha) of the reference-style loop over all prunable matrices."""
    refs = prunable_matrices(model)
    with torch.no_grad():
        return best_of(lambda: {ref.name: reference_alpha(ref.weight()) for ref in refs}, repeats)


def ww_alphas(frame, model: torch.nn.Module) -> tuple[dict[str, float], str]:
    """WeightWatcher's alpha per prunable matrix and how rows were matched to our layers.

    By `longname` when it is the module path; else in order, skipping the rows shaped like
    an embedding / LM head (WeightWatcher's N, M are the larger and the smaller dimension).
    """
    names = [ref.name for ref in prunable_matrices(model)]
    by_name = dict(zip(frame["longname"], frame["alpha"], strict=True))
    if all(name in by_name for name in names):
        return {name: float(by_name[name]) for name in names}, "by longname"
    skip = {tuple(sorted(ref.shape, reverse=True)) for ref in display_matrices(model)}
    rows = [(int(n), int(m), float(a)) for n, m, a in zip(frame["N"], frame["M"], frame["alpha"], strict=True)]
    alphas = [a for n, m, a in rows if (n, m) not in skip]
    if len(alphas) != len(names):
        raise RuntimeError(f"cannot match {len(rows)} WeightWatcher rows to {len(names)} prunable matrices")
    return dict(zip(names, alphas, strict=True)), "by order, embedding-shaped rows skipped"


def agreement(ours: dict[str, float], theirs: dict[str, float]) -> tuple[float, float, int]:
    """(share within 1%, max relative difference, count) of `theirs` against `ours`."""
    a = np.array([ours[name] for name in theirs])
    b = np.array(list(theirs.values()))
    rel = np.abs(b - a) / np.abs(a)
    return float(np.mean(rel <= 0.01)), float(np.max(rel)), len(rel)


def print_table(rows: list[tuple[str, float, str]]) -> None:
    print(f"\n{'step':<40} {'seconds':>9}  notes")
    print("-" * 100)
    for step, seconds, note in rows:
        print(f"{step:<40} {seconds:>9.3f}  {note}")


def print_agreement(label: str, stats: tuple[float, float, int]) -> None:
    share, worst, count = stats
    print(f"  {label:<50} {share:6.1%} of {count} within 1%, max relative difference {worst:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model spec (see alphaprune.models)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per timed step; the fastest is reported")
    parser.add_argument("--fresh-cache", action="store_true", help="analysis cache in a temporary folder")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    loaded = load_model(args.model)
    model = loaded.model
    tmp_cache = tempfile.mkdtemp(prefix="alphaprune-bench-") if args.fresh_cache else None
    if tmp_cache:  # read by alphaprune.paths.cache_dir() at each call: the model load above is unaffected
        os.environ["ALPHAPRUNE_CACHE"] = tmp_cache
    try:
        ours = run_ours(model, args.model, args.repeats)
        ww_seconds, frame = run_weightwatcher(model, args.repeats)
        ref_seconds, ref = run_reference(model, args.repeats)
    finally:
        if tmp_cache:
            shutil.rmtree(tmp_cache, ignore_errors=True)

    cold_s, cold = ours["cold"]
    first_s, first = ours["first"]
    warm_s, warm = ours["warm"]
    n_prunable = len(cold.prunable)
    print(f"\nmodel {args.model}: {loaded.num_params / 1e6:.1f} M parameters, {loaded.dtype} on {loaded.device}")
    print(f"{len(cold.layers)} matrices analysed by us, {n_prunable} of them prunable")
    print(f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; fastest of {args.repeats} run(s) per step")
    print(f"analysis cache: {tmp_cache or 'the usual cache folder'}")
    print_table(
        [
            ("model load", loaded.seconds_load, f"dequantized weights from cache: {loaded.from_cache}"),
            ("ours, cold (use_cache=False)", cold_s, f"precision {cold.precision}, device {cold.device}"),
            ("ours, first run incl. cache write", first_s, f"from_cache={first.from_cache}"),
            ("ours, warm (second cached run)", warm_s, f"from_cache={warm.from_cache}"),
            ("WeightWatcher analyze() defaults", ww_seconds, f"{len(frame)} rows"),
            ("reference-style loop (float32 svdvals)", ref_seconds, f"{len(ref)} prunable matrices"),
        ]
    )
    print("\nratios")
    print(f"  WeightWatcher / ours cold      {ww_seconds / cold_s:8.1f}x")
    print(f"  reference loop / ours cold     {ref_seconds / cold_s:8.1f}x")
    print(f"  ours cold / ours warm          {cold_s / warm_s:8.1f}x")

    alpha_ks = {layer.name: layer.alpha_ks for layer in cold.prunable}
    ww, how = ww_alphas(frame, model)
    names = list(frame["longname"])
    print(f"\nagreement of our alpha_ks on the {n_prunable} prunable matrices")
    print(f"  WeightWatcher: {len(frame)} rows, first {names[0]!r}, last {names[-1]!r}; matched {how}")
    print_agreement("WeightWatcher alpha vs our alpha_ks", agreement(alpha_ks, ww))
    print_agreement("reference-loop alpha (full scan) vs our alpha_ks", agreement(alpha_ks, ref))


if __name__ == "__main__":
    main()
