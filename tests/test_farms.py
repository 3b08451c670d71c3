"""FARMS (alphaprune/farms.py) against plain loops, and its alpha_farms column in the analysis.

The window rule written plainly below is the one of the released FARMS code (its
`fixed_sampling` with Q = 1); the pooled spectrum is checked against numpy's eigvalsh of
each window's Gram matrix, and fits.fit_rule against fits.fit_all.

    .venv/bin/python -m pytest tests/test_farms.py -q
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import pytest
import torch

from alphaprune import analysis as analysis_mod
from alphaprune import cache
from alphaprune.analysis import METRIC_NAMES, analyze
from alphaprune.arch import all_matrices
from alphaprune.errors import UserError
from alphaprune.farms import FarmsSettings, estimate_cost, farms_fit, pooled_eigenvalues, window_grid
from alphaprune.fits import XMIN_RULES, fit_all, fit_rule, fit_rule32
from alphaprune.spectra import eigenvalues
from tests.conftest import tiny_llama

SMALL = FarmsSettings(window=32, max_per_side=3)  # tiny models: hidden 64, MLP 160, k/v 32
EXACT = dataclasses.replace(SMALL, spectrum="exact")  # float64 Gram eigenvalues instead of the code's float32 SVD
SVD32 = dataclasses.replace(SMALL, spectrum="svd32")  # the code's float32 SVD, fit in float64


def plain_starts(length: int, size: int, per_side: int) -> list[int]:
    """Window starts along one side, as the reference code computes them (Q = 1)."""
    if per_side == 1:
        return [0]
    step = max(1, (length - size) // (per_side - 1))
    count = min(per_side, max(1, (length - size) // step + 1))
    starts = []
    for i in range(count):
        starts.append(min(i * step, length - size))
    return starts


def plain_windows(shape, window: int, per_side: int) -> list[tuple[int, int, int, int]]:
    rows, cols = shape
    size = min(window, rows, cols)  # the reference: num_row_samples = min(num_row_samples, min(rows, cols))
    out = []
    for r in plain_starts(rows, size, per_side):
        for c in plain_starts(cols, size, per_side):
            out.append((r, r + size, c, c + size))
    return out


def plain_pooled(w: np.ndarray, window: int, per_side: int) -> np.ndarray:
    parts = []
    for r0, r1, c0, c1 in plain_windows(w.shape, window, per_side):
        sub = w[r0:r1, c0:c1].astype(np.float64)
        parts.append(np.linalg.eigvalsh(sub.T @ sub))
    return np.sort(np.concatenate(parts))


def plain_pooled_svd32(w: torch.Tensor, window: int, per_side: int) -> np.ndarray:
    """The released code's line per window: torch.square(torch.linalg.svdvals(sub)) on float32."""
    parts = []
    for r0, r1, c0, c1 in plain_windows(tuple(w.shape), window, per_side):
        parts.append(torch.square(torch.linalg.svdvals(w.float()[r0:r1, c0:c1])))
    return torch.sort(torch.cat(parts)).values.double().numpy()


SHAPES = [(96, 96), (160, 64), (48, 200), (20, 30), (7, 300), (64, 64)]


@pytest.mark.parametrize("shape", SHAPES + [(1536, 576), (192, 576), (49152, 576), (4096, 11008)])
@pytest.mark.parametrize("window,per_side", [(32, 4), (256, 6), (2000, 15), (16, 1), (64, 2)])
def test_grid_is_the_reference_rule(shape, window, per_side):
    settings = FarmsSettings(window=window, max_per_side=per_side)
    grid = window_grid(shape, settings)
    assert grid == plain_windows(shape, window, per_side)
    size = min(window, *shape)
    for r0, r1, c0, c1 in grid:  # square, inside the matrix
        assert r1 - r0 == c1 - c0 == size and 0 <= r0 and r1 <= shape[0] and 0 <= c0 and c1 <= shape[1]
    assert len(set(grid)) == len(grid) <= per_side**2


