"""Runs page: the stored history of pruning runs; filter, compare, delete, export."""

import json

import streamlit as st

from alphaprune.errors import UserError
from alphaprune.plots import runs_figure
from alphaprune.runs import RunStore

st.title("Runs")
st.caption("Every prune and eval run, from this app and from the CLI, kept in one SQLite file.")
try:
    store = RunStore()
    frame = store.frame()
except UserError as exc:
    st.error(str(exc))
    st.stop()
if frame.empty:
    st.info("No runs yet: prune a model on the Prune & evaluate page (or run `alphaprune prune`).")
    st.stop()

left, mid, right = st.columns(3)
models = left.multiselect("Model", sorted(frame["model"].unique()), key="runs_models")
kinds = mid.multiselect("Kind", sorted(frame["kind"].unique()), default=["prune"], key="runs_kinds")
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
left.plotly_chart(runs_figure(view, "sparsity"), key="runs_sparsity_chart", width="stretch")
if "epsilon" in view and view["epsilon"].notna().any():
    right.plotly_chart(
        runs_figure(view[view["allocation"] == "alphapruning"], "epsilon"), key="runs_eps_chart", width="stretch"
    )
wanted = ["id", "created", "kind", "model", "pruner", "allocation", "epsilon", "sparsity", "pattern"]
wanted += ["ppl_before", "ppl_after", "actual_sparsity", "seconds_total"]
st.dataframe(view[[c for c in wanted if c in view.columns]], hide_index=True, key="runs_table")

left, mid, right = st.columns([2, 1, 1])
doomed = left.multiselect("Delete runs", view["id"].tolist(), key="runs_delete_ids")
if mid.button("Delete", key="runs_delete", disabled=not doomed):
    store.delete([int(i) for i in doomed])
    st.rerun()
ids = set(view["id"].tolist())
records = [r.to_dict() for r in store.list() if r.id in ids]
right.download_button("Export JSON", json.dumps(records, indent=1), "runs.json", key="runs_json")
right.download_button("Export CSV", view.to_csv(index=False), "runs.csv", "text/csv", key="runs_csv")
