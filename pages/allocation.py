"""Allocation page: tune target sparsity and the allocation range, see the ratios live (per block,
or per matrix for the mapping "matrix"), and which matrices the ceiling holds back.

    streamlit run app.py   # then open "Allocation" (a model must be loaded and analysed first)
"""

import json

import streamlit as st

from alphaprune import allocation as alloc
from alphaprune.analysis import METRIC_NAMES
from alphaprune.errors import UserError
from alphaprune.export import llmcompressor_recipe
from alphaprune.pipeline import PruneConfig, cached_outliers, make_allocation
from alphaprune.plots import allocation_figure, clipping_note, per_matrix
from alphaprune.text import calibration_windows, token_ids
from alphaprune.ui.session import (
    ALLOC,
    ANALYSIS,
    MODEL,
    OUTLIERS,
    model_layout,
    model_name,
    progress_callback,
    require,
)

st.title("Allocation")
st.caption("Layer-wise sparsity from the spectra: higher alpha (less trained) -> more sparsity.")
analysis = require(ANALYSIS, "Load and analyse a model first: the allocation is computed from its spectra.")
loaded = st.session_state[MODEL]  # None when the model was analysed from its files
settings = st.session_state[ALLOC]
METHODS = ("uniform", "alphapruning", "owl")

left, mid, right = st.columns(3)
method = left.selectbox("Method", METHODS, index=METHODS.index(settings["method"]), key="alloc_method")
sparsity = mid.slider("Target sparsity", 0.05, 0.95, settings["sparsity"], 0.01, key="alloc_sparsity")
ceiling = right.number_input(
    "Ceiling per matrix", 0.5, 1.0, settings["ceiling"], 0.01, key="alloc_ceiling", help="no ratio goes above this"
)
epsilon, metric, mapping = settings["epsilon"], settings["metric"], settings["mapping"]
owl_m, owl_lambda = settings["owl_m"], settings["owl_lambda"]
if method == "alphapruning":
    left, mid, right = st.columns(3)
    epsilon = left.slider("Allocation range epsilon", 0.0, 1.0, epsilon, 0.01, key="alloc_epsilon")
    metric = mid.selectbox("Metric", METRIC_NAMES, index=METRIC_NAMES.index(metric), key="alloc_metric")
    mapping = right.radio("Mapping", alloc.MAPPINGS, index=alloc.MAPPINGS.index(mapping), key="alloc_mapping")
elif method == "owl":
    left, right = st.columns(2)
    owl_m = left.slider("Outlier threshold M", 1.0, 15.0, owl_m, 0.5, key="alloc_owl_m")
    owl_lambda = right.slider("Spread lambda", 0.0, 0.3, owl_lambda, 0.01, key="alloc_owl_lambda")
settings.update(method=method, sparsity=sparsity, ceiling=ceiling, epsilon=epsilon, metric=metric, mapping=mapping)
settings.update(owl_m=owl_m, owl_lambda=owl_lambda)

outliers = st.session_state.get(OUTLIERS)
if method == "owl" and loaded is None:
    st.info(
        "OWL's outlier ratios need calibration passes through the model, which is not loaded (it was analysed "
        "from its files): a streamed run on **Prune & evaluate** measures them block by block."
    )
    st.stop()
if method == "owl" and (outliers is None or outliers[0] != owl_m):
    st.info("OWL needs the outlier ratios of every block, from calibration text (python-docs, 16 x 512 tokens).")
    if st.button("Compute outlier ratios", key="owl_compute"):
        bar = st.progress(0.0, text="calibration")
        try:
            seqlen = min(512, getattr(loaded.model.config, "max_position_embeddings", 512))
            windows = calibration_windows(token_ids("python-docs", loaded.tokenizer), 16, seqlen, 0)
            ratios = cached_outliers(loaded.model, windows, owl_m, progress_callback(bar))
        except UserError as exc:
            st.error(exc.render("app"))
            st.stop()
        st.session_state[OUTLIERS] = outliers = (owl_m, ratios)
        st.rerun()
    st.stop()

config = PruneConfig(
    sparsity=sparsity,
    allocation=method,
    epsilon=epsilon,
    metric=metric,
    mapping=mapping,
    ceiling=ceiling,
    owl_m=owl_m,
    owl_lambda=owl_lambda,
)
try:
    allocation = make_allocation(
        model_layout(), config, analysis, outliers=outliers[1] if method == "owl" else None, name=model_name()
    )
except UserError as exc:
    st.error(exc.render("app"))
    st.stop()

unit, ratios = ("matrix", allocation.sparsities) if per_matrix(allocation) else ("block", allocation.block_ratios)
cols = st.columns(4)
cols[0].metric("Weighted mean", f"{allocation.mean:.4f}")
cols[1].metric(f"Lowest {unit}", f"{min(ratios):.3f}")
cols[2].metric(f"Highest {unit}", f"{max(ratios):.3f}")
cols[3].metric("Matrices held at a bound", len(allocation.clipped))
if allocation.clipped:
    st.warning(clipping_note(allocation))
st.plotly_chart(allocation_figure(allocation, sparsity), key="allocation_chart", width="stretch")

rows = [
    {"matrix": n, "block": b, "params": p, "sparsity": s, "unclipped": r}
    for n, b, p, s, r in zip(
        allocation.names, allocation.blocks, allocation.params, allocation.sparsities, allocation.raw, strict=True
    )
]
with st.expander("Ratios per matrix"):
    st.dataframe(rows, hide_index=True, key="ratios_table")
left, mid, right = st.columns(3)
left.download_button("Ratios (JSON)", json.dumps(allocation.to_dict(), indent=1), "ratios.json", key="dl_json")
csv = "matrix,block,params,sparsity,unclipped\n" + "".join(
    f"{r['matrix']},{r['block']},{r['params']},{r['sparsity']:.6f},{r['unclipped']:.6f}\n" for r in rows
)
mid.download_button("Ratios (CSV)", csv, "ratios.csv", "text/csv", key="dl_csv")
right.download_button(
    "llm-compressor recipe", llmcompressor_recipe(allocation.ratios, "wanda"), "recipe.yaml", key="dl_recipe"
)
st.page_link("pages/prune.py", label="Prune with this allocation", icon=":material/arrow_forward:")
