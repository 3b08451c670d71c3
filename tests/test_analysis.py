"""The whole analysis (alphaprune/analysis.py) and its disk cache, on tiny and real models.

.venv/bin/python -m pytest tests/test_analysis.py -q
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from alphaprune import analysis as analysis_mod
from alphaprune.analysis import METRIC_NAMES, analyze, measure_matrix
from alphaprune.arch import prunable_matrices
from tests.conftest import tiny_llama


def test_tiny_model_analysis_shape_and_progress():
    model = tiny_llama(layers=2)
    seen = []
    result = analyze(model, "tiny", use_cache=False, progress=lambda f, m: seen.append(f))
    assert len(result.prunable) == 14  # 7 matrices x 2 blocks
    assert len(result.layers) == 15  # + the (tied) embedding, listed once
    assert [layer.block for layer in result.prunable] == [0] * 7 + [1] * 7
    assert seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    for layer in result.layers:
        ev = result.eigenvalues[layer.name]
        assert len(ev) == min(layer.shape)
        assert layer.spectral_norm == pytest.approx(ev[-1])
        assert all(isinstance(getattr(layer, m), (int, float)) for m in METRIC_NAMES)


def test_pool_and_sequential_paths_agree(monkeypatch):
    model = tiny_llama(layers=2)
    pooled = analyze(model, use_cache=False)
    monkeypatch.setattr(analysis_mod, "_workers", lambda device, n: 1)
    sequential = analyze(model, use_cache=False)
    for a, b in zip(pooled.layers, sequential.layers, strict=True):
        assert a == b


def test_cache_hit_and_invalidation():
    model = tiny_llama(layers=1, seed=5)
    first = analyze(model, "tiny")
    second = analyze(model, "tiny")
    assert not first.from_cache and second.from_cache
    assert second.layers == first.layers
    for name, ev in first.eigenvalues.items():
        np.testing.assert_array_equal(second.eigenvalues[name], ev)
    with torch.no_grad():  # any change to a weight must miss the cache
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1.0
    third = analyze(model, "tiny")
    assert not third.from_cache and third.fingerprint != first.fingerprint


def test_no_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAPRUNE_CACHE", str(tmp_path))
    result = analyze(tiny_llama(layers=1, seed=7), use_cache=False)
    assert result.fingerprint is None and not any(tmp_path.iterdir())


def test_measure_matrix_matches_direct_svd():
    ref = prunable_matrices(tiny_llama(layers=1))[5]  # up_proj
    evals, metrics = measure_matrix(ref)
    direct = np.sort(torch.linalg.svdvals(ref.weight().double()).numpy() ** 2)
    np.testing.assert_allclose(evals, direct, rtol=1e-9, atol=1e-12)
    assert metrics.kind == "up_proj" and metrics.shape == tuple(ref.weight().shape)


@pytest.mark.slow
def test_real_model_full_analysis(real_model, real_analysis):
    """SmolLM2-135M: 30 blocks x 7 matrices, sane alphas, then a warm (cached) rerun."""
    result = real_analysis
    assert len(result.prunable) == 210
    assert {layer.kind for layer in result.prunable} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    }  # fmt: skip
    alphas = np.array([layer.alpha_peak for layer in result.prunable])
    assert np.all(np.isfinite(alphas)) and np.median(alphas) > 1.5
    # Known values from WeightWatcher 0.7.7 analyze() (its default full KS scan) on this model.
    ww_alpha = {"model.layers.0.self_attn.q_proj": 1.773741, "model.layers.0.mlp.gate_proj": 4.946012}
    for name, alpha in ww_alpha.items():
        assert result.layer(name).alpha_ks == pytest.approx(alpha, rel=1e-4)
    analyze(real_model.model, "smollm2-135m")  # fills the cache
    with pytest.MonkeyPatch.context() as mp:  # a warm run computes no spectrum at all
        mp.setattr(analysis_mod, "_measure_all", lambda *a, **k: pytest.fail("cache miss"))
        warm = analyze(real_model.model, "smollm2-135m")
    assert warm.from_cache
    assert warm.layers == result.layers


_PEAK_SCRIPT = """
import sys, torch
from alphaprune.analysis import measure_weight
from alphaprune.arch import MatrixRef


def status(key):  # kB of /proc/self/status's line `key`
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))


torch.manual_seed(0)
w = torch.randn(16384, 1024).to(torch.bfloat16)  # 16M weights, 32 MiB as stored (a read from the files)
ref = MatrixRef("m.up_proj", 0, "up_proj", torch.nn.Linear(1024, 16384, device="meta"), False, True)
measure_weight(ref, w[:64], "float32", "cpu")  # warm up the allocator and LAPACK
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM) to the current RSS
before = status("VmRSS")
measure_weight(ref, w, sys.argv[1], "cpu")
print((status("VmHWM") - before) * 1024 / (w.numel() * 2))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux: /proc/self/clear_refs")
@pytest.mark.parametrize("precision, bound", [("float32", 1.6), ("float64", 3.5)])
def test_measuring_a_bf16_matrix_never_converts_it_whole(precision, bound):
    """The finiteness check and the Gram run a block of rows at a time. Whole, a float32 copy
    of this bf16 matrix and a bool mask took 2.5x its bytes, a float64 copy 6.0x (measured
    before the change); by blocks 1.18x and 2.85x. glibc's mmap threshold is pinned so that
    freed blocks leave the resident set and the peak is the same run after run."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, precision], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[1], check=True)  # fmt: skip
    ratio = float(out.stdout.split()[-1])
    assert ratio < bound, f"measuring took {ratio:.2f}x the matrix's stored bytes"


def test_huge_matrices_are_spread_over_the_pool_order():
    sizes = [200 * 2**20, 1000, 2000, 150 * 2**20, 3000, 4000]
    refs = [SimpleNamespace(params=p, prunable=p < 2**26) for p in sizes]
    order = analysis_mod._pool_order(refs)
    assert sorted(order) == list(range(len(refs)))
    assert order[0] == 0 and order.index(3) >= 3  # the second huge one after the first gap of small ones
    assert [refs[i].params for i in order if i not in (0, 3)] == [4000, 3000, 2000, 1000]  # largest first
