"""Model page: pick a model (bundled, hub id, folder, .gguf or an upload), load it, analyse it.

A model too large for memory (or with **Offload** disk) is analysed straight from its files,
one matrix at a time, and not loaded (alphaprune/preflight.py decides).
"""

from types import SimpleNamespace

import streamlit as st

from alphaprune.errors import UserError
from alphaprune.models import DEFAULT_MODEL
from alphaprune.report import model_summary
from alphaprune.ui.session import (
    ANALYSIS,
    FILES,
    LOAD_INFO,
    MODEL,
    MODEL_SOURCES,
    OFFLOADS,
    PLAN,
    Choice,
    adopt_model,
    analyse_files,
    analysis_plan,
    dense_fingerprint,
    failure,
    load,
    model_name,
    model_upload,
    progress_callback,
    run_analysis,
    say,
    upload_limit_mb,
)

st.title("Model")
st.caption("Load a causal language model and measure the spectrum of every weight matrix.")

KEEP = {"persist_state": "session"}  # the value survives a page switch
source = st.radio("Source", MODEL_SOURCES, key="model_source", horizontal=True, **KEEP)
spec, name, trust = DEFAULT_MODEL, None, False
if source == MODEL_SOURCES[1]:
    spec = st.text_input(
        "Model", DEFAULT_MODEL, key="model_spec", help="e.g. HuggingFaceTB/SmolLM2-135M, ./my-model, model.gguf", **KEEP
    ).strip()
    trust = st.checkbox(
        "Trust remote code",
        key="model_trust",
        help="let a hub model or folder run its own Python code (off by default)",
    )
    if trust:
        st.warning(
            "**Trust remote code** is on: loading runs the model's own Python code on this machine; "
            "turn it on only for models you trust."
        )
elif source == MODEL_SOURCES[2]:
    upload = st.file_uploader("Model file", type=["gguf", "zip"], key="model_upload")
    st.caption(
        f"Up to {upload_limit_mb()} MB (server.maxUploadSize in .streamlit/config.toml); for a larger file give "
        f"its path under **{MODEL_SOURCES[1]}**. An uploaded folder's own code is never run."
    )
    spec = None
    if upload is not None:
        try:
            spec, name = model_upload(upload)
        except UserError as exc:
            st.error(say(exc))
offload = st.radio(
    "Offload",
    tuple(OFFLOADS),
    format_func=OFFLOADS.get,
    key="model_offload",
    horizontal=True,
    help="where the model's weights live for analysis, pruning and evaluation; auto decides from free memory",
    **KEEP,
)


def _analyse_files(choice: Choice, plan, ckpt) -> str | None:
    """Analyse from the files (the plan streams): no model is loaded."""
    with st.status(f"Analysing {choice.name}: {plan.describe()} ...", expanded=True) as status:
        try:
            analysis = analyse_files(choice, plan, ckpt, progress_callback(st.progress(0.0, text="spectra")))
        except Exception as exc:
            status.update(label=f"Could not analyse {choice.name} from its files", state="error", expanded=False)
            return failure(exc, f"analysing {choice.name} from its files")
        cached = " (from cache)" if analysis.from_cache else ""
        label = f"Analysed {len(analysis.layers)} matrices from the files in {analysis.seconds_analysis:.2f} s{cached}"
        status.update(label=label, state="complete", expanded=False)
    return None