def test_grid_by_hand():
    default = FarmsSettings()
    assert (default.window, default.max_per_side, default.rule, default.spectrum) == (256, 6, "peak", "code")
    grid = window_grid((1536, 576), default)  # rows step 1280 // 5 = 256, columns 320 // 5 = 64
    assert sorted({g[0] for g in grid}) == [0, 256, 512, 768, 1024, 1280]
    assert sorted({g[2] for g in grid}) == [0, 64, 128, 192, 256, 320] and len(grid) == 36
    kv = window_grid((192, 576), default)  # smaller than the window: 192 x 192, one row of 6
    assert kv == [(0, 192, c, c + 192) for c in (0, 76, 152, 228, 304, 380)]
    assert window_grid((100, 50), default) == [(r, r + 50, 0, 50) for r in (0, 10, 20, 30, 40, 50)]
    assert window_grid((64, 64), default) == [(0, 64, 0, 64)]  # no larger than the window: itself
    # span smaller than per_side - 1: step 1, every offset
    assert window_grid((34, 32), FarmsSettings(32, 6)) == [(r, r + 32, 0, 32) for r in (0, 1, 2)]
    # 7B setting: 4096 rows, 2000 window, 15 per side: step 149, 10 rows left out at the end
    rows = sorted({g[0] for g in window_grid((4096, 11008), FarmsSettings.paper())})
    assert rows == [149 * i for i in range(15)] and rows[-1] + 2000 == 4086


@pytest.mark.parametrize("shape", SHAPES)
def test_pooled_eigenvalues_against_a_plain_loop(shape):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    settings = FarmsSettings(window=32, max_per_side=4, spectrum="exact")
    got = pooled_eigenvalues(w, settings)
    want = plain_pooled(w.numpy(), 32, 4)
    assert got.dtype == np.float64 and np.all(np.diff(got) >= 0)
    assert len(got) == len(window_grid(shape, settings)) * min(32, *shape)
    np.testing.assert_allclose(got, np.clip(want, 0, None), rtol=1e-10, atol=1e-10 * want[-1])
    # the default ("code") and "svd32": the released code's float32 squared singular values, number for number
    code = pooled_eigenvalues(w, dataclasses.replace(settings, spectrum="code"))
    np.testing.assert_array_equal(code, plain_pooled_svd32(w, 32, 4))
    np.testing.assert_array_equal(pooled_eigenvalues(w, dataclasses.replace(settings, spectrum="svd32")), code)
    np.testing.assert_allclose(code, np.clip(want, 0, None), rtol=1e-4, atol=1e-5 * want[-1])  # float32 close


