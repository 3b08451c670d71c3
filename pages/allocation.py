"""Allocation page: pick a rule, tune the target and the rule's parameters (widgets drawn from
its spec, alphaprune/registry.py), see the ratios live (per block, or per matrix for the mapping
"matrix"), and which matrices the ceiling holds back. The ratios shown are the ones the Prune
page applies: both build them from the same settings (session ALLOC, a frozen
AllocationSettings; the Prune page adds its PrunerSettings and DataSettings, alphaprune/config.py).

    streamlit run app.py   # then open "Allocation" (a model must be loaded and analysed first)
"""

import dataclasses
import json

import streamlit as st

from alphaprune import registry
from alphaprune.allocation import CEILING
from alphaprune.analysis import METRIC_NAMES
from alphaprune.config import AllocationSettings
from alphaprune.errors import UserError
from alphaprune.export import llmcompressor_recipe
from alphaprune.pipeline import PruneConfig, analysis_options, cached_statistics, make_allocation
from alphaprune.plots import allocation_figure, clipping_note, per_matrix
from alphaprune.text import calibration_windows, token_ids
from alphaprune.ui.charts import chart
from alphaprune.ui.session import (
    ALLOC,
    ANALYSIS,
    LAST_BLOCKS,
    MODEL,
    OUTLIERS,
    calibration_choice,
    list_starts,
    model_layout,
    model_name,
    offer_farms,
    progress_callback,
    require,
    settled_params,
)
from alphaprune.ui.widgets import param_widget, param_widgets

st.title("Allocation")
st.caption("Layer-wise sparsity from the spectra: higher alpha (less trained) -> more sparsity.")
analysis = require(ANALYSIS, "Load and analyse a model first: the allocation is computed from its spectra.")
loaded = st.session_state[MODEL]  # None when the model was analysed from its files
settings = st.session_state[ALLOC]
RULES = list(registry.rules())
TARGETS = (0.05, 0.95)  # the target slider's range

left, mid, right = st.columns(3)
method = left.selectbox(
    "Method", RULES, index=RULES.index(settings.allocation), key="alloc_method",
    help="; ".join(f"{name}: {registry.rule(name).summary}" for name in RULES),
)  # fmt: skip
rule = registry.rule(method)
if rule.sets_target:  # a list of ratios sets the target itself: their weighted mean, shown below
    sparsity = settings.sparsity
    mid.caption("The target is the listed ratios' weighted mean (below); one ratio per block, typed below.")
else:
    sparsity = mid.slider("Target sparsity", *TARGETS, settings.sparsity, 0.01, key="alloc_sparsity")
ceiling = param_widget(right, CEILING, settings.ceiling, "alloc_", auto=True)
starts = list_starts(rule, len({m.block for m in analysis.prunable}), sparsity)
values = param_widgets(rule.params, {**dict(settings.params), **starts}, "alloc_", {"metric": METRIC_NAMES}, True)
searched = [name for name, value in {**values, CEILING.name: ceiling}.items() if value == registry.AUTO]


def previewed(config: PruneConfig) -> PruneConfig:
    """`config` with every "auto" setting of its rule at its default: drawn so until a run picks."""
    return dataclasses.replace(config, **{name: config.auto_spec(name).default for name in config.auto_params()})


mapping = rule.granularities[0]
if len(rule.granularities) > 1:
    current = settings.mapping if settings.mapping in rule.granularities else rule.granularities[0]
    mapping = st.radio(
        "Mapping", rule.granularities, index=rule.granularities.index(current), key="alloc_mapping", horizontal=True
    )
params = settled_params(dict(settings.params), values, starts)  # other rules' values kept for a switch back
settings = AllocationSettings(method, sparsity, mapping, ceiling, settings.search_budget, params)
st.session_state[ALLOC] = settings
config = PruneConfig.from_parts(settings)  # the run these settings describe (the Prune page's pruner aside)

options = analysis_options(config)  # what the rule's metric needs of the analysis (FARMS' windows)
if any(getattr(analysis, key) != value for key, value in options.items()):
    offer_farms(options["farms"], f"{method} needs its own metric", key="farms_compute")
    st.stop()


def statistic_key(name: str, config) -> tuple:
    """What a rule's block statistic depends on: the rule, its statistic's parameters, and the
    Prune page's calibration windows (so the ratios previewed are the ones a run applies)."""
    params = tuple((n, config.param(n)) for n in registry.rule(name).statistic_params)
    return (name, params, calibration_choice())


def compute_statistics(configs: list) -> None:
    """Each config's rule statistic (a dense calibration pass, cached on disk), kept by its key."""
    source, samples, seqlen, seed = calibration_choice()
    bar = st.progress(0.0, text="calibration")
    try:
        windows = calibration_windows(token_ids(source, loaded.tokenizer), samples, seqlen, seed)
        for each in configs:
            values = cached_statistics(loaded.model, each, windows, progress_callback(bar))
            stored[statistic_key(each.allocation, each)] = values
    except UserError as exc:
        st.error(exc.render("app"))
        st.stop()
    st.session_state[OUTLIERS] = stored
    st.rerun()


