"""Spectra page: every matrix's ESD and power-law fit, how xmin was chosen, metrics by depth."""

import numpy as np
import streamlit as st
import torch

from alphaprune.analysis import METRIC_NAMES
from alphaprune.config import PruneConfig
from alphaprune.fits import XMIN_RULES
from alphaprune.plots import (
    alpha_depth_figure,
    esd_figure,
    esd_linear_figure,
    heatmap_figure,
    xmin_scan_figure,
)
from alphaprune.report import analysis_frame
from alphaprune.rules.farms import settings_for
from alphaprune.spectra import eigenvalues
from alphaprune.tails import cached_tails
from alphaprune.ui.charts import chart
from alphaprune.ui.session import ALLOC, ANALYSIS, TAILS, matrix_weight, model_name, offer_farms, require

st.title("Spectra")
analysis = require(ANALYSIS, "Load and analyse a model first.")


@st.cache_data(show_spinner="Spectrum of a shuffled copy ...", max_entries=64)
def randomised_eigenvalues(fingerprint: str, name: str, _weight) -> np.ndarray:
    """Eigenvalues of the matrix with its entries shuffled: what 'no learned structure' looks like."""
    flat = _weight.detach().flatten()
    order = torch.randperm(len(flat), generator=torch.Generator().manual_seed(0))
    shuffled = flat[order].reshape(_weight.shape)
    return eigenvalues(shuffled, "float64", "cpu")


names = [layer.name for layer in analysis.layers]
left, right = st.columns([3, 1])
name = left.selectbox("Matrix", names, index=min(1, len(names) - 1), key="esd_matrix")
rule = right.radio("xmin rule", XMIN_RULES, horizontal=True, key="esd_rule", help="how the tail start is chosen")
layer, evals = analysis.layer(name), analysis.eigenvalues[name]
show_random = st.toggle("Compare with a randomised copy (entries shuffled)", key="esd_random")
random_evals = None
if show_random:
    weight = matrix_weight(name)  # from the loaded model, or read from the files
    random_evals = randomised_eigenvalues(analysis.fingerprint or model_name(), name, weight)

alpha, xmin = getattr(layer, f"alpha_{rule}"), getattr(layer, f"xmin_{rule}")
cols = st.columns(5)
cols[0].metric("alpha", f"{alpha:.3f}")
cols[1].metric("xmin", f"{xmin:.4g}")
cols[2].metric("KS distance D", f"{getattr(layer, f'D_{rule}'):.4f}")
cols[3].metric("tail size", getattr(layer, f"n_tail_{rule}"))
cols[4].metric("spikes beyond MP edge", layer.mp_num_spikes)
if alpha > 8:
    st.warning("alpha > 8: such fits are usually spurious (a near-random spectrum).")
elif 0 < alpha < 2:
    st.warning("alpha < 2: a very heavy tail, often a sign of over-training.")

if st.button("Is the tail a power law?", key="tail_test", help="likelihood-ratio tests (powerlaw), seconds"):
    with st.spinner("Fitting the alternatives ..."):
        test = cached_tails(analysis, name, rule)
    st.session_state[TAILS] = (name, rule, test)
tested = st.session_state.get(TAILS)
if tested is not None and tested[:2] == (name, rule):
    test = tested[2]
    st.info(f"**{test.verdict}** (alpha {test.alpha:.3f} over {test.n_tail} eigenvalues from xmin {test.xmin:.4g}).")
    st.caption("; ".join(c.words for c in test.comparisons.values()) + ".")

tab_log, tab_lin, tab_scan = st.tabs(["ESD (log-log)", "ESD (linear)", "KS distance and alpha vs xmin"])
with tab_log:
    chart(st, esd_figure(evals, layer, rule, random_evals=random_evals), key="esd_chart", name="esd")
with tab_lin:
    chart(st, esd_linear_figure(evals, layer, rule), key="esd_linear_chart", name="esd_linear")
with tab_scan:
    chart(st, xmin_scan_figure(evals, layer, rule), key="xmin_chart", name="xmin_scan")

st.subheader("Across the model")
metrics = [m for m in METRIC_NAMES if not m.startswith(("xmin", "D_", "mp_edge", "mp_sigma"))]
metric = st.selectbox("Metric", metrics, index=metrics.index("alpha_peak"), key="depth_metric")
if metric == "alpha_farms" and analysis.farms is None:  # opt-in: not part of the first analysis
    wanted = settings_for(PruneConfig.from_parts(st.session_state[ALLOC]))  # the Allocation page's, if FARMS
    offer_farms(wanted, "alpha_farms is not computed yet", key="spectra_farms_compute")
left, right = st.columns(2)
chart(left, alpha_depth_figure(analysis, metric), key="depth_chart", name="alpha_by_depth")
chart(right, heatmap_figure(analysis, metric), key="heatmap_chart", name="alpha_heatmap")

frame = analysis_frame(analysis)
st.dataframe(frame, hide_index=True, key="metrics_table")
st.download_button(
    "Download metrics (CSV)", frame.to_csv(index=False), "alphaprune-metrics.csv", "text/csv", key="metrics_csv"
)
