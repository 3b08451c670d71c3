"""Figure builders (alphaprune/plots.py) on a tiny model's analysis, allocations and a run history.

.venv/bin/python -m pytest tests/test_plots.py -q
"""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch

from alphaprune import plots
from alphaprune.allocation import Allocation, alphapruning, uniform
from alphaprune.analysis import analyze
from alphaprune.arch import prunable_matrices
from alphaprune.runs import RunRecord, RunStore
from tests.conftest import tiny_llama

RULES = ("peak", "peak_fixed", "mid", "ks")


@pytest.fixture(scope="module")
def model():
    return tiny_llama(layers=3, hidden=64)


@pytest.fixture(scope="module")
def result(model):
    return analyze(model, "tiny", use_cache=False)


@pytest.fixture(scope="module")
def layer(result):
    return result.layer(next(x.name for x in result.prunable if x.kind.endswith("up_proj")))


def _by_name(fig, name):
    return next(t for t in fig.data if t.name == name)


def _pl_trace(fig):
    return next(t for t in fig.data if (t.name or "").startswith("power law"))


# --- ESD ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_esd_figure_axes_traces_and_power_law(result, layer, rule):
    evals = result.eigenvalues[layer.name]
    fig = plots.esd_figure(evals, layer, rule)
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert fig.layout.xaxis.dtick == 1 and fig.layout.xaxis.exponentformat == "power"
    alpha, xmin, D, n_tail = (getattr(layer, f"{f}_{rule}") for f in ("alpha", "xmin", "D", "n_tail"))
    names = [t.name for t in fig.data]
    assert names[0] == "ESD" and f"power law, α={alpha:.2f}" in names and "MP (random)" in names
    assert len(fig.data) == 3
    pl = _pl_trace(fig)
    share = n_tail / len(evals)
    assert pl.y[0] == pytest.approx(share * (alpha - 1) / xmin)
    assert min(pl.x) == pytest.approx(xmin) and max(pl.x) == pytest.approx(evals.max())
    assert np.all(np.asarray(pl.x) >= xmin * (1 - 1e-12))
    assert pl.line.dash == "dash" and _by_name(fig, "MP (random)").line.dash == "dot"
    for key in ("α=", "D=", "xmin=", "n_tail="):
        assert key in fig.layout.title.text
    assert layer.name in fig.layout.title.text


def test_esd_bars_are_a_density_over_all_eigenvalues(result, layer):
    evals = result.eigenvalues[layer.name]
    bars = plots.esd_figure(evals, layer, bins=30).data[0]
    y, w = np.asarray(bars.y), np.asarray(bars.width)
    assert np.all(y > 0)  # empty bins dropped
    assert np.sum(y * w) == pytest.approx(np.mean(evals > 0))  # integrates to the positive share
    lo, hi = np.asarray(bars.x) - w / 2, np.asarray(bars.x) + w / 2  # on a log axis: exactly the bin
    assert lo.min() == pytest.approx(evals[evals > 0].min()) and hi.max() == pytest.approx(evals.max())
    assert np.allclose(hi[:-1] / lo[:-1], hi[0] / lo[0])  # geometric bins


def test_esd_xmin_marker_avoids_the_log_axis_annotation_trap(result, layer):
    fig = plots.esd_figure(result.eigenvalues[layer.name], layer, "peak")
    xmin = layer.xmin_peak
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 1 and lines[0].x0 == pytest.approx(xmin)  # shapes: data units
    assert len(fig.layout.annotations) == 1
    note = fig.layout.annotations[0]
    assert note.x == pytest.approx(math.log10(xmin)) and note.yref == "paper"  # annotations: log10 units
    assert fig.layout.xaxis.range is None  # nothing stretched the axis


def test_esd_with_randomised_matrix(result, layer, model):
    ref = next(r for r in prunable_matrices(model) if r.name == layer.name)
    w = ref.weight().flatten()
    shuffled = w[torch.randperm(len(w), generator=torch.Generator().manual_seed(0))].reshape(ref.shape)
    rand = np.sort(np.linalg.eigvalsh((shuffled.T @ shuffled).double().numpy()))[-min(ref.shape) :]
    fig = plots.esd_figure(result.eigenvalues[layer.name], layer, random_evals=rand)
    assert [t.name for t in fig.data][:2] == ["ESD", "randomised W"]
    assert fig.data[1].opacity < fig.data[0].opacity
    assert len(fig.data) == 4 and fig.layout.barmode == "overlay"