def test_the_two_spectra_differ_at_the_bottom_only():
    """Why the spectrum is a setting: a near-singular square window's smallest eigenvalues are
    float32 rounding in the code's spectrum, and they set the low end of the log-spaced
    histogram whose peak bounds the xmin search; the tail the fit reads is the same."""
    w = torch.randn(192, 192, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w[:, -1] = w[:, 0] + 1e-6 * w[:, 1]  # one direction nearly gone: sigma_min ~ 1e-6, below float32's reach
    w = w.float()
    exact = pooled_eigenvalues(w, FarmsSettings(window=192, spectrum="exact"))
    code = pooled_eigenvalues(w, FarmsSettings(window=192))
    assert not np.isclose(code[0], exact[0], rtol=0.5, atol=0.0)  # the bottom: float32 rounding, not the matrix
    np.testing.assert_allclose(code[-20:], exact[-20:], rtol=1e-4)


@pytest.mark.parametrize("settings", [SMALL, EXACT], ids=["code", "exact"])
def test_pooled_eigenvalues_dtype_layout_and_precision(settings):
    w = torch.randn(160, 64, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    ref = pooled_eigenvalues(w.float(), settings)
    np.testing.assert_array_equal(pooled_eigenvalues(w, settings), ref)  # bf16 read from files: same numbers
    tolerance = 1e-10 if settings.spectrum == "exact" else 1e-5
    np.testing.assert_allclose(
        pooled_eigenvalues(w.float().t(), settings), ref, rtol=tolerance, atol=tolerance * ref[-1]
    )
    f32 = pooled_eigenvalues(w.float(), settings, precision="float32")  # "code" is float32 whatever precision
    np.testing.assert_allclose(f32, ref, rtol=1e-4, atol=1e-5 * ref[-1])
    with pytest.raises(ValueError):
        pooled_eigenvalues(torch.zeros(4, 4, 4), settings)


def test_a_matrix_no_larger_than_the_window_is_its_own_spectrum():
    w = torch.randn(48, 48, generator=torch.Generator().manual_seed(1))
    exact = FarmsSettings(window=64, spectrum="exact")
    np.testing.assert_array_equal(pooled_eigenvalues(w, exact), eigenvalues(w))
    assert farms_fit(w, exact) == fit_all(eigenvalues(w))["peak"]
    squared = torch.square(torch.linalg.svdvals(w)).double().numpy()[::-1]  # the code's, ascending
    np.testing.assert_array_equal(pooled_eigenvalues(w, FarmsSettings(window=64)), squared)


def _spectra() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 150)) + rng.standard_t(3, (300, 150)) * 0.3
    heavy = np.sort(np.linalg.eigvalsh(w.T @ w))
    with_zeros = np.concatenate([np.zeros(20), heavy[20:]])  # a pruned matrix's spectrum
    pareto = np.sort(rng.pareto(2.0, 500) + 1.0)
    scaled = [heavy * 1e-3, heavy * 10.0, pareto * 50.0]  # the quirky "peak" window depends on the scale
    # A power law from 1 and a tight cluster at 5 (the histogram's peak): the best KS fit lies
    # below 0.95 x peak, so "peak" (lower bound log10(0.95 peak)) and "peak_fixed" differ.
    clustered = np.sort(np.concatenate([rng.pareto(1.5, 540) + 1.0, rng.uniform(5.0, 5.05, 60)]))
    return [heavy, with_zeros, heavy[:1], np.full(10, 2.0), pareto, *scaled, clustered]


@pytest.mark.parametrize("rule", XMIN_RULES)
def test_fit_rule_equals_fit_all(rule):
    for evals in _spectra():
        got, want = fit_rule(evals, rule), fit_all(evals)[rule]
        for field in ("alpha", "xmin", "D", "n_tail"):  # bit for bit, NaN where fit_all has NaN
            a, b = getattr(got, field), getattr(want, field)
            assert a == b or (math.isnan(a) and math.isnan(b)), (rule, field, a, b)
    with pytest.raises(ValueError):
        fit_rule(_spectra()[0], "median")


def plain_code_fit(evals: np.ndarray, rule: str) -> tuple[float, float]:
    """(alpha, D) as HUST-AI-HYZ/FARMS's analysis_esd loops (xmin_peak; its bounds made "ks"'s
    none and "peak_fixed"'s 0.95 peak), in float32, written out as there: one candidate at a time."""
    nz = torch.sort(torch.as_tensor(evals, dtype=torch.float32)).values
    n_all, logs = len(nz), torch.log(nz)
    if rule == "mid":
        i = n_all // 2
        n = float(n_all - i)
        alpha = 1 + n / (torch.sum(logs[i:]) - n * logs[i])
        return float(alpha), float(torch.max(torch.abs(1 - (nz[i:] / nz[i]) ** (-alpha + 1) - torch.arange(n) / n)))
    hist = torch.log10(nz)
    counts = torch.histc(hist, 100, min=hist.min(), max=hist.max())
    peak = 10 ** torch.linspace(hist.min(), hist.max(), 101)[torch.argmax(counts)]
    lower = {"peak": torch.log10(0.95 * peak), "peak_fixed": 0.95 * peak, "ks": -math.inf}[rule]
    upper = math.inf if rule == "ks" else 1.5 * peak
    alphas, ds = torch.zeros(n_all - 1), torch.ones(n_all - 1)
    for i, xmin in enumerate(nz[:-1]):
        if xmin < lower:
            continue
        if xmin > upper:
            break
        n = float(n_all - i)
        alpha = 1 + n / (torch.sum(logs[i:]) - n * logs[i])
        alphas[i] = alpha
        if alpha > 1:
            ds[i] = torch.max(torch.abs(1 - (nz[i:] / xmin) ** (-alpha + 1) - torch.arange(n) / n))
    return float(alphas[torch.argmin(ds)]), float(ds.min())


