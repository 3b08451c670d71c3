"""Plotly figures of analyses, allocations and runs (no Streamlit here: app and notebooks share them).

Spectra of one matrix (`evals` ascending, `layer` its LayerMetrics, `rule` an xmin rule of fits.XMIN_RULES):

    esd_figure(evals, layer, rule="peak", bins=60, random_evals=None)   # log-log ESD, power law, xmin, MP
    esd_linear_figure(evals, layer, rule="peak", bins=80)              # linear histogram + xmin
    xmin_scan_figure(evals, layer, rule="peak")                        # D(xmin) and alpha(xmin), window

A whole model (`result` an Analysis):

    alpha_depth_figure(result, metric="alpha_peak")          # metric against block, one line per kind
    heatmap_figure(result, metric="alpha_peak")              # block x kind heatmap
    before_after_figure(before, after, metric="alpha_peak")  # metric after pruning against before

Allocation, run history and teaching:

    allocation_figure(allocation, uniform_target=None)  # sparsity per block (per matrix for mapping "matrix")
    clipping_note(allocation)                           # the matrices held at a bound, with their unclipped ratios
    runs_figure(frame, x="sparsity")                    # ppl_after against sparsity/epsilon, per model (RunStore.frame)
    heavy_tail_demo_figure(seed=0, n=400, m=800)        # Gaussian (MP) vs heavy-tailed random matrix

Log axes: a shape (add_vline / add_hline / add_vrect) takes data values, but an annotation or an
axis range takes log10 values (streamlit-notes.md 5.1), so labels are placed at log10(x) or go
into the legend.
"""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from threadpoolctl import threadpool_limits

from alphaprune import registry
from alphaprune.allocation import Allocation
from alphaprune.analysis import Analysis, LayerMetrics
from alphaprune.fits import fit_all, ks_scan, peak_window
from alphaprune.metrics import mp_density, mp_fit

_LOG_AXIS = {"type": "log", "dtick": 1, "exponentformat": "power"}
_HEIGHT = 420


# --- spectra of one matrix ---------------------------------------------------------------------------------------


def _fit_of(layer: LayerMetrics, rule: str) -> tuple[float, float, float, int]:
    """(alpha, xmin, D, n_tail) of `rule` as stored on the layer."""
    return tuple(getattr(layer, f"{field}_{rule}") for field in ("alpha", "xmin", "D", "n_tail"))


def _log_edges(bins: int, *spectra: np.ndarray) -> np.ndarray:
    """`bins` + 1 geometric bin edges spanning the positive eigenvalues of all `spectra`."""
    positive = np.concatenate([s[s > 0] for s in spectra])
    if len(positive) == 0:
        return np.array([1.0, 10.0])
    lo, hi = positive.min(), positive.max()
    return np.geomspace(lo, hi if hi > lo else lo * 10, bins + 1)


def _density_bars(evals: np.ndarray, edges: np.ndarray, name: str, **style) -> go.Bar:
    """Log-binned density (normalised over ALL eigenvalues, zeros included) as bars; empty bins dropped.

    Arithmetic centres with width = bin width span exactly [edge_i, edge_i+1] on a log axis.
    """
    counts, _ = np.histogram(evals, bins=edges)
    density = counts / (max(len(evals), 1) * np.diff(edges))
    keep = density > 0
    return go.Bar(
        x=((edges[:-1] + edges[1:]) / 2)[keep],
        y=density[keep],
        width=np.diff(edges)[keep],
        name=name,
        marker_line_width=0,
        hovertemplate="λ %{x:.3g}<br>density %{y:.3g}<extra>" + name + "</extra>",
        **style,
    )


def _power_law(alpha: float, xmin: float, n_tail: int, n_total: int, lam_max: float, name: str) -> go.Scatter | None:
    """The tail's power-law pdf, share * (alpha-1)/xmin * (x/xmin)^-alpha on [xmin, lam_max], dashed."""
    if not (np.isfinite(alpha) and alpha > 1 and xmin > 0 and lam_max > xmin and n_tail > 1):
        return None
    x = np.geomspace(xmin, lam_max, 50)
    share = n_tail / n_total  # the fit describes this share of the eigenvalues
    y = share * (alpha - 1) / xmin * (x / xmin) ** (-alpha)
    return go.Scatter(x=x, y=y, mode="lines", name=name, line_dash="dash")


