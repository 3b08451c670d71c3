"""Plotly figures of an analysis (no Streamlit here: the app and notebooks share them).

fig = alpha_depth_figure(result, metric="alpha_peak")   # metric against block, per kind
fig = esd_figure(evals, layer)                          # log-log ESD + power-law fit
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from alphaprune.analysis import Analysis, LayerMetrics
from alphaprune.metrics import mp_density


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
    fig.update_layout(xaxis_title="block", yaxis_title=metric, legend_title="matrix", height=420)
    return fig


def _log_bins(evals: np.ndarray, bins: int) -> np.ndarray:
    positive = evals[evals > 0]
    return np.logspace(np.log10(positive.min()), np.log10(positive.max()), bins + 1)


def esd_figure(evals: np.ndarray, layer: LayerMetrics, rule: str = "peak", bins: int = 60) -> go.Figure:
    """ESD as a log-binned density on log-log axes, the power-law fit over the tail, xmin
    marked, and the Marchenko-Pastur density of a random matrix of the same shape."""
    edges = _log_bins(evals, bins)
    counts, _ = np.histogram(evals, bins=edges)
    density = counts / (len(evals) * np.diff(edges))  # (bins,) probability density
    centers = np.sqrt(edges[:-1] * edges[1:])
    keep = density > 0
    fig = go.Figure(go.Scatter(x=centers[keep], y=density[keep], mode="markers", name="ESD"))
    alpha, xmin = getattr(layer, f"alpha_{rule}"), getattr(layer, f"xmin_{rule}")
    tail = evals[evals >= xmin]
    if len(tail) > 1 and alpha > 1:
        x = np.logspace(np.log10(xmin), np.log10(tail.max()), 50)
        share = len(tail) / len(evals)  # the fit describes this share of the eigenvalues
        y = share * (alpha - 1) / xmin * (x / xmin) ** (-alpha)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"power law, alpha={alpha:.2f}"))
        fig.add_vline(x=xmin, line_dash="dash", annotation_text="xmin")
    mp_x = np.linspace(max(layer.mp_edge_low, edges[0]), layer.mp_edge_high, 200)[1:-1]
    mp_y = mp_density(mp_x, layer.shape, layer.mp_sigma2)
    if np.any(mp_y > 0):
        fig.add_trace(go.Scatter(x=mp_x, y=mp_y, mode="lines", name="Marchenko-Pastur bulk", line_dash="dot"))
    fig.update_xaxes(type="log", title="eigenvalue")
    fig.update_yaxes(type="log", title="density")
    fig.update_layout(title=layer.name, height=420)
    return fig