@pytest.mark.parametrize("rule", XMIN_RULES)
def test_fit_rule32_is_the_code_s_float32_loop(rule):
    """The "code" spectrum's fit: the code's loop bit for bit; close to the float64 fit_rule (the
    same candidate, but for rounding) on spectra with a clear tail."""
    positive = [ev for ev in _spectra() if len(ev) > 1 and ev.min() > 0 and ev.max() > ev.min()]
    assert len(positive) == 6
    for evals in positive:
        got = fit_rule32(evals, rule)
        assert (got.alpha, got.D) == plain_code_fit(evals, rule), rule
        wide = fit_rule(evals, rule)
        assert got.n_tail == wide.n_tail and got.alpha == pytest.approx(wide.alpha, rel=1e-3), rule
    with pytest.raises(ValueError):
        fit_rule32(positive[0], "median")


@pytest.mark.parametrize("rule", XMIN_RULES)
def test_fit_rule32_at_the_edges(rule):
    """Spectra the code's loop has no answer for (zeros: its log10 histogram has no range; a tail
    of equal values: an infinite alpha) fit as fit_rule does, every field (float32 values)."""
    _, with_zeros, one, flat = _spectra()[:4]
    for evals in (with_zeros, one, flat, np.zeros(10), np.array([0.0, 0.0, 1.0, 2.0, 5.0])):
        got, want = fit_rule32(evals, rule), fit_rule(evals, rule)
        assert got.n_tail == want.n_tail, (rule, evals[:3])
        for field in ("alpha", "xmin", "D"):
            a, b = getattr(got, field), getattr(want, field)
            assert a == pytest.approx(b, rel=1e-3) or (math.isnan(a) and math.isnan(b)), (rule, field, a, b)


def test_fit_rule32_does_not_depend_on_the_thread_count():
    """Its float32 sums are split over torch's threads above ~32k values, and their rounding
    follows: the FARMS fit runs on one thread whatever the process uses (the paper's setting
    pools 30000 per matrix). 1024 windows of 80 pool 81920 eigenvalues; "mid" sums 40960 of them."""
    w = torch.randn(2560, 2560, generator=torch.Generator().manual_seed(2)) * 30
    settings = FarmsSettings(window=80, max_per_side=32, rule="mid")
    evals = pooled_eigenvalues(w, settings)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fit_rule32(evals, "mid")
        torch.set_num_threads(2)
        assert fit_rule32(evals, "mid") != one  # the rounding this test is about: it shows here
        assert farms_fit(w, settings) == one and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_farms_fit_takes_its_arithmetic_from_the_spectrum_setting():
    w = torch.randn(160, 64, generator=torch.Generator().manual_seed(8))
    pooled = pooled_eigenvalues(w, SMALL)
    assert farms_fit(w, SMALL) == fit_rule32(pooled, "peak")  # "code": the code's float32 fit
    assert farms_fit(w, SVD32) == fit_rule(pooled, "peak")  # "svd32": the same spectrum, fit in float64
    assert farms_fit(w, EXACT) == fit_rule(pooled_eigenvalues(w, EXACT), "peak")
    assert farms_fit(w, SMALL).alpha == pytest.approx(farms_fit(w, SVD32).alpha, rel=1e-3)


def test_the_test_spectra_tell_the_peak_windows_apart():
    """Else test_fit_rule_equals_fit_all could not see fit_rule mixing up "peak" and "peak_fixed"."""
    assert fit_all(_spectra()[-1])["peak"].alpha != fit_all(_spectra()[-1])["peak_fixed"].alpha