def _mp_curve(shape: tuple[int, int], sigma2: float, lo: float, hi: float, name: str, **style) -> go.Scatter | None:
    """Marchenko-Pastur density of a random matrix of `shape` and entry variance `sigma2`, dotted."""
    if not sigma2 > 0:
        return None
    x = np.geomspace(max(lo, 1e-300), hi, 300)
    y = mp_density(x, shape, sigma2)
    keep = y > 0  # log y cannot show the zeros outside the bulk
    if not keep.any():
        return None
    return go.Scatter(x=x[keep], y=y[keep], mode="lines", name=name, line_dash="dot", **style)


def _xmin_marker(fig: go.Figure, xmin: float, log_x: bool, label: str = "xmin") -> None:
    """Vertical line at xmin (data units, right on both axis types) and its label above the plot
    (annotation x in log10 units on a log axis: add_vline(annotation_text=...) would misplace it)."""
    if not (np.isfinite(xmin) and xmin > 0):
        return
    fig.add_vline(x=xmin, line_dash="dash", line_color="grey", line_width=1)
    fig.add_annotation(
        x=math.log10(xmin) if log_x else xmin,
        y=1,
        yref="paper",
        yanchor="bottom",
        text=label,
        showarrow=False,
    )


def esd_figure(
    evals: np.ndarray, layer: LayerMetrics, rule: str = "peak", bins: int = 60, random_evals: np.ndarray | None = None
) -> go.Figure:
    """Log-log ESD: log-binned density bars, the power-law fit over the tail (dashed), xmin
    marked, the Marchenko-Pastur density of a random matrix of the same shape (dotted) and,
    with `random_evals`, the ESD of an element-shuffled copy as faint bars ("randomised W")."""
    evals = np.asarray(evals, dtype=np.float64)
    alpha, xmin, D, n_tail = _fit_of(layer, rule)
    spectra = (evals,) if random_evals is None else (evals, np.asarray(random_evals, dtype=np.float64))
    edges = _log_edges(bins, *spectra)
    fig = go.Figure(_density_bars(evals, edges, "ESD", opacity=0.8))
    if random_evals is not None:
        fig.add_trace(_density_bars(spectra[1], edges, "randomised W", opacity=0.35, marker_color="grey"))
    lam_max = float(evals.max()) if len(evals) else 0.0
    optional = (
        _power_law(alpha, xmin, n_tail, len(evals), lam_max, f"power law, α={alpha:.2f}"),
        _mp_curve(layer.shape, layer.mp_sigma2, max(layer.mp_edge_low, edges[0]), layer.mp_edge_high, "MP (random)"),
    )
    fig.add_traces([trace for trace in optional if trace is not None])
    _xmin_marker(fig, xmin, log_x=True)
    fig.update_xaxes(title="eigenvalue λ", **_LOG_AXIS)
    fig.update_yaxes(title="density", **_LOG_AXIS)
    title = f"{layer.name}: α={alpha:.2f}, D={D:.3f}, xmin={xmin:.3g}, n_tail={n_tail} ({rule})"
    fig.update_layout(title=title, barmode="overlay", bargap=0, height=_HEIGHT)
    return fig


def esd_linear_figure(evals: np.ndarray, layer: LayerMetrics, rule: str = "peak", bins: int = 80) -> go.Figure:
    """Histogram (counts) of the eigenvalues on linear axes, with the xmin of `rule` marked."""
    evals = np.asarray(evals, dtype=np.float64)
    counts, edges = np.histogram(evals, bins=bins)
    fig = go.Figure(
        go.Bar(
            x=(edges[:-1] + edges[1:]) / 2,
            y=counts,
            width=np.diff(edges),
            name="eigenvalues",
            marker_line_width=0,
            hovertemplate="λ %{x:.3g}<br>%{y} eigenvalues<extra></extra>",
        )
    )
    _xmin_marker(fig, _fit_of(layer, rule)[1], log_x=False)
    fig.update_xaxes(title="eigenvalue λ")
    fig.update_yaxes(title="count")
    fig.update_layout(title=f"{layer.name}: eigenvalues ({rule})", bargap=0, height=_HEIGHT)
    return fig


def _allowed_window(evals: np.ndarray, rule: str, xmins: np.ndarray) -> tuple[float, float] | None:
    """The x range of candidates the rule may pick, clipped to the candidates; None if none.

    For "peak" the lower bound is log10(0.95 peak) compared with linear eigenvalues (the
    reference's quirk, fits.py), usually far below the peak: this shades what is allowed."""
    if rule not in ("peak", "peak_fixed") or len(xmins) == 0:
        return None
    lower, upper = peak_window(evals, corrected=rule == "peak_fixed")
    inside = xmins[(xmins >= lower) & (xmins <= upper) & (xmins > 0)]
    return (float(inside.min()), float(inside.max())) if len(inside) else None