def test_esd_of_a_degenerate_fit_draws_no_power_law(result, layer):
    bad = dataclasses.replace(layer, alpha_peak=float("nan"))
    fig = plots.esd_figure(result.eigenvalues[layer.name], bad)
    assert not any((t.name or "").startswith("power law") for t in fig.data)


def test_esd_linear_figure(result, layer):
    evals = result.eigenvalues[layer.name]
    fig = plots.esd_linear_figure(evals, layer, "mid", bins=20)
    assert fig.layout.xaxis.type in (None, "linear", "-")
    assert len(fig.data) == 1 and sum(fig.data[0].y) == len(evals) and len(fig.data[0].x) == 20
    assert fig.layout.shapes[0].x0 == pytest.approx(layer.xmin_mid)
    assert fig.layout.annotations[0].x == pytest.approx(layer.xmin_mid)  # linear axis: data units


# --- xmin scan ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_xmin_scan_figure(result, layer, rule):
    from alphaprune.fits import ks_scan, peak_window

    evals = result.eigenvalues[layer.name]
    fig = plots.xmin_scan_figure(evals, layer, rule)
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    assert fig.layout.xaxis.matches == "x2" or fig.layout.xaxis2.matches == "x"  # one shared x axis
    scan = ks_scan(evals)
    D, alpha = _by_name(fig, "D (KS distance)"), _by_name(fig, "α")
    assert np.allclose(D.y, scan.Ds[scan.xmins > 0]) and np.allclose(alpha.y, scan.alphas[scan.xmins > 0])
    chosen = [t for t in fig.data if t.name == f"chosen xmin ({rule})"]
    xmin = getattr(layer, f"xmin_{rule}")
    assert len(chosen) == 2 and all(t.x[0] == pytest.approx(xmin) for t in chosen)
    assert chosen[0].y[0] == pytest.approx(getattr(layer, f"D_{rule}"))
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    if rule in ("peak", "peak_fixed"):
        lower, upper = peak_window(evals, corrected=rule == "peak_fixed")
        allowed = scan.xmins[(scan.xmins >= lower) & (scan.xmins <= upper)]
        assert len(rects) == 2
        assert rects[0].x0 == pytest.approx(allowed.min()) and rects[0].x1 == pytest.approx(allowed.max())
        assert rects[0].x0 <= xmin <= rects[0].x1
    else:
        assert rects == []


def test_xmin_scan_shades_the_quirky_peak_window():
    """For "peak" the lower bound is log10(0.95 peak): with a peak near 100 it admits xmins far below 0.95 peak."""
    from alphaprune.fits import esd_peak

    rng = np.random.default_rng(1)
    evals = np.sort(100 * rng.chisquare(20, 300) / 20)
    peak = esd_peak(evals)
    layer = _fake_layer(evals)
    rect = next(s for s in plots.xmin_scan_figure(evals, layer, "peak").layout.shapes if s.type == "rect")
    rect_fixed = next(s for s in plots.xmin_scan_figure(evals, layer, "peak_fixed").layout.shapes if s.type == "rect")
    assert rect.x0 == pytest.approx(evals[0]) and evals[0] < 0.9 * peak  # everything below the peak is allowed
    assert rect_fixed.x0 >= 0.95 * peak


def _fake_layer(evals):
    """A LayerMetrics for a synthetic spectrum (only the fields the figures read matter)."""
    from alphaprune.analysis import LayerMetrics
    from alphaprune.fits import fit_all

    fits = fit_all(evals)
    fields = {f: 0.0 for f in LayerMetrics.__dataclass_fields__}
    fields.update(name="synthetic", block=0, kind="x", shape=(len(evals), 2 * len(evals)), params=1, prunable=True)
    for r, fit in fits.items():
        fields.update({f"alpha_{r}": fit.alpha, f"xmin_{r}": fit.xmin, f"D_{r}": fit.D, f"n_tail_{r}": fit.n_tail})
    return LayerMetrics(**fields)


# --- whole model -------------------------------------------------------------------------------------------------


