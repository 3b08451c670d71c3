"""Prune & evaluate page: prune a copy with the chosen allocation, compare it with the dense model."""

import streamlit as st

from alphaprune.analysis import analyze
from alphaprune.errors import UserError
from alphaprune.export import save_pruned
from alphaprune.generate import generate
from alphaprune.pipeline import PruneConfig, run_prune
from alphaprune.plots import before_after_figure
from alphaprune.pruners import PATTERNS, PRUNERS
from alphaprune.runs import RunStore
from alphaprune.ui.session import (
    ALLOC,
    ANALYSIS,
    GENERATIONS,
    MODEL,
    PRUNED_ANALYSIS,
    RESULT,
    require,
    save_upload,
    staged_progress,
)

st.title("Prune & evaluate")
loaded = require(MODEL, "Load a model first.")
analysis = st.session_state.get(ANALYSIS)
alloc = st.session_state[ALLOC]
SOURCES = ("python-docs", "wikitext2", "upload a text file")


def _text_source(label: str, key: str) -> str | None:
    choice = st.selectbox(label, SOURCES, key=key, help="python-docs works offline; wikitext2 needs the network")
    if choice != "upload a text file":
        return choice
    upload = st.file_uploader(f"{label} file (UTF-8)", type=["txt", "raw", "md"], key=f"{key}_file")
    return str(save_upload(upload, "texts")) if upload is not None else None


describe = f"{alloc['method']} at {alloc['sparsity']:g}"
if alloc["method"] == "alphapruning":
    describe += f", epsilon {alloc['epsilon']:g}, {alloc['metric']}, {alloc['mapping']} mapping"
st.caption(f"Allocation (set on the Allocation page): {describe}; ceiling {alloc['ceiling']:g}.")

with st.form("prune_form"):
    left, right = st.columns(2)
    pruner = left.selectbox("Pruner", PRUNERS, index=1, key="prune_pruner")
    pattern = right.selectbox("Pattern", PATTERNS, key="prune_pattern", help="N:M removes N of every M weights")
    left, right = st.columns(2)
    with left:
        calib = _text_source("Calibration text", "prune_calib")
    with right:
        evaluation = _text_source("Evaluation text", "prune_eval")
    cols = st.columns(4)
    samples = cols[0].number_input("Calibration samples", 1, 512, 16, key="prune_samples")
    seqlen = cols[1].number_input("Sequence length", 16, 8192, 256, 16, key="prune_seqlen")
    windows = cols[2].number_input("Evaluation windows", 1, 1024, 8, key="prune_windows")
    seed = cols[3].number_input("Seed", 0, 2**31 - 1, 0, key="prune_seed")
    submitted = st.form_submit_button("Prune and evaluate", type="primary")


def _config() -> PruneConfig:
    nm_sparsity = {"2:4": 0.5, "4:8": 0.5}.get(pattern)
    return PruneConfig(
        sparsity=nm_sparsity or alloc["sparsity"],
        pruner=pruner,
        allocation="uniform" if nm_sparsity else alloc["method"],
        epsilon=alloc["epsilon"],
        metric=alloc["metric"],
        mapping=alloc["mapping"],
        pattern=pattern,
        owl_m=alloc["owl_m"],
        owl_lambda=alloc["owl_lambda"],
        ceiling=alloc["ceiling"],
        calib=calib or "",
        calib_samples=int(samples),
        seqlen=int(seqlen),
        seed=int(seed),
        eval=evaluation or "",
        eval_windows=int(windows),
    )


def _run() -> None:
    if not calib or not evaluation:
        st.error("Choose or upload both texts first.")
        return
    with st.status("Pruning ...", expanded=True) as status:
        progress = staged_progress()
        try:
            result = run_prune(loaded, _config(), analysis, progress)
            progress(1.0, "spectra of the pruned model: analysing")
            pruned_analysis = analyze(result.model, f"{loaded.name} (pruned)", use_cache=False)
            run_id = RunStore().add(result.record())
        except UserError as exc:
            status.update(label="Failed", state="error")
            st.error(str(exc))
            return
        st.session_state[RESULT], st.session_state[PRUNED_ANALYSIS] = result, pruned_analysis
        st.session_state[GENERATIONS] = None
        status.update(label=f"Done in {result.seconds['total']:.0f} s (run {run_id})", state="complete")


if submitted:
    _run()

result = st.session_state.get(RESULT)
if result is None:
    st.info("Set the options and press **Prune and evaluate**. The dense model you loaded is never changed.")
    st.stop()

cols = st.columns(4)
cols[0].metric("Perplexity, dense", f"{result.ppl_before:.2f}")
cols[1].metric(
    "Perplexity, pruned", f"{result.ppl_after:.2f}", f"{result.ppl_after - result.ppl_before:+.2f}", "inverse"
)
cols[2].metric("Actual sparsity", f"{result.actual_sparsity:.4f}")
cols[3].metric("Time", f"{result.seconds['total']:.0f} s")
st.caption(
    f"{result.config.pruner}, {result.config.allocation}, {result.config.pattern}; calibration "
    f"{result.config.calib_samples} x {result.config.seqlen} tokens of {result.config.calib}; evaluation "
    f"{result.config.eval_windows} windows of {result.config.eval}."
)
pruned_analysis = st.session_state.get(PRUNED_ANALYSIS)
if analysis is not None and pruned_analysis is not None:
    st.plotly_chart(before_after_figure(analysis, pruned_analysis), key="before_after_chart", width="stretch")

st.subheader("Dense and pruned, same prompt")
prompt = st.text_input("Prompt", "The capital of France is", key="gen_prompt")
if st.button("Generate", key="gen_button"):
    with st.spinner("Generating ..."):
        try:
            st.session_state[GENERATIONS] = (
                generate(loaded.model, loaded.tokenizer, prompt),
                generate(result.model, loaded.tokenizer, prompt),
            )
        except UserError as exc:
            st.error(str(exc))
if st.session_state.get(GENERATIONS):
    left, right = st.columns(2)
    left.markdown("**Dense**")
    left.write(st.session_state[GENERATIONS][0])
    right.markdown("**Pruned**")
    right.write(st.session_state[GENERATIONS][1])

st.subheader("Save")
folder = st.text_input("Folder", "pruned-model", key="save_folder", help="Hugging Face format + ratios + recipe")
if st.button("Save the pruned model", key="save_button"):
    meta = {"model": loaded.name, "ppl_before": result.ppl_before, "ppl_after": result.ppl_after}
    meta.update(result.config.to_dict())
    try:
        path = save_pruned(
            result.model, loaded.tokenizer, folder, result.allocation.ratios, result.allocation.block_ratios, meta
        )
        st.success(f"Saved to {path}")
    except UserError as exc:
        st.error(str(exc))