def test_farms_removes_the_aspect_ratio_bias():
    """i.i.d. Gaussian matrices of aspect ratio 1 and 4: same entries' law, different whole-matrix
    ESDs (Marchenko-Pastur with Q = 1 vs 4), so different alphas; FARMS's square windows see
    the same law in both. The rule is "mid": on a spectrum without a power-law tail the KS-chosen
    xmin of "peak" jumps around (a noise larger than the bias; tests/test_farms.py's module note)."""
    gen = torch.Generator().manual_seed(0)
    square = torch.randn(256, 256, generator=gen, dtype=torch.float64) / 16
    wide = torch.randn(256, 1024, generator=gen, dtype=torch.float64) / 16
    whole = [fit_all(eigenvalues(w))["mid"].alpha for w in (square, wide)]
    settings = FarmsSettings(window=128, max_per_side=4, rule="mid")
    farms = [farms_fit(w, settings).alpha for w in (square, wide)]
    assert abs(whole[0] - whole[1]) > 1.0  # ~2.1 vs ~3.4
    assert abs(farms[0] - farms[1]) < 0.1  # ~2.11 vs ~2.11
    assert abs(farms[0] - farms[1]) < 0.1 * abs(whole[0] - whole[1])


def test_cost_estimate_against_a_hand_count():
    default = FarmsSettings()
    shapes = [(576, 576), (1536, 576), (192, 576), (20, 30)]
    cost = estimate_cost(shapes, default)
    # 6 x 6 windows of 256; 6 x 6 of 256; 1 x 6 of 192; (20, 30): 20 x 20, 1 x 6 (step 10 // 5 = 2)
    assert cost.windows == 36 + 36 + 6 + 6
    assert cost.eig_flops == 36 * 256**3 * 2 + 6 * 192**3 + 6 * 20**3
    assert cost.pooled == 36 * 256 * 2 + 6 * 192 + 6 * 20
    assert cost.fit_ops == 2 * (36 * 256) ** 2 + (6 * 192) ** 2 + (6 * 20) ** 2
    assert 0 < cost.seconds < 10
    mid = estimate_cost(shapes, dataclasses.replace(default, rule="mid"))
    assert mid.fit_ops == 0 and mid.windows == cost.windows and mid.seconds < cost.seconds
    assert estimate_cost([], default).windows == 0
    exact = estimate_cost(shapes, dataclasses.replace(default, spectrum="exact"))
    assert exact.windows == cost.windows and exact.seconds < cost.seconds  # a float32 SVD costs more per window
    svd32 = estimate_cost(shapes, dataclasses.replace(default, spectrum="svd32"))
    assert svd32.fit_ops == cost.fit_ops and exact.seconds < svd32.seconds < cost.seconds  # the float32 loop: more
    paper = estimate_cost([(4096, 4096), (11008, 4096)], FarmsSettings.paper())
    assert paper.windows == 2 * 15 * 15 and paper.seconds > 100 * cost.seconds


@pytest.mark.parametrize(
    "bad",
    [dict(window=0), dict(window=4), dict(window=2.5), dict(window=True), dict(max_per_side=0),
     dict(max_per_side=33), dict(max_per_side=1.0), dict(rule="median"), dict(spectrum="float16")],
)  # fmt: skip
def test_bad_settings_say_what_to_change(bad):
    with pytest.raises(UserError, match="FARMS"):
        FarmsSettings(**bad).validate()
    with pytest.raises(UserError, match="FARMS"):
        analyze(tiny_llama(layers=1), use_cache=False, farms=FarmsSettings(**bad))


def test_analysis_column_present_only_when_asked():
    model = tiny_llama(layers=2, seed=2)
    plain = analyze(model, "tiny", use_cache=False)
    assert "alpha_farms" in METRIC_NAMES and plain.farms is None and "farms" not in plain.to_dict()
    assert all(math.isnan(layer.alpha_farms) for layer in plain.layers)
    seen = []
    farmed = analyze(model, "tiny", use_cache=False, farms=SMALL, progress=lambda f, m: seen.append(m))
    assert farmed.farms == SMALL and farmed.to_dict()["farms"] == {
        "window": 32,
        "max_per_side": 3,
        "rule": "peak",
        "spectrum": "code",
    }
    assert seen == [f"spectra {k}/15" for k in range(1, 16)]
    for layer, ref in zip(farmed.layers, all_matrices(model), strict=True):  # 15 matrices: the pool ran
        assert layer.alpha_farms == farms_fit(ref.weight(), SMALL).alpha and np.isfinite(layer.alpha_farms)
    # Everything else bit for bit as without FARMS.
    assert [dataclasses.replace(m, alpha_farms=float("nan")) for m in farmed.layers] == list(plain.layers)
    square = farmed.layer("model.layers.0.self_attn.q_proj")  # 64 x 64 > 32: 3 x 3 windows, not itself
    assert square.alpha_farms != square.alpha_peak


