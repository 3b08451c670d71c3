"""Prune & evaluate page: prune a copy with the chosen allocation, compare it with the dense model.

When the preflight's plan streams (the Model page's **Offload**, or a model too large for
memory), the run goes block by block through alphaprune/offload.py into a save folder the
user names, and the pruned folder's perplexity is measured streamed too: no copy in memory.
"""

import dataclasses
from pathlib import Path

import streamlit as st

from alphaprune import registry, zeroshot
from alphaprune.config import DataSettings, PrunerSettings
from alphaprune.errors import UserError
from alphaprune.export import save_result
from alphaprune.generate import generate
from alphaprune.patterns import PATTERNS
from alphaprune.pipeline import PruneConfig, run_prune
from alphaprune.plots import before_after_figure, compare_figure, search_figure
from alphaprune.preflight import WHERE
from alphaprune.ui.charts import chart
from alphaprune.ui.session import (
    ACCURACY,
    ALLOC,
    ANALYSIS,
    COMPARE,
    DATA,
    FILES,
    GENERATIONS,
    MODEL,
    PRUNED_ANALYSIS,
    PRUNER,
    RESULT,
    RUN_ID,
    TEXT_SOURCES,
    accuracy_rows,
    allocation_words,
    check_stream_folder,
    compare_rules,
    failure,
    keep_result,
    measure_accuracy,
    model_name,
    nm_override,
    progress_callback,
    prune_config,
    prune_plan,
    prune_streamed,
    pruned_spectra,
    require,
    say,
    shown,
    staged_progress,
    text_upload,
    upload_limit_mb,
)
from alphaprune.ui.widgets import param_widgets

st.title("Prune & evaluate")
loaded = st.session_state.get(MODEL)  # None when the model was analysed from its files
if loaded is None:
    require(FILES, "Load a model first.")
analysis = st.session_state.get(ANALYSIS)
alloc = st.session_state[ALLOC]
KEEP = {"persist_state": "session"}  # the value survives a page switch


def _text_source(label: str, key: str) -> str | None:
    """A text source: a named one, a file path or an upload (the last upload is remembered)."""
    choice = st.selectbox(
        label, TEXT_SOURCES, key=key, help="python-docs works offline; wikitext2 needs the network", **KEEP
    )
    if choice == TEXT_SOURCES[2]:
        return st.text_input(f"{label} path", key=f"{key}_path", placeholder="path/to/text.txt", **KEEP).strip() or None
    if choice != TEXT_SOURCES[3]:
        return choice
    upload = st.file_uploader(f"{label} file (UTF-8)", type=["txt", "raw", "md"], key=f"{key}_file")
    st.caption(f"Up to {upload_limit_mb()} MB; for a larger file choose **{TEXT_SOURCES[2]}**.")
    if upload is not None:
        try:
            st.session_state[f"{key}_upload"] = text_upload(upload)
        except UserError as exc:
            st.error(say(exc))
            return None
    path = st.session_state.get(f"{key}_upload")
    if upload is None and path:
        st.caption(f"Using {shown(path)}; upload another file to replace it.")
    return path


left, right = st.columns(2)
PRUNERS = list(registry.pruners())
pruner = left.selectbox(
    "Pruner", PRUNERS, index=PRUNERS.index(PruneConfig.pruner), key="prune_pruner",
    help="; ".join(f"{name}: {spec.summary}" for name, spec in registry.pruners().items()), **KEEP,
)  # fmt: skip
pattern = right.selectbox("Pattern", PATTERNS, key="prune_pattern", help="N:M removes N of every M weights", **KEEP)
override = nm_override(alloc, pattern)
if override:
    words = allocation_words(alloc)
    st.caption(f"Allocation: {registry.BASELINE}, pattern {pattern} (not the Allocation page's {words}).")
    st.warning(override)
else:
    st.caption(f"Allocation (set on the Allocation page): {allocation_words(alloc)}.")