def xmin_scan_figure(evals: np.ndarray, layer: LayerMetrics, rule: str = "peak") -> go.Figure:
    """Two rows on one log x axis: KS distance D and alpha for every candidate xmin (fits.ks_scan),
    the xmin chosen by `rule` marked in both, and for the peak rules the allowed window shaded."""
    evals = np.sort(np.asarray(evals, dtype=np.float64))
    scan = ks_scan(evals)
    keep = scan.xmins > 0
    xs = scan.xmins[keep]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    for row, values, name in ((1, scan.Ds[keep], "D (KS distance)"), (2, scan.alphas[keep], "α")):
        hover = "xmin %{x:.3g}<br>" + name + " %{y:.3g}<extra></extra>"
        fig.add_trace(go.Scatter(x=xs, y=values, mode="lines", name=name, hovertemplate=hover), row=row, col=1)
    alpha, xmin, D, _ = _fit_of(layer, rule)
    window = _allowed_window(evals, rule, xs)
    if window is not None:
        for row in (1, 2):
            fig.add_vrect(
                x0=window[0], x1=window[1], row=row, col=1, fillcolor="orange", opacity=0.15, line_width=0,
                name=f"allowed xmin ({rule})", showlegend=row == 1,
            )  # fmt: skip
    if np.isfinite(xmin) and xmin > 0:
        for row, y in ((1, D), (2, alpha)):
            fig.add_vline(x=xmin, row=row, col=1, line_dash="dash", line_color="grey", line_width=1)
            fig.add_trace(
                go.Scatter(
                    x=[xmin], y=[y], mode="markers", marker=dict(size=10, symbol="x", color="crimson"),
                    name=f"chosen xmin ({rule})", legendgroup="chosen", showlegend=row == 1,
                ),
                row=row, col=1,
            )  # fmt: skip
    fig.update_xaxes(**_LOG_AXIS)
    fig.update_xaxes(title="candidate xmin", row=2, col=1)
    fig.update_yaxes(title="D", row=1, col=1)
    top = max(8.0, 2 * alpha) if np.isfinite(alpha) else 8.0  # the last few candidates have huge alphas
    fig.update_yaxes(title="α", row=2, col=1, range=[0, min(top, float(np.max(scan.alphas[keep], initial=1.0)) * 1.05)])
    fig.update_layout(title=f"{layer.name}: xmin scan, {rule} picks {xmin:.3g} (α={alpha:.2f})", height=520)
    return fig


# --- a whole model -----------------------------------------------------------------------------------------------


def alpha_depth_figure(result: Analysis, metric: str = "alpha_peak") -> go.Figure:
    """One line per matrix kind: `metric` against the block index."""
    fig = go.Figure()
    kinds = dict.fromkeys(layer.kind for layer in result.prunable)  # ordered, unique
    for kind in kinds:
        rows = [layer for layer in result.prunable if layer.kind == kind]
        fig.add_trace(
            go.Scatter(
                x=[r.block for r in rows],
                y=[getattr(r, metric) for r in rows],
                mode="lines+markers",
                name=kind,
                hovertext=[r.name for r in rows],
            )
        )
    fig.update_layout(xaxis_title="block", yaxis_title=metric, legend_title="matrix", height=_HEIGHT)
    return fig


def heatmap_figure(result: Analysis, metric: str = "alpha_peak") -> go.Figure:
    """Heatmap of `metric`: one row per block (block 0 at the top), one column per matrix kind."""
    layers = result.prunable
    kinds = list(dict.fromkeys(layer.kind for layer in layers))
    blocks = sorted({layer.block for layer in layers})
    z = np.full((len(blocks), len(kinds)), np.nan)
    for layer in layers:
        z[blocks.index(layer.block), kinds.index(layer.kind)] = float(getattr(layer, metric))
    text = [[f"{v:.2f}" if np.isfinite(v) else "" for v in row] for row in z]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=kinds,
            y=blocks,
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar_title=metric,
            hovertemplate="block %{y}<br>%{x}: " + metric + "=%{z:.3g}<extra></extra>",
        )
    )
    fig.update_yaxes(title="block", autorange="reversed", dtick=1)
    fig.update_xaxes(title="matrix", side="top")
    fig.update_layout(height=max(300, 24 * len(blocks) + 140))
    return fig