def test_alpha_depth_figure(result):
    fig = plots.alpha_depth_figure(result)
    assert len(fig.data) == 7 and list(fig.data[0].x) == [0, 1, 2]


def test_heatmap_figure(result):
    fig = plots.heatmap_figure(result, "alpha_peak")
    heat = fig.data[0]
    z = np.asarray(heat.z)
    assert z.shape == (3, 7)  # blocks x kinds
    assert list(heat.y) == [0, 1, 2] and fig.layout.yaxis.autorange == "reversed"  # block 0 at the top
    assert heat.colorscale[0][1] == "#440154"  # Viridis
    first = result.prunable[0]
    assert z[0, 0] == pytest.approx(first.alpha_peak) and heat.x[0] == first.kind
    assert heat.text[0][0] == f"{first.alpha_peak:.2f}"
    assert "block %{y}" in heat.hovertemplate and "%{x}" in heat.hovertemplate and "%{z" in heat.hovertemplate


def _magnitude_pruned(model, fraction=0.5):
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for ref in prunable_matrices(pruned):
            w = ref.weight()
            threshold = w.abs().flatten().kthvalue(int(fraction * w.numel())).values
            w[w.abs() <= threshold] = 0.0
    return pruned


def test_before_after_figure(result, model):
    after = analyze(_magnitude_pruned(model), "tiny-pruned", use_cache=False)
    fig = plots.before_after_figure(result, after, "alpha_peak")
    kinds = list(dict.fromkeys(x.kind for x in result.prunable))
    assert [t.name for t in fig.data] == [*kinds, "no change"]
    q = fig.data[0]
    before_q = [x for x in result.prunable if x.kind == kinds[0]]
    after_q = [after.layer(x.name) for x in before_q]
    assert list(q.x) == pytest.approx([x.alpha_peak for x in before_q])
    assert list(q.y) == pytest.approx([x.alpha_peak for x in after_q])
    assert list(q.y) != pytest.approx(list(q.x))  # pruning changed the spectra
    assert "before" in fig.layout.xaxis.title.text and "after" in fig.layout.yaxis.title.text


# --- allocation --------------------------------------------------------------------------------------------------


def test_allocation_figure_bars_lines_and_no_clipping(result):
    alloc = alphapruning(result.prunable, 0.7, 0.05, mapping="block")
    assert not alloc.clipped
    fig = plots.allocation_figure(alloc, uniform_target=0.7)
    assert [t.name for t in fig.data] == ["sparsity"]
    assert list(fig.data[0].x) == [0, 1, 2] and list(fig.data[0].y) == pytest.approx(alloc.block_ratios)
    target, ceiling = fig.layout.shapes
    assert target.y0 == 0.7 and target.line.dash == "dash"
    assert ceiling.y0 == alloc.ceiling and ceiling.line.dash == "dot"
    assert tuple(fig.layout.yaxis.range) == (0.0, 1.0)


def _clipping_allocation() -> Allocation:
    """Block 1 held at the ceiling: the reference's ratio there was above 1."""
    return Allocation(
        method="alphapruning", target=0.7, names=("a", "b", "c"), blocks=(0, 1, 2), params=(10, 10, 10),
        sparsities=(0.55, 0.99, 0.56), raw=(0.5, 1.1, 0.5), ceiling=0.99, clipped=("b",),
    )  # fmt: skip


def test_allocation_figure_flags_clipped_blocks():
    alloc = _clipping_allocation()
    fig = plots.allocation_figure(alloc)
    bars = {t.name: t for t in fig.data if t.type == "bar"}
    assert set(bars) == {"sparsity", "held at ceiling"}
    assert list(bars["held at ceiling"].x) == [1] and list(bars["sparsity"].x) == [0, 2]
    assert bars["held at ceiling"].marker.color != bars["sparsity"].marker.color
    heights = {x: y for t in bars.values() for x, y in zip(t.x, t.y, strict=True)}
    assert [heights[b] for b in (0, 1, 2)] == pytest.approx(alloc.block_ratios)
    unclipped = _by_name(fig, "unclipped")
    assert list(unclipped.x) == [0, 1, 2] and list(unclipped.y) == pytest.approx(alloc.raw_block_ratios)
    assert fig.layout.shapes[0].y0 == 0.7  # target from the allocation when not given
    assert fig.layout.yaxis.range[0] == 0 and fig.layout.yaxis.range[1] > 1.1  # the raw 1.1 stays visible
    assert fig.layout.barmode == "overlay"  # disjoint traces: no group offsets