last = dict(st.session_state[PRUNER].params)  # the pruner parameters of the last run or plan
pruner_params = param_widgets(registry.pruner(pruner).params, last, "prune_")
REFINERS = [registry.NO_REFINER, *registry.refiners()]
refine = st.selectbox(
    "Refine the mask", REFINERS, key="prune_refine", **KEEP,
    help="; ".join(f"{name}: {spec.summary}" for name, spec in registry.refiners().items()),
)  # fmt: skip
if refine != registry.NO_REFINER:
    pruner_params |= param_widgets(registry.refiner(refine).params, last, "prune_")
left, right = st.columns(2)
with left:
    calib = _text_source("Calibration text", "prune_calib")
with right:
    evaluation = _text_source("Evaluation text", "prune_eval")
cols = st.columns(4)
shown_data = st.session_state[DATA]  # the last run's or plan's DataSettings (at first the app's defaults)
samples = cols[0].number_input("Calibration samples", 1, 512, shown_data.calib_samples, key="prune_samples", **KEEP)
seqlen = cols[1].number_input("Sequence length", 16, 8192, shown_data.seqlen, 16, key="prune_seqlen", **KEEP)
windows = cols[2].number_input("Evaluation windows", 1, 1024, shown_data.eval_windows or 1, key="prune_windows", **KEEP)
seed = cols[3].number_input("Seed", 0, 2**31 - 1, shown_data.seed, key="prune_seed", **KEEP)
searched = PruneConfig.from_parts(alloc).auto_params()
if searched:
    budget = st.number_input(
        "Search budget (prune runs)", 1, 50, alloc.search_budget, key="prune_budget", **KEEP,
        help=f"{', '.join(searched)} auto: at most this many candidate prunes, scored on held-out text",
    )  # fmt: skip
    alloc = dataclasses.replace(alloc, search_budget=int(budget))


def _config():
    """The run the widgets describe, from its three frozen parts (alphaprune/config.py)."""
    pruner_part = PrunerSettings(pruner, pattern, refine, tuple(sorted(pruner_params.items())))
    data = DataSettings(calib or "", int(samples), int(seqlen), int(seed), evaluation or "", int(windows))
    return prune_config(alloc, pruner_part, data)


def _plan():
    """(plan, checkpoint, the one-line reason it cannot run or None)."""
    try:
        plan, ckpt = prune_plan(_config())
    except Exception as exc:
        return None, None, failure(exc, "planning the run")
    if loaded is None and (plan is None or not plan.streamed):
        why = "pruning in memory needs the model loaded, and it was analysed from its files"
        return plan, ckpt, f"{why}: choose **Offload** disk or cpu on the Model page (or load it there with none)"
    return plan, ckpt, None


plan, ckpt, refused = _plan()
streamed = plan is not None and plan.streamed
if plan is not None:
    st.caption(f"Preflight: {plan.describe()}.")
if refused:
    st.error(refused)
stream_folder = None
if streamed:
    stream_folder = st.text_input(
        "Save folder", key="stream_save", placeholder="pruned-model",
        help="a streamed run writes the pruned model here block by block, then measures it from there", **KEEP,
    ).strip()  # fmt: skip
    st.caption(f"Required for a streamed run; a relative folder is relative to `{Path.cwd()}`.")
submitted = st.button("Prune and evaluate", key="prune_button", type="primary", disabled=bool(refused))


def _spectra_of_pruned(result, run_id) -> str | None:
    """The optional before/after spectra; the one-line error if they fail (the run stays)."""
    try:
        pruned_spectra(result, model_name())
    except Exception as exc:
        kept = f"the perplexities are kept (run {run_id})" if run_id else "the perplexities are kept"
        return failure(
            exc, "measuring the spectra of the pruned model", f"{kept}; press **Measure the spectra** to retry"
        )
    return None