stored = dict(st.session_state.get(OUTLIERS) or {})  # statistic_key -> one number per block
statistics = stored.get(statistic_key(method, config))
calib_source, calib_samples, calib_seqlen, calib_seed = calibration_choice()  # the Prune page's windows
if rule.statistic is not None and loaded is None:
    st.info(
        f"{method}'s statistics need calibration passes through the model, which is not loaded (it was analysed "
        "from its files): a streamed run on **Prune & evaluate** measures them block by block."
    )
    st.stop()
if rule.statistic is not None and statistics is None:
    st.info(
        f"{method} needs a statistic of every block, from the calibration text the **Prune & evaluate** page "
        f"uses ({calib_source or 'none chosen yet'}, {calib_samples} x {calib_seqlen} tokens, seed {calib_seed}): "
        "a run there applies exactly the ratios shown here."
    )
    if st.button("Compute block statistics", key="owl_compute", disabled=not calib_source):
        compute_statistics([config])
    st.stop()

if searched:
    st.caption(
        f"{', '.join(searched)} auto: a run on **Prune & evaluate** tries the candidates on held-out calibration "
        "text and keeps the lowest held-out perplexity; the chart shows the default until then."
    )
try:
    config.validate()
    allocation = make_allocation(
        model_layout(), previewed(config), analysis,
        statistics=statistics if rule.statistic else None, name=model_name(),
    )  # fmt: skip
except UserError as exc:
    st.error(exc.render("app"))
    st.stop()

if rule.sets_target:  # the list's mean is the run's target (its record, the slider of the next rule)
    shown = min(TARGETS[1], max(TARGETS[0], round(allocation.target, 4)))  # inside the slider's range
    st.session_state[ALLOC] = dataclasses.replace(settings, sparsity=shown)
else:  # what a list rule, chosen next, starts from
    st.session_state[LAST_BLOCKS] = tuple(round(r, 4) for r in allocation.block_ratios)
unit, ratios = ("matrix", allocation.sparsities) if per_matrix(allocation) else ("block", allocation.block_ratios)
cols = st.columns(4)
cols[0].metric("Weighted mean", f"{allocation.mean:.4f}")
cols[1].metric(f"Lowest {unit}", f"{min(ratios):.3f}")
cols[2].metric(f"Highest {unit}", f"{max(ratios):.3f}")
cols[3].metric("Matrices held at a bound", len(allocation.clipped))
if allocation.clipped:
    st.warning(clipping_note(allocation))
others, missing, unmeasured = {}, [], []
candidates = [name for name in RULES if name != method and not registry.rule(name).sets_target]
target = allocation.target if rule.sets_target else sparsity  # a list's own mean: the others' target
for name in st.multiselect("Overlay rules", candidates, key="alloc_overlay", help="block ratios at the same target"):
    other = previewed(dataclasses.replace(config, allocation=name, mapping="block", sparsity=target))  # auto: default
    needs_stats = registry.rule(name).statistic is not None
    own = stored.get(statistic_key(name, other)) if needs_stats else None
    if any(getattr(analysis, k) != v for k, v in analysis_options(other).items()):
        missing.append(name)  # FARMS' windowed alphas: computed when it is chosen as Method
        continue
    if needs_stats and own is None and loaded is None:
        missing.append(f"{name} (its statistics need the model loaded)")
        continue
    if needs_stats and own is None:
        unmeasured.append(other)
        continue
    try:
        others[name] = make_allocation(model_layout(), other, analysis, statistics=own, name=model_name())
    except UserError as exc:
        missing.append(f"{name} ({exc.render('app')})")
if missing:
    st.caption(f"Not overlaid (choose each as Method once to compute what it needs): {', '.join(missing)}.")
if unmeasured:
    names = ", ".join(c.allocation for c in unmeasured)
    st.caption(f"{names}: not overlaid until their block statistics are measured on the calibration windows.")
    if st.button(f"Compute statistics of {names}", key="overlay_compute", disabled=not calib_source):
        compute_statistics(unmeasured)
chart(st, allocation_figure(allocation, target, others), key="allocation_chart", name="allocation")

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
recipe_pruner = st.session_state.get("prune_pruner", PruneConfig.pruner)  # the Prune page's choice
right.download_button(
    "llm-compressor recipe",
    llmcompressor_recipe(allocation.ratios, recipe_pruner, dense=True),
    "recipe.yaml",
    key="dl_recipe",
    help=f"a one-shot recipe of these ratios for the Prune page's pruner ({recipe_pruner})",
)
st.page_link("pages/prune.py", label="Prune with this allocation", icon=":material/arrow_forward:")
