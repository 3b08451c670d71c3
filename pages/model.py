"""Model page: pick a model (bundled, hub id, folder, .gguf or an upload), load it, analyse it."""

import streamlit as st

from alphaprune.errors import UserError
from alphaprune.models import DEFAULT_MODEL
from alphaprune.report import model_summary
from alphaprune.ui.session import (
    ANALYSIS,
    MODEL,
    MODEL_SPEC,
    OUTLIERS,
    PRUNED_ANALYSIS,
    RESULT,
    cached_model,
    progress_callback,
    run_analysis,
    unpack_model_upload,
)

st.title("Model")
st.caption("Load a causal language model and measure the spectrum of every weight matrix.")

source = st.radio(
    "Source",
    ["Bundled SmolLM2-135M", "Hub id, folder or .gguf path", "Upload (.gguf or .zip of a model folder)"],
    key="model_source",
    horizontal=True,
)
spec = DEFAULT_MODEL
if source.startswith("Hub"):
    spec = st.text_input("Model", key=MODEL_SPEC, help="e.g. HuggingFaceTB/SmolLM2-135M, ./my-model, model.gguf")
elif source.startswith("Upload"):
    upload = st.file_uploader("Model file", type=["gguf", "zip"], key="model_upload")
    spec = None
    if upload is not None:
        try:
            spec = unpack_model_upload(upload)
        except UserError as exc:
            st.error(str(exc))


def _load_and_analyse(spec: str) -> None:
    with st.status(f"Loading {spec} ...", expanded=True) as status:
        try:
            loaded = cached_model(spec)
            status.update(label=f"Loaded in {loaded.seconds_load:.1f} s; computing spectra ...")
            bar = st.progress(0.0, text="spectra")
            result = run_analysis(loaded, progress_callback(bar))
        except UserError as exc:
            status.update(label="Failed", state="error")
            st.error(str(exc))
            return
        if st.session_state.get(MODEL) is not loaded:  # a new model: results of the old one go
            for key in (OUTLIERS, RESULT, PRUNED_ANALYSIS):
                st.session_state[key] = None
        st.session_state[MODEL], st.session_state[ANALYSIS] = loaded, result
        cached = " (from cache)" if result.from_cache else ""
        status.update(label=f"Analysed {len(result.layers)} matrices in {result.seconds_analysis:.2f} s{cached}")
        status.update(state="complete")


if st.button("Load and analyse", key="load", type="primary", disabled=not spec):
    _load_and_analyse(spec)

loaded, analysis = st.session_state.get(MODEL), st.session_state.get(ANALYSIS)
if loaded is None:
    st.info("Press **Load and analyse**. The bundled SmolLM2-135M takes ~30 s the very first time, ~3 s after.")
    st.stop()

summary = model_summary(loaded)
st.subheader(loaded.name)
cols = st.columns(5)
cols[0].metric("Blocks", summary["blocks"])
cols[1].metric("Parameters", f"{summary['params'] / 1e6:.1f} M")
cols[2].metric("Prunable", f"{summary['prunable_params'] / 1e6:.1f} M")
cols[3].metric("Weights in memory", f"{summary['memory_bytes'] / 2**20:.0f} MiB")
cols[4].metric("Load time", f"{loaded.seconds_load:.1f} s" + (" (cache)" if loaded.from_cache else ""))
st.caption(
    f"{summary['architecture']} ({summary['model_type']}): {summary['blocks']} blocks at `{summary['blocks_path']}`, "
    f"hidden size {summary['hidden_size']}, {summary['heads']} attention heads, vocabulary {summary['vocab_size']}, "
    f"context {summary['context']}; {loaded.dtype} on {loaded.device}, from {loaded.source} `{loaded.location}`. "
    "Pruning holds a second copy of the weights."
)
st.dataframe(summary["kinds"], hide_index=True, key="kinds_table")
if analysis is not None:
    cached = " (read from the cache)" if analysis.from_cache else ""
    st.success(f"Spectra of {len(analysis.layers)} matrices in {analysis.seconds_analysis:.2f} s{cached}.")
    st.page_link("pages/spectra.py", label="Explore the spectra", icon=":material/arrow_forward:")