def _run() -> list[str]:
    """Prune, keep the result, store it, then the optional steps; the errors of what failed."""
    with st.status("Pruning ...", expanded=True) as status:
        try:
            result = _prune()
        except Exception as exc:
            status.update(label="Pruning failed; no run was stored", state="error", expanded=False)
            return [failure(exc, "pruning")]
        errors, run_id = [], None
        try:
            run_id = keep_result(result)
        except Exception as exc:
            errors.append(failure(exc, "storing the run", "the result below is kept in this session only"))
        if analysis is not None:
            status.update(label="Measured; spectra of the pruned model ...")
            error = _spectra_of_pruned(result, run_id)
            errors += [error] if error else []
        stored = f"run {run_id}" if run_id else "not stored"
        state = "error" if errors else "complete"
        status.update(label=f"Done in {result.seconds['total']:.0f} s ({stored})", state=state, expanded=False)
    return errors


def _prune():
    """The run along the plan's path; the result says which (its offload)."""
    if streamed:
        folder = check_stream_folder(stream_folder)  # before any work
        return prune_streamed(_config(), plan, ckpt, folder, staged_progress())
    result = run_prune(loaded, _config(), analysis, staged_progress())
    return dataclasses.replace(result, offload=plan.to_dict()) if plan is not None else result


previous = st.session_state.get(RESULT)
if submitted:
    if not calib or not evaluation:
        st.error("A text is missing: choose a source, or give a path or an upload, for both texts.")
    else:
        for message in _run():
            st.error(message)
        if previous is not None and st.session_state.get(RESULT) is previous:
            st.warning(
                f"The result below is from the previous run (run {st.session_state.get(RUN_ID)}), not these settings."
            )

with st.expander("Compare allocation rules"):
    st.caption(
        "One run per rule with this pruner and these texts, stored in the run history and shown side by side; "
        "pressing again with the same settings runs only the rules not measured yet."
    )
    names = [n for n, r in registry.rules().items() if not r.sets_target]
    default = [n for n in dict.fromkeys([registry.BASELINE, alloc.allocation]) if n in names]  # not a list
    chosen = st.multiselect("Rules", names, default=default, key="compare_rules", **KEEP)
    if st.button("Compare", key="compare_button", disabled=loaded is None or streamed or not chosen):
        bar = st.progress(0.0, text="compare")
        try:
            rows, cid = compare_rules(loaded, _config(), chosen, analysis, progress_callback(bar))
            st.session_state[COMPARE] = (cid, rows)
        except Exception as exc:
            st.error(failure(exc, "comparing the rules", "the runs finished before are stored"))
    if loaded is None or streamed:
        st.caption("Comparing runs in memory: load the model on the Model page (Offload none) to use it.")
    shown_rows = st.session_state.get(COMPARE)
    if shown_rows:
        columns = [c for c in shown_rows[1][0] if c != "block_ratios"]  # those are drawn below
        st.dataframe([{c: row[c] for c in columns} for row in shown_rows[1]], hide_index=True, key="compare_table")
        chart(st, compare_figure(shown_rows[1]), key="compare_chart", name="compare")
        st.caption(f"Stored as `{shown_rows[0]}` (alphaprune runs --sweep {shown_rows[0]}).")

result = st.session_state.get(RESULT)
if result is None:
    st.info("Set the options and press **Prune and evaluate**. The dense model you loaded is never changed.")
    st.stop()

