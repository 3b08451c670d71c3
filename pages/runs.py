"""Runs page: the stored history of pruning runs; filter, compare (per model), delete (after a
confirmation), export.

    streamlit run app.py   # then open "Runs"; the same history as `alphaprune runs`
"""

import json

import streamlit as st

from alphaprune import registry
from alphaprune.errors import UserError
from alphaprune.html_report import run_report
from alphaprune.plots import runs_figure
from alphaprune.runs import RunStore
from alphaprune.sweep import progress_of
from alphaprune.ui.charts import chart

DELETE_IDS, CONFIRM = "runs_delete_ids", "runs_delete_confirm"
SWEEP_REFRESH_S = 5  # how often the sweeps' progress is re-read


def delete_runs(store: RunStore, ids: list[int]) -> None:
    """The Delete button's callback: runs before the rerun, so it may reset the widgets it read."""
    if not st.session_state.get(CONFIRM):  # never without the tick, whatever sent the click
        return
    try:
        deleted = store.delete(ids)
    except UserError as exc:
        st.error(exc.render("app"))
        return
    st.session_state[DELETE_IDS], st.session_state[CONFIRM] = [], False
    st.toast(f"Deleted {deleted} run{'s' if deleted != 1 else ''}")


@st.fragment(run_every=SWEEP_REFRESH_S)
def sweep_progress() -> None:
    """The unfinished sweeps' progress, re-read every few seconds while their cells land."""
    try:
        unfinished = [s for s in progress_of(RunStore().list(kind="prune")) if s["stored"] < s["cells"]]
    except UserError:
        return  # the page below says what is wrong with the store
    for s in unfinished[:3]:
        st.progress(s["stored"] / s["cells"], text=f"sweep {s['sweep']}: {s['stored']} of {s['cells']} cells stored")


st.title("Runs")
st.caption("Every prune and eval run, from this app and from the CLI, kept in one SQLite file.")
sweep_progress()  # before the store is read below: shown even while it is still empty
try:
    store = RunStore()
    frame = store.frame()
except UserError as exc:
    st.error(exc.render("app"))
    st.stop()
if frame.empty:
    st.info("No runs yet: prune a model on the Prune & evaluate page (or run `alphaprune prune`).")
    st.stop()
if {"epsilon", "allocation"} <= set(frame.columns):  # only AlphaPruning has one (older records stored the default)
    frame["epsilon"] = frame["epsilon"].where(frame["allocation"].map(lambda a: registry.has_param(a, "epsilon")))

left, mid, right = st.columns(3)
models = left.multiselect("Model", sorted(frame["model"].unique()), key="runs_models")
kind_options = sorted(frame["kind"].unique())
default_kinds = ["prune"] if "prune" in kind_options else []
kinds = mid.multiselect("Kind", kind_options, default=default_kinds, key="runs_kinds")
pruners = sorted(frame["pruner"].dropna().unique()) if "pruner" in frame else []
chosen = right.multiselect("Pruner", pruners, key="runs_pruners")
view = frame
if models:
    view = view[view["model"].isin(models)]
if kinds:
    view = view[view["kind"].isin(kinds)]
if chosen:
    view = view[view["pruner"].isin(chosen)]

left, right = st.columns(2)
chart(left, runs_figure(view, "sparsity"), key="runs_sparsity_chart", name="runs_by_sparsity")
if "epsilon" in view and view["epsilon"].notna().any():
    chart(right, runs_figure(view, "epsilon"), key="runs_eps_chart", name="runs_by_epsilon")
wanted = ["id", "created", "kind", "model", "pruner", "allocation", "rule_settings", "sparsity", "pattern"]
wanted += ["ppl_before", "ppl_after", "actual_sparsity", "offload", "seconds_total"]  # offload: the path that ran
wanted += [c for c in view.columns if c.endswith((" before", " after"))]  # zero-shot accuracy, dense and pruned
st.dataframe(view[[c for c in wanted if c in view.columns]], hide_index=True, key="runs_table")

left, mid, right = st.columns([2, 1, 1])
doomed = left.multiselect("Delete runs", view["id"].tolist(), key=DELETE_IDS)
confirmed = bool(doomed) and mid.checkbox(
    f"Yes, delete {len(doomed)} run{'s' if len(doomed) != 1 else ''} for good", key=CONFIRM
)
clicked = mid.button(
    "Delete", key="runs_delete", disabled=not doomed, on_click=delete_runs, args=(store, [int(i) for i in doomed])
)
if clicked and not confirmed:
    mid.warning("Nothing deleted: tick the box above to confirm.")
ids = set(view["id"].tolist())
records = [r.to_dict() for r in store.list() if r.id in ids]
right.download_button("Export JSON", json.dumps(records, indent=1), "runs.json", key="runs_json")
right.download_button("Export CSV", view.to_csv(index=False), "runs.csv", "text/csv", key="runs_csv")

left, right = st.columns([2, 1])
report_id = left.selectbox("One-page HTML report of run", view["id"].tolist(), key="runs_report_id")
if report_id is not None:
    right.download_button(
        "HTML report", lambda: run_report(store.get(int(report_id))), f"run-{report_id}.html", "text/html",
        key="runs_report", on_click="ignore",
        help="Its perplexities, figures, settings and versions in one offline page (`alphaprune runs --report ID`)",
    )  # fmt: skip