def _load_and_analyse(spec: str, name: str | None, trust: bool, offload: str) -> str | None:
    """Load and analyse, or analyse from the files when the plan streams; the one-line error
    of whatever failed, None when all went well."""
    what = name or spec
    choice = Choice(spec, what, trust, offload)
    try:
        plan, ckpt = analysis_plan(spec, offload)
    except Exception as exc:
        return failure(exc, f"planning the analysis of {what}")
    if plan is not None and plan.streamed:
        return _analyse_files(choice, plan, ckpt)
    with st.status(f"Loading {what} ...", expanded=True) as status:
        try:
            loaded, info = load(spec, trust, name, lambda msg: status.update(label=f"Loading {what}: {msg}"))
        except Exception as exc:
            status.update(label=f"Could not load {what}", state="error", expanded=False)
            return failure(exc, f"loading {what}")
        adopt_model(loaded, info, choice, plan)
        status.update(label=f"Loaded {info.how} in {info.seconds:.1f} s; computing spectra ...")
        try:
            analysis = run_analysis(loaded, progress_callback(st.progress(0.0, text="spectra")))
        except Exception as exc:
            status.update(label=f"Loaded {what}; its spectra failed", state="error", expanded=False)
            return failure(exc, "computing the spectra", "the model is loaded; press **Load and analyse** to try again")
        st.session_state[ANALYSIS] = analysis
        cached = " (from cache)" if analysis.from_cache else ""
        status.update(label=f"Analysed {len(analysis.layers)} matrices in {analysis.seconds_analysis:.2f} s{cached}")
        status.update(state="complete", expanded=False)
    return None


previous = st.session_state.get(MODEL)
if st.button("Load and analyse", key="load", type="primary", disabled=not spec):
    error = _load_and_analyse(spec, name, trust, offload)
    if error:
        st.error(error)
        if previous is not None and st.session_state.get(MODEL) is previous:
            st.warning(f"Still loaded: **{previous.name}**, the model below; {name or spec} was not loaded.")

loaded, analysis, info, files, plan = (st.session_state.get(k) for k in (MODEL, ANALYSIS, LOAD_INFO, FILES, PLAN))
if plan is not None:
    st.caption(f"Preflight: {plan.describe()}.")
if loaded is None and files is not None:  # analysed from the files: a skeleton, no weights in memory
    summary = model_summary(SimpleNamespace(model=files.skeleton()))
    st.subheader(model_name())
    cols = st.columns(4)
    cols[0].metric("Blocks", summary["blocks"])
    cols[1].metric("Parameters", f"{summary['params'] / 1e6:.1f} M")
    cols[2].metric("Prunable", f"{summary['prunable_params'] / 1e6:.1f} M")
    cols[3].metric("Weights on disk", f"{files.nbytes() / 2**20:.0f} MiB")
    st.caption(
        f"Analysed from the files, not loaded: {files.kind} in {files.dtype} at `{files.location}`. "
        f"{summary['architecture']} ({summary['model_type']}), {summary['blocks']} blocks, hidden size "
        f"{summary['hidden_size']}. Pruning and evaluation stream it block by block into a save folder."
    )
    st.dataframe(summary["kinds"], hide_index=True, key="kinds_table")
    cached = " (read from the cache)" if analysis.from_cache else ""
    st.success(f"Spectra of {len(analysis.layers)} matrices in {analysis.seconds_analysis:.2f} s{cached}.")
    st.page_link("pages/spectra.py", label="Explore the spectra", icon=":material/arrow_forward:")
    st.stop()
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
cols[4].metric("Load time", f"{info.seconds:.1f} s", help="what the last press on Load took")
st.caption(
    f"Loaded {info.how}, {info.seconds:.1f} s. {summary['architecture']} ({summary['model_type']}): "
    f"{summary['blocks']} blocks at `{summary['blocks_path']}`, hidden size {summary['hidden_size']}, "
    f"{summary['heads']} attention heads, vocabulary {summary['vocab_size']}, context {summary['context']}; "
    f"{loaded.dtype} on {loaded.device}, from {info.origin}. Pruning in memory works on a second copy; "
    "streamed (**Offload** cpu, or auto when the copy does not fit) it needs none."
)
st.caption(f"Dense weights fingerprint `{dense_fingerprint(loaded)}` (pruning works on a copy: it never changes).")
st.dataframe(summary["kinds"], hide_index=True, key="kinds_table")
if analysis is not None:
    cached = " (read from the cache)" if analysis.from_cache else ""
    st.success(f"Spectra of {len(analysis.layers)} matrices in {analysis.seconds_analysis:.2f} s{cached}.")
    st.page_link("pages/spectra.py", label="Explore the spectra", icon=":material/arrow_forward:")