run_id = st.session_state.get(RUN_ID)
st.subheader(f"Run {run_id}" if run_id else "Result (not stored)")
cols = st.columns(4)
cols[0].metric("Perplexity, dense", f"{result.ppl_before:.2f}")
cols[1].metric(
    "Perplexity, pruned", f"{result.ppl_after:.2f}", f"{result.ppl_after - result.ppl_before:+.2f}", "inverse"
)
cols[2].metric("Actual sparsity", f"{result.actual_sparsity:.4f}")
cols[3].metric("Time", f"{result.seconds['total']:.0f} s")
config = result.config
ran = WHERE[(result.offload or {}).get("offload", "none")]
measured = result.windows_measured or config.eval_windows
fewer = f" (the text holds no more of the {config.eval_windows} asked for)" if measured < config.eval_windows else ""
st.caption(
    f"{config.pruner}, {config.allocation} at {result.allocation.target:.4g}, {config.pattern}; calibration "
    f"{config.calib_samples} x {config.seqlen} tokens of {shown(config.calib)}; evaluation "
    f"{measured} windows{fewer} of {config.seqlen} tokens of {shown(config.eval)}. Ran {ran}."
)
if result.search:
    st.markdown("**The search** (held-out calibration text; the evaluation text was not read)")
    chart(st, search_figure(result.search, result.config.to_dict()), key="search_chart", name="search")
pruned_analysis = st.session_state.get(PRUNED_ANALYSIS)
if analysis is not None and pruned_analysis is not None:
    chart(st, before_after_figure(analysis, pruned_analysis), key="before_after_chart", name="alpha_before_after")
elif analysis is not None and st.button("Measure the spectra", key="pruned_spectra_button"):
    error = _spectra_of_pruned(result, run_id)
    if error:
        st.error(error)
    else:
        st.rerun()

if result.model is not None and loaded is not None:
    with st.expander("Zero-shot accuracy (lm-evaluation-harness)", expanded=bool(st.session_state.get(ACCURACY))):
        left, mid, right = st.columns([2, 2, 1])
        tasks = left.text_input("Tasks", zeroshot.DEFAULT_TASKS, key="zs_tasks", help=zeroshot.TASKS_HELP)
        tasks_path = mid.text_input("Local task folder (optional)", "", key="zs_path", help=zeroshot.PATH_HELP)
        limit = right.number_input("Samples per task", 1, None, None, key="zs_limit", placeholder="all",
                                   help=zeroshot.LIMIT_HELP)  # fmt: skip
        if st.button("Measure accuracy, dense and pruned", key="zs_button"):
            with st.spinner("lm-eval on the dense and the pruned model ..."):
                try:
                    measure_accuracy(loaded, result, tasks, limit and int(limit), tasks_path.strip())
                except Exception as exc:
                    st.error(failure(exc, "measuring zero-shot accuracy", "the run and its perplexities are kept"))
        if st.session_state.get(ACCURACY):
            st.dataframe(accuracy_rows(st.session_state[ACCURACY]), hide_index=True, key="zs_table")

if result.model is None or loaded is None:  # streamed: neither model is in memory
    st.info(
        f"The pruned model is in `{result.saved}` (the run was {ran}): load that folder on the Model page "
        "to generate with it."
    )
    st.stop()

st.subheader("Dense and pruned, same prompt")
prompt = st.text_input("Prompt", "The capital of France is", key="gen_prompt", **KEEP)
if st.button("Generate", key="gen_button"):
    with st.spinner("Generating ..."):
        try:
            st.session_state[GENERATIONS] = (
                generate(loaded.model, loaded.tokenizer, prompt),
                generate(result.model, loaded.tokenizer, prompt),
            )
        except Exception as exc:
            st.error(failure(exc, "generating"))
if st.session_state.get(GENERATIONS):
    left, right = st.columns(2)
    left.markdown("**Dense**")
    left.write(st.session_state[GENERATIONS][0])
    right.markdown("**Pruned**")
    right.write(st.session_state[GENERATIONS][1])

st.subheader("Save")
folder = st.text_input(
    "Folder", "pruned-model", key="save_folder", help="Hugging Face format + ratios + recipe", **KEEP
)
st.caption(f"Writes to `{Path(folder).expanduser().resolve()}` (a relative folder is relative to `{Path.cwd()}`).")
if st.button("Save the pruned model", key="save_button"):
    try:  # the run's own settings, not the widgets' current ones
        path = save_result(result, loaded.tokenizer, folder)
        st.success(f"Saved to `{path}`")
    except Exception as exc:
        st.error(failure(exc, "saving"))