def before_after_figure(before: Analysis, after: Analysis, metric: str = "alpha_peak") -> go.Figure:
    """`metric` after pruning against before, one marker trace per matrix kind, for the prunable
    matrices in both analyses; the diagonal (no change) dashed."""
    after_by_name = {layer.name: layer for layer in after.prunable}
    pairs = [(b, after_by_name[b.name]) for b in before.prunable if b.name in after_by_name]
    fig = go.Figure()
    for kind in dict.fromkeys(b.kind for b, _ in pairs):
        rows = [(b, a) for b, a in pairs if b.kind == kind]
        fig.add_trace(
            go.Scatter(
                x=[float(getattr(b, metric)) for b, _ in rows],
                y=[float(getattr(a, metric)) for _, a in rows],
                mode="markers",
                name=kind,
                text=[b.name for b, _ in rows],
                hovertemplate="%{text}<br>before %{x:.3g}<br>after %{y:.3g}<extra></extra>",
            )
        )
    values = [float(getattr(layer, metric)) for pair in pairs for layer in pair]
    values = [v for v in values if np.isfinite(v)]
    if values:
        lo, hi = min(values), max(values)
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="no change", line=dict(dash="dash")))
    fig.update_layout(
        title=f"{metric} before and after pruning",
        xaxis_title=f"{metric} before pruning",
        yaxis_title=f"{metric} after pruning",
        legend_title="matrix",
        height=_HEIGHT,
    )
    return fig


# --- allocation, run history ---------------------------------------------------------------------------------------

_BOUND_COLORS = {"sparsity": "#636efa", "held at ceiling": "#ef553b", "held at 0": "#00a0a0"}
_SLOT = 0.85  # bar width in blocks. Explicit: without it plotly sizes a trace's bars by the gaps between
# its own x values, and a "held at ceiling" trace with blocks 10 and 23 drew two 11-block-wide bars.
_NOTE_ITEMS = 8  # matrices or blocks named in clipping_note before "and N more"
_PRIORITY = ("sparsity", "held at 0", "held at ceiling")  # a block's colour: its most notable matrix


def per_matrix(allocation: Allocation) -> bool:
    """True when the ratios were mapped per matrix (AlphaPruning, mapping "matrix"): draw and state them so."""
    return allocation.settings.get("mapping") == "matrix"


def _bound(allocation: Allocation, name: str, sparsity: float) -> str:
    """ "held at ceiling" / "held at 0" for a clipped matrix, else "sparsity"."""
    if name not in allocation.clipped:
        return "sparsity"
    return "held at ceiling" if sparsity == allocation.ceiling else "held at 0"


def _block_bars(allocation: Allocation) -> list[dict]:
    """One bar per block: its weighted sparsity, unclipped value, and the bound any of its matrices is held at."""
    blocks = sorted(set(allocation.blocks))
    labels = {b: "sparsity" for b in blocks}
    for name, block, s in zip(allocation.names, allocation.blocks, allocation.sparsities, strict=True):
        labels[block] = max(labels[block], _bound(allocation, name, s), key=_PRIORITY.index)
    final, raw = allocation.block_ratios, allocation.raw_block_ratios
    return [
        dict(x=b, width=_SLOT, y=final[i], raw=raw[i], label=labels[b], text=f"block {b}") for i, b in enumerate(blocks)
    ]


def _matrix_bars(allocation: Allocation) -> list[dict]:
    """One bar per matrix, each block's matrices side by side (module order) inside the block's slot,
    so the x axis still reads as blocks."""
    members: dict[int, list[int]] = {}
    for i, block in enumerate(allocation.blocks):
        members.setdefault(block, []).append(i)
    bars = []
    for block in sorted(members):
        idx = members[block]
        step = _SLOT / len(idx)
        for j, i in enumerate(idx):
            name, s, raw = allocation.names[i], allocation.sparsities[i], allocation.raw[i]
            x = block - _SLOT / 2 + (j + 0.5) * step
            bars.append(dict(x=x, width=0.9 * step, y=s, raw=raw, label=_bound(allocation, name, s), text=name))
    return bars