def test_analysis_sequential_path_agrees(monkeypatch):
    model = tiny_llama(layers=2, seed=2)
    pooled = analyze(model, use_cache=False, farms=SMALL)
    monkeypatch.setattr(analysis_mod, "_workers", lambda device, n: 1)
    assert analyze(model, use_cache=False, farms=SMALL).layers == pooled.layers


def test_cache_keys_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAPRUNE_CACHE", str(tmp_path))
    model = tiny_llama(layers=1, seed=4)
    fp = cache.weights_fingerprint(all_matrices(model))
    plain_key = f"{fp[:32]}-auto-v1"  # today's key, unchanged
    assert analysis_mod._cache_key(fp, "auto") == plain_key
    assert analysis_mod._cache_key(fp, "auto", SMALL) == plain_key + "-farms-w32-k3-peak-code"
    plain = analyze(model, "tiny")
    seen = []
    farmed = analyze(model, "tiny", farms=SMALL, progress=lambda f, m: seen.append(m))
    assert not farmed.from_cache and seen[-1] == "FARMS 8/8"  # the plain entry reused: FARMS only
    assert farmed.layers == analyze(model, use_cache=False, farms=SMALL).layers
    assert sorted(p.stem for p in (tmp_path / "analyses").iterdir()) == sorted(
        [plain_key, plain_key + "-farms-w32-k3-peak-code"]
    )
    again = analyze(model, "tiny", farms=SMALL)
    assert again.from_cache and again.layers == farmed.layers and again.farms == SMALL
    back = analyze(model, "tiny")
    assert back.from_cache and back.layers == plain.layers and back.farms is None
    other = analyze(model, "tiny", farms=FarmsSettings(window=16, max_per_side=3))
    assert not other.from_cache and other.layers != farmed.layers