def test_allocation_figure_uniform(result):
    fig = plots.allocation_figure(uniform(result.prunable, 0.5))
    assert [t.name for t in fig.data] == ["sparsity"] and list(fig.data[0].y) == pytest.approx([0.5] * 3)


def _spread_clipping() -> Allocation:
    """Blocks 1 and 3 of 5 held at the ceiling: far apart, as on the real model."""
    return Allocation(
        method="alphapruning", target=0.7, names=tuple("abcde"), blocks=(0, 1, 2, 3, 4), params=(10,) * 5,
        sparsities=(0.6, 0.99, 0.6, 0.99, 0.32), raw=(0.55, 1.1, 0.55, 1.05, 0.3), ceiling=0.99, clipped=("b", "d"),
    )  # fmt: skip


def test_allocation_figure_bars_are_one_block_wide():
    """Without explicit widths plotly sized the "held at ceiling" bars by the gap between blocks
    1 and 3 and drew two bars two blocks wide."""
    fig = plots.allocation_figure(_spread_clipping())
    held = _by_name(fig, "held at ceiling")
    assert list(held.x) == [1, 3] and tuple(fig.layout.xaxis.range) == (-0.5, 4.5)
    for bar in (t for t in fig.data if t.type == "bar"):
        assert bar.width is not None and all(0 < w < 1 for w in bar.width)


def _per_matrix_clipping() -> Allocation:
    """Mapping "matrix": two blocks of three matrices, only b1 above the ceiling."""
    names = ("a0", "a1", "a2", "b0", "b1", "b2")
    return Allocation(
        method="alphapruning", target=0.7, names=names, blocks=(0, 0, 0, 1, 1, 1), params=(10,) * 6,
        sparsities=(0.6, 0.65, 0.6, 0.62, 0.99, 0.74), raw=(0.58, 0.63, 0.58, 0.6, 1.15, 0.71), ceiling=0.99,
        clipped=("b1",), settings={"epsilon": 0.3, "metric": "alpha_peak", "mapping": "matrix"},
    )  # fmt: skip


def test_allocation_figure_per_matrix_marks_exactly_the_clipped_matrices():
    alloc = _per_matrix_clipping()
    fig = plots.allocation_figure(alloc)
    held, rest = _by_name(fig, "held at ceiling"), _by_name(fig, "sparsity")
    assert list(held.customdata) == ["b1"] and list(held.y) == [0.99]  # the matrix, not its block
    assert list(rest.customdata) == ["a0", "a1", "a2", "b0", "b2"]
    assert list(rest.y) == pytest.approx([0.6, 0.65, 0.6, 0.62, 0.74])
    xs = dict(zip([*rest.customdata, *held.customdata], [*rest.x, *held.x], strict=True))
    assert -0.5 < xs["a0"] < xs["a1"] < xs["a2"] < 0.5 < xs["b0"] < xs["b1"] < xs["b2"] < 1.5  # inside its block
    unclipped = _by_name(fig, "unclipped")
    assert dict(zip(unclipped.customdata, unclipped.y, strict=True))["b1"] == 1.15  # per matrix, not 0.82
    assert fig.layout.yaxis.range[1] > 1.15 and "per matrix" in fig.layout.title.text


def test_clipping_note_names_matrices_and_their_unclipped_ratios():
    note = plots.clipping_note(_per_matrix_clipping())
    assert note.startswith("1 matrix is held at the ceiling 0.99 (unclipped ratio): b1 (1.150).")
    assert "prune the 1 with a ratio above 1 whole" in note
    assert plots.clipping_note(uniform([_M("x", 0, 10)], 0.5)) is None