def allocation_figure(
    allocation: Allocation, uniform_target: float | None = None, others: dict[str, Allocation] | None = None
) -> go.Figure:
    """Sparsity bars per block, or per matrix when the mapping was per matrix (`per_matrix`), the
    bars held at a bound in another colour (per matrix: exactly the clipped matrices), the unclipped
    (reference) values as markers where they differ, the target dashed and the ceiling dotted;
    `others` (rule name -> allocation at the same target) as one line of block ratios each.

    Cheap (a few ms for 210 matrices): it is redrawn on every slider move."""
    matrix = per_matrix(allocation)
    bars = _matrix_bars(allocation) if matrix else _block_bars(allocation)
    traces = []
    for label, color in _BOUND_COLORS.items():
        group = [bar for bar in bars if bar["label"] == label]
        if group:
            traces.append(
                go.Bar(
                    x=[b["x"] for b in group], y=[b["y"] for b in group], width=[b["width"] for b in group],
                    customdata=[b["text"] for b in group], name=label, marker_color=color,
                    hovertemplate="%{customdata}<br>sparsity %{y:.3f}<extra>" + label + "</extra>",
                )
            )  # fmt: skip
    differs = [bar for bar in bars if abs(bar["raw"] - bar["y"]) > 1e-9]
    if differs:
        traces.append(
            go.Scatter(
                x=[b["x"] for b in differs], y=[b["raw"] for b in differs], customdata=[b["text"] for b in differs],
                mode="markers", name="unclipped",
                marker=dict(symbol="diamond-open", size=6 if matrix else 9, color="black"),
                hovertemplate="%{customdata}<br>unclipped %{y:.3f}<extra></extra>",
            )
        )  # fmt: skip
    traces += _overlay_traces(others or {})
    return go.Figure(data=traces, layout=_allocation_layout(allocation, uniform_target, bars, matrix))


def _overlay_traces(others: dict[str, Allocation]) -> list:
    """One line per other rule: its parameter-weighted sparsity of each block."""
    traces = []
    for name, other in others.items():
        blocks = sorted(set(other.blocks))
        traces.append(
            go.Scatter(
                x=blocks, y=other.block_ratios, mode="lines+markers", name=name, marker=dict(size=5),
                hovertemplate="block %{x}<br>" + name + " %{y:.3f}<extra></extra>",
            )
        )  # fmt: skip
    return traces


def compare_figure(rows: list[dict]) -> go.Figure:
    """A comparison's rules side by side (compare.table's rows): each rule's block ratios as one
    line, its pruned perplexity in the legend, best first; their common target dashed."""
    traces = []
    for row in rows:
        label = f"{row['rule']}: ppl {row['ppl_after']:.1f}"
        traces.append(
            go.Scatter(
                x=list(range(len(row.get("block_ratios", [])))), y=row.get("block_ratios", []), mode="lines+markers",
                name=label,
                marker=dict(size=5), hovertemplate="block %{x}<br>sparsity %{y:.3f}<extra>" + label + "</extra>",
            )
        )  # fmt: skip
    layout = dict(xaxis=dict(title="block"), yaxis=dict(title="sparsity"), height=_HEIGHT,
                  title="Compared rules: block ratios (legend: perplexity after pruning)")  # fmt: skip
    targets = {row.get("target") for row in rows} - {None}
    if len(targets) == 1:
        target = targets.pop()
        layout["shapes"] = [_hline(target, "dash", f"target {target:.2f}")]
    return go.Figure(data=traces, layout=layout)


def _allocation_layout(allocation: Allocation, uniform_target: float | None, bars: list[dict], matrix: bool) -> dict:
    target = allocation.target if uniform_target is None else uniform_target
    raw = [b["raw"] for b in bars]
    top = max(1.0, max(raw, default=0.0) + 0.03)  # 0..1, stretched only to show an unclipped value above 1
    bottom = min(0.0, min(raw, default=0.0) - 0.03)
    blocks = sorted(set(allocation.blocks))
    per = "per matrix" if matrix else "per block"
    return dict(
        xaxis=dict(
            title="block (one bar per matrix)" if matrix else "block",
            dtick=1 if len(blocks) <= 40 else None,
            range=[blocks[0] - 0.5, blocks[-1] + 0.5] if blocks else None,  # each block's slot, no empty ones
        ),
        yaxis=dict(title="sparsity", range=[bottom, top]),
        barmode="overlay",  # the groups' bars sit at disjoint places: no side-by-side offsets
        bargap=0.15,
        height=_HEIGHT,
        title=f"{allocation.method}, {per}: mean sparsity {allocation.mean:.3f}",
        shapes=[_hline(target, "dash", f"uniform {target:.2f}"), _hline(allocation.ceiling, "dot", "ceiling")],
    )


