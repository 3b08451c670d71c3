"""Model & spectra page: load a model, analyse every weight matrix, explore the alphas."""

import streamlit as st

from alphaprune.errors import UserError
from alphaprune.plots import alpha_depth_figure, esd_figure
from alphaprune.report import analysis_frame
from alphaprune.ui.session import ANALYSIS, MODEL, MODEL_SPEC, cached_model, run_analysis

st.title("Layer spectra")
st.caption("Empirical spectral density of every weight matrix and its heavy-tailed power-law fit (alpha).")

spec = st.text_input("Model", key=MODEL_SPEC, help="smollm2-135m, a .gguf file, a model folder or a hub id")
if st.button("Load and analyse", key="analyse", type="primary"):
    with st.status("Loading model ...", expanded=True) as status:
        try:
            loaded = cached_model(spec)
            status.update(label=f"Loaded in {loaded.seconds_load:.1f} s; computing spectra ...")
            bar = st.progress(0.0, text="spectra")
            result = run_analysis(loaded, lambda f, msg: bar.progress(min(1.0, f), text=msg))
            st.session_state[MODEL], st.session_state[ANALYSIS] = loaded, result
            status.update(
                label=f"Analysed {len(result.layers)} matrices in {result.seconds_analysis:.2f} s", state="complete"
            )
        except UserError as exc:
            status.update(label="Failed", state="error")
            st.error(str(exc))

result = st.session_state.get(ANALYSIS)
if result is None:
    st.info("Press **Load and analyse** to start (the bundled SmolLM2-135M takes about half a minute the first time).")
    st.stop()

loaded = st.session_state[MODEL]
cols = st.columns(4)
cols[0].metric("Model", result.model)
cols[1].metric("Parameters", f"{loaded.num_params / 1e6:.1f} M")
cols[2].metric("Prunable matrices", len(result.prunable))
cols[3].metric("Analysis time", f"{result.seconds_analysis:.2f} s" + (" (cache)" if result.from_cache else ""))

metrics = [
    "alpha_peak",
    "alpha_peak_fixed",
    "alpha_mid",
    "alpha_ks",
    "alpha_hat",
    "stable_rank",
    "entropy",
    "log_norm",
    "log_spectral_norm",
    "mp_softrank",
]
metric = st.selectbox("Metric against depth", metrics, key="depth_metric")
st.plotly_chart(alpha_depth_figure(result, metric), key="depth_chart", width="stretch")

names = [layer.name for layer in result.layers]
name = st.selectbox("Matrix", names, index=1 if len(names) > 1 else 0, key="esd_matrix")
rule = st.radio("xmin rule", ["peak", "peak_fixed", "mid", "ks"], horizontal=True, key="esd_rule")
st.plotly_chart(esd_figure(result.eigenvalues[name], result.layer(name), rule), key="esd_chart", width="stretch")

frame = analysis_frame(result)
st.dataframe(frame, hide_index=True, key="metrics_table")
st.download_button("Download metrics (CSV)", frame.to_csv(index=False), "alphaprune-metrics.csv", "text/csv")