def test_clipping_note_names_whole_blocks_once():
    alloc = _clipping_allocation()
    whole = dataclasses.replace(
        alloc, names=("a", "b", "b2", "c"), blocks=(0, 1, 1, 2), params=(10, 5, 5, 10),
        sparsities=(0.55, 0.99, 0.99, 0.56), raw=(0.5, 1.1, 1.1, 0.5), clipped=("b", "b2"),
    )  # fmt: skip
    note = plots.clipping_note(whole)
    assert "2 matrices are held at the ceiling 0.99 (unclipped ratio): block 1 (all 2 matrices, 1.100)." in note
    low = dataclasses.replace(alloc, sparsities=(0.0, 0.99, 0.8), raw=(-0.1, 1.1, 0.7), clipped=("a", "b"))
    note = plots.clipping_note(low)
    assert "1 matrix is held at 0 (unclipped ratio): a (-0.100)." in note and "b (1.100)" in note


@dataclasses.dataclass
class _M:
    name: str
    block: int
    params: int


@pytest.mark.slow
def test_allocation_figure_per_matrix_on_the_default_model(real_analysis):
    """Issue 9: AlphaPruning 0.7, eps 0.3, mapping "matrix" clips layers.10 v_proj and layers.23 o_proj."""
    alloc = alphapruning(real_analysis.prunable, 0.7, 0.3, mapping="matrix")
    expected = ("model.layers.10.self_attn.v_proj", "model.layers.23.self_attn.o_proj")
    assert alloc.clipped == expected
    fig = plots.allocation_figure(alloc)
    assert tuple(_by_name(fig, "held at ceiling").customdata) == expected
    assert len(_by_name(fig, "sparsity").x) == len(alloc.names) - 2
    note = plots.clipping_note(alloc)
    raw = dict(zip(alloc.names, alloc.raw, strict=True))
    for name in expected:
        assert raw[name] > 1.05 and f"{name} ({raw[name]:.3f})" in note
    assert f"up to {max(alloc.raw_block_ratios):.3f}" not in note  # the old warning's block number


# --- run history -------------------------------------------------------------------------------------------------


def _store(tmp_path):
    store = RunStore(tmp_path / "r.sqlite")
    runs = [
        ("wanda", "uniform", 0.6, 0.3, 40.0),
        ("wanda", "uniform", 0.5, 0.3, 25.0),
        ("wanda", "alphapruning", 0.5, 0.3, 22.0),
        ("wanda", "alphapruning", 0.7, 0.2, 60.0),
        ("magnitude", "uniform", 0.5, 0.3, float("nan")),  # failed run: skipped
    ]
    for pruner, allocation, sparsity, epsilon, ppl in runs:
        settings = {"pruner": pruner, "allocation": allocation, "sparsity": sparsity, "epsilon": epsilon}
        store.add(RunRecord(kind="prune", model="m", settings=settings, ppl_before=18.0, ppl_after=ppl))
    store.add(RunRecord(kind="eval", model="m", ppl_before=19.0))
    return store


def test_runs_figure(tmp_path):
    frame = _store(tmp_path).frame()
    fig = plots.runs_figure(frame)
    assert fig.layout.yaxis.type == "log"
    assert [t.name for t in fig.data] == ["wanda / alphapruning", "wanda / uniform"]
    uni = _by_name(fig, "wanda / uniform")
    assert list(uni.x) == [0.5, 0.6] and list(uni.y) == [25.0, 40.0]  # sorted by x
    assert list(uni.customdata) == [2, 1] and "run %{customdata}" in uni.hovertemplate
    assert uni.mode == "lines+markers" and uni.legendgroup == "m"
    (dense,) = fig.layout.shapes
    assert dense.y0 == 18.0 and dense.line.dash == "dash" and not fig.layout.annotations  # data units, no trap
    assert "4 prune runs" in fig.layout.title.text


def test_runs_figure_by_epsilon_is_alphapruning_only(tmp_path):
    """Epsilon applies to AlphaPruning only: uniform runs (stored with the default 0.3) are not drawn."""
    by_eps = plots.runs_figure(_store(tmp_path).frame(), x="epsilon")
    assert [t.name for t in by_eps.data] == ["wanda / alphapruning"]
    assert list(by_eps.data[0].x) == [0.2, 0.3]