def _bound_items(allocation: Allocation, held: list[int]) -> list[str]:
    """ "block 10 (all 7 matrices, 1.017)" where a whole block is held, from one unclipped ratio,
    else "model.layers.10.self_attn.v_proj (1.149)", in module order."""
    items, seen = [], set()
    for i in held:
        block = allocation.blocks[i]
        members = [j for j, b in enumerate(allocation.blocks) if b == block]
        same = {allocation.raw[j] for j in members} == {allocation.raw[i]}
        if len(members) > 1 and set(members) <= set(held) and same:
            if block not in seen:
                items.append(f"block {block} (all {len(members)} matrices, {allocation.raw[i]:.3f})")
            seen.add(block)
        else:
            items.append(f"{allocation.names[i]} ({allocation.raw[i]:.3f})")
    if len(items) > _NOTE_ITEMS:
        items = items[:_NOTE_ITEMS] + [f"and {len(items) - _NOTE_ITEMS} more"]
    return items


def clipping_note(allocation: Allocation) -> str | None:
    """What was held at a bound, in words: the matrices (or whole blocks) held at the ceiling or at 0,
    each with the formula's own unclipped ratio (`allocation.raw`); None when nothing was. A matrix
    can be held at the ceiling from an unclipped ratio below it: the refit scales every ratio up."""
    if not allocation.clipped:
        return None
    held = {allocation.ceiling: [], 0.0: []}
    for i, (name, s) in enumerate(zip(allocation.names, allocation.sparsities, strict=True)):
        if name in allocation.clipped:
            held[allocation.ceiling if s == allocation.ceiling else 0.0].append(i)
    parts = []
    for level, idx in held.items():
        if idx:
            where = f"the ceiling {level:g}" if level == allocation.ceiling else "0"
            count = f"{len(idx)} {'matrix is' if len(idx) == 1 else 'matrices are'}"
            parts.append(f"{count} held at {where} (unclipped ratio): {', '.join(_bound_items(allocation, idx))}.")
    parts.append(f"The other ratios are refitted so the mean stays {allocation.target:g}.")
    whole = sum(1 for i in held[allocation.ceiling] if allocation.raw[i] >= 1.0)
    if whole:
        parts.append(f"The reference code would prune the {whole} with a ratio above 1 whole.")
    return " ".join(parts)


def _hline(y: float, dash: str, name: str) -> dict:
    """A full-width horizontal line with a legend entry, as a layout shape dict (cheaper than add_hline)."""
    return dict(
        type="line", xref="paper", x0=0, x1=1, yref="y", y0=y, y1=y,
        line=dict(dash=dash, color="grey", width=1.5), name=name, showlegend=True,
    )  # fmt: skip