def test_a_first_farms_analysis_fills_the_plain_entry_too(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAPRUNE_CACHE", str(tmp_path))
    model = tiny_llama(layers=1, seed=6)
    farmed = analyze(model, farms=SMALL)
    with monkeypatch.context() as mp:  # neither needs a spectrum
        mp.setattr(analysis_mod, "_measure_all", lambda *a, **k: pytest.fail("cache miss"))
        plain = analyze(model)
        assert analyze(model, farms=SMALL).from_cache
    assert plain.from_cache and all(math.isnan(m.alpha_farms) for m in plain.layers)
    assert plain.layers == analyze(model, use_cache=False).layers
    assert farmed.layers == analyze(model, use_cache=False, farms=SMALL).layers


def test_analysis_from_files_equals_in_memory(tmp_path):
    from transformers import AutoModelForCausalLM

    from alphaprune.checkpoint import open_checkpoint

    tiny_llama(layers=1, seed=8).to(torch.bfloat16).save_pretrained(tmp_path, max_shard_size="64KB")
    files = analyze(open_checkpoint(str(tmp_path)), use_cache=False, farms=SMALL)
    memory = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert files.layers == analyze(memory, use_cache=False, farms=SMALL).layers
    assert all(np.isfinite(m.alpha_farms) for m in files.layers)


@functools.cache
def _bench_port():
    """(farms_alpha_peak, farms_fixed_sampling) of bench/reference_check.py, imported once."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from reference_check import farms_alpha_peak, farms_fixed_sampling

    return farms_alpha_peak, farms_fixed_sampling


@pytest.mark.slow
def test_real_model_first_block(real_model):
    """SmolLM2-135M's block 0 with the defaults (~2 s; all 210 matrices take ~40 s, not tested)."""
    refs = [r for r in all_matrices(real_model.model) if r.block == 0]
    sizes = {"k_proj": 6 * 192, "v_proj": 6 * 192}  # 192 x 576: one row of 6 windows of 192
    for ref in refs:
        ev = pooled_eigenvalues(ref.weight(), FarmsSettings())
        assert len(ev) == sizes.get(ref.kind, 36 * 256), ref.name  # the others: 6 x 6 windows of 256
        alpha = fit_rule(ev, "peak").alpha
        assert np.isfinite(alpha) and 1.0 < alpha < 30.0, ref.name
        code = farms_fit(ref.weight(), FarmsSettings())  # the default: the code's float32 fit of that spectrum
        assert code == fit_rule32(ev, "peak") and code.alpha == pytest.approx(alpha, rel=1e-2), ref.name
        assert code.alpha == _bench_port_alpha(ref.weight(), 256, 6), ref.name  # the authors' code, bit for bit


def _bench_port_alpha(weight: torch.Tensor, window: int, per_side: int) -> float:
    """The FARMS alpha of bench/reference_check.py's port of the authors' code, on one thread."""
    farms_alpha_peak, farms_fixed_sampling = _bench_port()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return farms_alpha_peak(farms_fixed_sampling(weight.detach().clone().float(), window, per_side))
    finally:
        torch.set_num_threads(before)


# --- the allocation rule (alphaprune/rules/farms.py) ------------------------------------------------------------


def _farms_ratios_loop(layers, target: float, eps: float, per_block: bool) -> list[float]:
    """AlphaPruning's mapping written out on alpha_farms: block means (or each matrix), min-max to
    [1 - eps, 1 + eps], one scaler for the parameter-weighted mean; no clipping."""
    metric = [layer.alpha_farms for layer in layers]
    if per_block:
        members = {}  # block -> its matrices' alphas
        for m, layer in zip(metric, layers, strict=True):
            members.setdefault(layer.block, []).append(m)
        metric = [sum(members[layer.block]) / len(members[layer.block]) for layer in layers]
    lo, hi = min(metric), max(metric)
    raw = [(m - lo) / (hi - lo) * 2 * eps + 1 - eps for m in metric]
    total = sum(layer.params for layer in layers)
    scale = target * total / sum(r * layer.params for r, layer in zip(raw, layers, strict=True))
    return [r * scale for r in raw]


@pytest.mark.parametrize("mapping", ["block", "matrix"])
def test_farms_rule_is_alphapruning_on_the_farms_alphas(mapping):
    """The registry's rule against the loop, and not AlphaPruning's ratios (another metric)."""
    from alphaprune import registry
    from alphaprune.registry import RuleInput

    model = tiny_llama(layers=4, seed=2)
    analysis = analyze(model, "tiny", use_cache=False, farms=SMALL)
    params = {"epsilon": 0.2, "farms_window": SMALL.window, "farms_per_side": SMALL.max_per_side,
              "farms_spectrum": SMALL.spectrum}  # fmt: skip
    given = RuleInput(analysis.prunable, 0.6, 0.99, params, granularity=mapping)
    out = registry.rule("farms").allocate(given)
    expected = _farms_ratios_loop(analysis.prunable, 0.6, 0.2, mapping == "block")
    assert max(expected) < 0.99  # inside the ceiling: the formula's numbers exactly
    np.testing.assert_allclose(out.sparsities, expected, rtol=0, atol=1e-12)
    assert out.method == "farms" and out.settings == {**params, "mapping": mapping} and out.clipped == ()
    plain = registry.rule("alphapruning").allocate(
        dataclasses.replace(given, params={"epsilon": 0.2, "metric": "alpha_peak"})
    )
    assert not np.allclose(out.sparsities, plain.sparsities)


def test_farms_rule_clips_at_the_ceiling_and_keeps_the_mean():
    from alphaprune import registry
    from alphaprune.registry import RuleInput

    model = tiny_llama(layers=4, seed=2)
    analysis = analyze(model, "tiny", use_cache=False, farms=SMALL)
    params = {"epsilon": 0.5, "farms_window": SMALL.window, "farms_per_side": SMALL.max_per_side,
              "farms_spectrum": SMALL.spectrum}  # fmt: skip
    layers = analysis.prunable
    assert max(_farms_ratios_loop(layers, 0.85, 0.5, False)) > 0.9  # the formula crosses the ceiling
    out = registry.rule("farms").allocate(RuleInput(layers, 0.85, 0.9, params, granularity="matrix"))
    weights = np.array([layer.params for layer in layers], dtype=float)
    assert max(out.sparsities) <= 0.9 + 1e-12 and min(out.sparsities) >= 0.0
    assert float(weights @ np.asarray(out.sparsities) / weights.sum()) == pytest.approx(0.85, abs=1e-9)
    assert out.clipped and all(out.ratios[name] == pytest.approx(0.9) for name in out.clipped)


def test_the_rule_s_defaults_are_the_settings_defaults():
    """The Spectra page offers FarmsSettings(); the Allocation page the rule's parameters: the same."""
    from alphaprune import registry
    from alphaprune.rules.farms import settings

    assert settings(registry.defaults()) == FarmsSettings()


def test_cli_analyze_farms_says_its_cost_first_and_shows_the_column(tmp_path, monkeypatch, capsys):
    from alphaprune.cli import main

    monkeypatch.setenv("ALPHAPRUNE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "tiny"
    tiny_llama(layers=2, seed=2).save_pretrained(folder)
    from tests.conftest import tiny_tokenizer

    tiny_tokenizer().save_pretrained(folder)
    flags = ["--farms-window", "32", "--farms-per-side", "3", "--farms-spectrum", "exact"]
    assert main(["analyze", "--model", str(folder), "--farms", *flags, "--no-cache"]) == 0
    out, err = capsys.readouterr()
    cost = estimate_cost([tuple(r.shape) for r in all_matrices(tiny_llama(layers=2))], EXACT)
    assert f"FARMS: {cost.windows} windows of up to 32 x 32 (exact)" in err
    assert err.index("FARMS:") < err.index("analysed")  # before the work
    assert "alpha_farms" in out.splitlines()[0]
    assert main(["analyze", "--model", str(folder), "--farms-spectrum", "float16", "--farms"]) == 2
    assert "FARMS window spectrum must be one of code, svd32, exact" in capsys.readouterr().err


def test_the_code_s_spectrum_does_not_depend_on_the_thread_count():
    """A float32 SVD's last bits follow torch's thread count, and those bits can move the ESD
    peak; the windows run on one thread whatever the process uses (and it is given back)."""
    w = torch.randn(300, 256, generator=torch.Generator().manual_seed(5))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = pooled_eigenvalues(w, FarmsSettings(window=256, max_per_side=3))
        torch.set_num_threads(2)
        two = pooled_eigenvalues(w, FarmsSettings(window=256, max_per_side=3))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


def test_the_bench_port_of_the_authors_code_agrees_with_ours_on_one_thread():
    """bench/reference_check.py's port of HUST-AI-HYZ/FARMS (fixed_sampling, analysis_esd's
    xmin_peak loop in float32): the same windows and eigenvalues as ours on one thread, and its
    alpha our default fit's (the code's float32 arithmetic) bit for bit; the float64 fit's but
    for rounding."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from reference_check import farms_alpha_peak, farms_cap, farms_fixed_sampling

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for shape, seed in (((160, 64), 0), ((64, 64), 1), ((48, 200), 2)):
            w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
            code = farms_fixed_sampling(w.clone(), 32, 4)
            ours = pooled_eigenvalues(w, FarmsSettings(window=32, max_per_side=4))
            np.testing.assert_array_equal(code.double().numpy(), ours)
            assert farms_alpha_peak(code) == farms_fit(w, FarmsSettings(window=32, max_per_side=4)).alpha
            assert farms_alpha_peak(code) == pytest.approx(fit_rule(ours, "peak").alpha, rel=1e-4)
    finally:
        torch.set_num_threads(before)
    assert farms_cap([0.5, 1.02], 0.7) == [0.5, 0.99999] and farms_cap([1.1], 0.8) == [0.998]