def _two_models(tmp_path):
    store = RunStore(tmp_path / "two.sqlite")
    for model, dense, ppls in (("m-small", 20.0, (30.0, 45.0)), ("m-big", 9.0, (12.0, 15.0))):
        for sparsity, ppl in zip((0.5, 0.6), ppls, strict=True):
            settings = {"pruner": "wanda", "allocation": "uniform", "sparsity": sparsity}
            store.add(RunRecord(kind="prune", model=model, settings=settings, ppl_before=dense, ppl_after=ppl))
    store.add(RunRecord(kind="eval", model="m-big", ppl_before=9.0))
    return store


def test_runs_figure_keeps_models_apart(tmp_path):
    fig = plots.runs_figure(_two_models(tmp_path).frame())
    lines = {t.legendgroup: t for t in fig.data}
    assert len(fig.data) == 2 and set(lines) == {"m-small", "m-big"}  # same pruner / allocation, two lines
    assert list(lines["m-small"].y) == [30.0, 45.0] and list(lines["m-big"].y) == [12.0, 15.0]
    assert "m-big" in lines["m-big"].hovertemplate
    dense = {shape.legendgroup: shape for shape in fig.layout.shapes}
    assert dense["m-small"].y0 == 20.0 and dense["m-big"].y0 == 9.0  # a dense line per model
    assert dense["m-small"].line.dash != dense["m-big"].line.dash
    assert "2 models" in fig.layout.title.text


def test_runs_figure_log_axis_has_clean_labels(tmp_path):
    fig = plots.runs_figure(_two_models(tmp_path).frame())
    axis = fig.layout.yaxis
    values = [float(v) for v in axis.tickvals]
    assert values == [5.0, 10.0, 20.0, 50.0]  # 1-2-5 ticks bracketing 9 .. 45
    assert list(axis.ticktext) == ["5", "10", "20", "50"]
    assert axis.range == pytest.approx((math.log10(5), math.log10(50)))  # log10 units
    values, labels = plots._log_ticks(150.0, 640000.0)  # more than 10 ticks at 1-2-5: decades only
    assert values == [1e2, 1e3, 1e4, 1e5, 1e6] and labels == ["100", "1,000", "10,000", "100,000", "1,000,000"]
    assert plots._log_ticks(20.0, 20.0) == ([10.0, 20.0, 50.0], ["10", "20", "50"])  # never a zero-width range
    assert plots._log_ticks(0.3, 0.7)[1] == ["0.2", "0.5", "1"]


def test_runs_figure_empty(tmp_path):
    import pandas as pd

    for frame in (RunStore(tmp_path / "empty.sqlite").frame(), pd.DataFrame()):
        fig = plots.runs_figure(frame)
        assert len(fig.data) == 0 and "no runs in this view" in fig.layout.title.text.lower()
    store = RunStore(tmp_path / "evals.sqlite")
    store.add(RunRecord(kind="eval", model="m", ppl_before=19.0, settings={"sparsity": 0.5}))
    store.add(RunRecord(kind="prune", model="m", ppl_after=3.0))  # no settings: no sparsity column
    assert len(plots.runs_figure(store.frame()).data) == 0


def test_runs_figure_title_says_the_view_holds_no_prune_runs(tmp_path):
    """Runs exist but the Kind filter keeps only eval runs: say so, not "No pruning runs yet"."""
    frame = _two_models(tmp_path).frame()
    fig = plots.runs_figure(frame[frame["kind"] == "eval"])
    assert len(fig.data) == 0
    assert fig.layout.title.text == "No prune runs among the 1 runs in this view (kinds: eval)"


# --- teaching ----------------------------------------------------------------------------------------------------


def test_heavy_tail_demo_figure():
    fig = plots.heavy_tail_demo_figure(seed=0, n=120, m=240)
    names = [t.name for t in fig.data]
    assert "Gaussian ESD" in names and "heavy-tailed ESD" in names
    alphas = {}
    for label in ("Gaussian", "heavy-tailed"):
        pl = next(n for n in names if n.startswith(f"{label}: power law, α="))
        alphas[label] = float(pl.split("α=")[1])
    assert alphas["heavy-tailed"] < alphas["Gaussian"]
    assert any(n == "Gaussian: MP" for n in names)
    for axis in ("xaxis", "xaxis2", "yaxis", "yaxis2"):
        assert fig.layout[axis].type == "log"
    assert len(fig.layout.annotations) == 2  # the two subplot titles only