def _empty(title: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, height=_HEIGHT)
    return fig


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Ticks at 1, 2, 5 x 10^k (decades only when that makes more than 10) from the last one at
    or below `lo` to the first at or above `hi` (one more each side when that is a single tick),
    with plain labels ("20", "1,000"). Plotly's own log ticks label the minor ones by their digit
    ("1000, 2, 5"), and dtick=1 draws none inside a decade."""
    k0, k1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
    for mantissas in ((1, 2, 5), (1,)):
        ticks = [m * 10.0**k for k in range(k0, k1 + 1) for m in mantissas]
        first = max(i for i, t in enumerate(ticks) if t <= lo * (1 + 1e-12))
        last = min(i for i, t in enumerate(ticks) if t >= hi * (1 - 1e-12))
        if first == last:  # lo == hi on a tick: a range of zero width
            first, last = first - 1, last + 1
        ticks = ticks[first : last + 1]
        if len(ticks) <= 10:
            break
    return ticks, [f"{t:,.0f}" if t >= 1 else f"{t:g}" for t in ticks]


_MODEL_DASHES = ("dash", "dot", "dashdot", "longdash", "longdashdot")
_MODEL_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross")


def _prune_runs(frame, x: str):
    """(the plottable prune runs of `frame`, or None and why there are none)."""
    import pandas as pd

    if frame is None or len(frame) == 0:
        return None, "No runs in this view"
    kinds = frame["kind"] if "kind" in frame else pd.Series(dtype=object)
    if not (kinds == "prune").any():
        shown = ", ".join(sorted(kinds.dropna().unique())) or "none"
        return None, f"No prune runs among the {len(frame)} runs in this view (kinds: {shown})"
    runs = frame[kinds == "prune"].copy()
    if x in registry.params() and "allocation" in runs:  # only the runs of rules with that parameter
        runs = runs[runs["allocation"].map(lambda a: registry.has_param(a, x))]
    what = f"runs with an {x}" if x in registry.params() else "prune runs"
    if not {"ppl_after", x, "pruner", "allocation", "model"} <= set(runs.columns):
        return None, f"No {what} with a perplexity and {x} in this view"
    for column in ("ppl_after", "ppl_before", x):
        if column in runs:
            runs[column] = pd.to_numeric(runs[column], errors="coerce")
    runs = runs[np.isfinite(runs["ppl_after"]) & np.isfinite(runs[x]) & (runs["ppl_after"] > 0)]
    if runs.empty:
        return None, f"No {what} with a perplexity and {x} in this view"
    return runs, ""


def search_figure(trials, settings: dict | None = None) -> go.Figure:
    """An "auto" search's curve: held-out perplexity of each candidate (tune.Trial), the chosen
    one marked (the run's `settings` say which: tune.chosen_of; without them tune.choose), each
    candidate's paired gap to the lowest in standard errors in its hover. One parameter:
    against its value; several: against the candidate's number."""
    from alphaprune import tune

    chosen = None if not trials else tune.chosen_of(trials, settings) if settings else tune.choose(trials)
    names = list(trials[0].values) if trials else []
    one = len(names) == 1
    if one:  # refinements come after the grid: draw the curve in the parameter's order
        trials = sorted(trials, key=lambda t: t.values[names[0]])
    x = [t.values[names[0]] for t in trials] if one else list(range(1, len(trials) + 1))
    y = [t.heldout_ppl for t in trials]
    best = next(i for i, t in enumerate(trials) if t is chosen) if trials else None
    labels = [", ".join(f"{k} {v:g}" for k, v in t.values.items()) + _gap_words(t, trials) for t in trials]
    line = go.Scatter(x=x, y=y, mode="lines+markers", name="candidates", customdata=labels,
                      hovertemplate="%{customdata}<br>held-out perplexity %{y:.2f}<extra></extra>")  # fmt: skip
    traces = [line]
    if best is not None:
        traces.append(go.Scatter(x=[x[best]], y=[y[best]], mode="markers", name="chosen",
                                 marker=dict(size=12, symbol="star")))  # fmt: skip
    layout = dict(xaxis=dict(title=names[0] if one else "candidate"), yaxis=dict(title="held-out perplexity"),
                  height=300, margin=dict(t=30, b=40))  # fmt: skip
    return go.Figure(data=traces, layout=layout)


def _gap_words(trial, trials) -> str:
    """'<br>+0.012 nats (0.8 SE) from the lowest' where the held-out windows were kept."""
    from alphaprune import tune

    if not any(math.isfinite(t.heldout_ppl) for t in trials):
        return ""
    mean, se = tune.gap(trial, tune.lowest(trials))
    if not math.isfinite(mean) or not trial.heldout_nlls:
        return ""
    return f"<br>{mean:+.3f} nats/token ({mean / se:.1f} SE) from the lowest" if se else f"<br>{mean:+.3f} nats/token"


def runs_figure(frame, x: str = "sparsity") -> go.Figure:
    """Perplexity after pruning (log y, ticks 1-2-5) against `x` for the prune runs of `frame`
    (RunStore.frame(), filtered or not): one line per (model, pruner, allocation) sorted by x, the
    legend grouped by model, run ids in the hover; each model's dense perplexity (the median
    ppl_before of its runs) a dashed line of its own. For x="epsilon" only AlphaPruning runs.
    An empty figure's title says why it is empty."""
    runs, why = _prune_runs(frame, x)
    if runs is None:
        return _empty(why)
    fig, levels = go.Figure(), list(runs["ppl_after"])
    for m, (model, of_model) in enumerate(runs.groupby("model", sort=True)):
        group_style = dict(legendgroup=model, legendgrouptitle_text=model)
        for (pruner, allocation), group in of_model.groupby(["pruner", "allocation"], sort=True, dropna=False):
            group = group.sort_values(x)
            fig.add_trace(
                go.Scatter(
                    x=group[x], y=group["ppl_after"], customdata=group["id"], mode="lines+markers",
                    name=f"{pruner} / {allocation}", marker_symbol=_MODEL_SYMBOLS[m % len(_MODEL_SYMBOLS)],
                    hovertemplate=f"{model}<br>run %{{customdata}}<br>{x} %{{x:.3g}}<br>ppl %{{y:.4g}}"
                    "<extra>%{fullData.name}</extra>", **group_style,
                )
            )  # fmt: skip
        dense = of_model["ppl_before"] if "ppl_before" in of_model else []
        dense = [v for v in dense if np.isfinite(v) and v > 0]
        if dense:
            level = float(np.median(dense))
            levels.append(level)
            dash = _MODEL_DASHES[m % len(_MODEL_DASHES)]
            fig.add_shape({**_hline(level, dash, f"dense, ppl {level:.4g}"), **group_style})
    tickvals, ticktext = _log_ticks(min(levels), max(levels))
    fig.update_xaxes(title=x)
    fig.update_yaxes(
        title="perplexity after pruning", type="log", tickvals=tickvals, ticktext=ticktext,
        range=[math.log10(tickvals[0]), math.log10(tickvals[-1])],  # a log axis' range is in log10 units
    )  # fmt: skip
    models = runs["model"].nunique()
    scope = f"{models} models" if models > 1 else str(runs["model"].iloc[0])
    title = f"Perplexity against {x}<br><sup>{len(runs)} prune runs, {scope}</sup>"  # fits a half-width chart
    fig.update_layout(title=title, height=_HEIGHT)
    return fig


def record_ratios_figure(block_ratios, target: float | None, title: str) -> go.Figure:
    """A stored run's sparsity per block (runs.RunRecord.block_ratios), the target dashed."""
    if not block_ratios:
        return _empty("No per-block ratios in this run")
    bars = go.Bar(x=list(range(len(block_ratios))), y=list(block_ratios), name="block sparsity",
                  hovertemplate="block %{x}<br>sparsity %{y:.4f}<extra></extra>")  # fmt: skip
    fig = go.Figure(data=[bars])
    if target is not None:
        fig.add_shape(_hline(float(target), "dash", f"target {float(target):g}"))
    fig.update_layout(title=title, height=_HEIGHT, xaxis=dict(title="block"),
                      yaxis=dict(title="sparsity", range=[0, 1.02]))  # fmt: skip
    return fig


# --- teaching ------------------------------------------------------------------------------------------------------

_DEMO_DOF = 2.0  # Student-t degrees of freedom of the heavy-tailed demo matrix (infinite variance)
_DEMO_RULE = "ks"  # the textbook (Clauset) xmin rule: separates the two matrices best


def _demo_spectrum(W: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of W W^T. One BLAS thread: small matrices, and multi-threaded
    OpenBLAS took seconds instead of milliseconds on a busy 2-core machine."""
    with threadpool_limits(1, user_api="blas"):
        return np.sort(np.clip(np.linalg.eigvalsh(W @ W.T), 0.0, None))


def _demo_traces(label: str, evals: np.ndarray, shape: tuple[int, int]) -> list:
    """One demo panel: log-binned ESD, its power-law fit (alpha in the name) and the fitted MP bulk."""
    fit = fit_all(evals)[_DEMO_RULE]
    edges = _log_edges(40, evals)
    mp = mp_fit(evals, shape)
    traces = [
        _density_bars(evals, edges, f"{label} ESD", opacity=0.75),
        _power_law(fit.alpha, fit.xmin, fit.n_tail, len(evals), evals[-1], f"{label}: power law, α={fit.alpha:.2f}"),
        _mp_curve(shape, mp.sigma2, max(mp.edge_low, edges[0]), mp.edge_high, f"{label}: MP", line_color="black"),
    ]
    return [trace for trace in traces if trace is not None]


def heavy_tail_demo_figure(seed: int = 0, n: int = 400, m: int = 800) -> go.Figure:
    """Side by side, log-log ESDs of an n x m Gaussian random matrix (its Marchenko-Pastur curve
    overlaid) and of one with Student-t entries (2 degrees of freedom), each with its power-law
    fit; the fitted alphas are in the legend."""
    rng = np.random.default_rng(seed)
    gauss = rng.standard_normal((n, m)) / np.sqrt(m)
    heavy = rng.standard_t(_DEMO_DOF, (n, m))
    heavy /= np.sqrt(m) * np.median(np.abs(heavy)) / 0.6745  # same bulk scale as the Gaussian (robust sd)
    panels = {"Gaussian": _demo_spectrum(gauss), "heavy-tailed": _demo_spectrum(heavy)}
    titles = ["Gaussian entries", f"Student-t entries (ν={_DEMO_DOF:g})"]
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.08)
    for col, (label, evals) in enumerate(panels.items(), start=1):
        for trace in _demo_traces(label, evals, (n, m)):
            fig.add_trace(trace, row=1, col=col)
    fig.update_xaxes(title="eigenvalue λ", **_LOG_AXIS)
    fig.update_yaxes(**_LOG_AXIS)
    fig.update_yaxes(title="density", row=1, col=1)
    fig.update_layout(
        title=f"Random vs heavy-tailed {n}x{m} matrix (xmin by {_DEMO_RULE.upper()})",
        barmode="overlay",
        bargap=0,
        height=_HEIGHT,
    )
    return fig
