"""The Allocation and Runs pages with AppTest (issue 9): the per-matrix mapping drawn and worded per
matrix, epsilon only for AlphaPruning runs, the run charts per model, deleting only after a confirmation.

    .venv/bin/python -m pytest tests/test_app_alloc_runs.py -q            # add -m "not slow" to skip SmolLM2
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from streamlit.testing.v1 import AppTest

from alphaprune import allocation as alloc
from alphaprune.cli import main
from alphaprune.config import AllocationSettings, PrunerSettings
from alphaprune.pipeline import PruneConfig
from alphaprune.runs import RunRecord, RunStore
from alphaprune.ui.session import ANALYSIS
from tests.conftest import tiny_llama, tiny_tokenizer

FOLDER_SOURCE = "Hub id, folder or .gguf path"
CORPUS = "It was the best of times, it was the worst of times. " * 60


@pytest.fixture(autouse=True)
def clear_streamlit_caches():
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(layers=3).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A run history of this test's own (the app and the CLI read ALPHAPRUNE_DATA on every call)."""
    monkeypatch.setenv("ALPHAPRUNE_DATA", str(tmp_path / "data"))
    return RunStore()


def _app(timeout: int = 120) -> AppTest:
    return AppTest.from_file("../app.py", default_timeout=timeout).run()


def _no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _chart(at: AppTest, key: str) -> dict:
    """The plotly figure of the chart with this key, as the browser gets it."""
    charts = [c for c in at.get("plotly_chart") if key in c.proto.id]
    assert len(charts) == 1, [c.proto.id for c in at.get("plotly_chart")]
    return json.loads(charts[0].proto.spec)


def _traces(figure: dict, name: str) -> list[dict]:
    return [t for t in figure["data"] if t.get("name") == name]


# --- Allocation page ---------------------------------------------------------------------------------------------


def _allocation_page(spec: str | None, timeout: int = 120) -> AppTest:
    at = _app(timeout)
    if spec is not None:
        at.radio(key="model_source").set_value(FOLDER_SOURCE).run()
        at.text_input(key="model_spec").set_value(spec).run()
    at.button(key="load").click().run()
    _no_errors(at)
    at.switch_page("pages/allocation.py").run()
    return at


def _check_matrix_mapping(at: AppTest, expected: alloc.Allocation) -> None:
    """Warning and chart name exactly the clipped matrices, with their unclipped ratios."""
    _no_errors(at)
    assert expected.clipped  # the case is about clipping
    (warning,) = at.warning
    raw = dict(zip(expected.names, expected.raw, strict=True))
    for name in expected.clipped:
        assert f"{name} ({raw[name]:.3f})" in warning.value
    assert f"up to {max(expected.raw_block_ratios):.3f}" not in warning.value  # the old block-mean number
    figure = _chart(at, "allocation_chart")
    (held,) = _traces(figure, "held at ceiling")
    assert held["customdata"] == list(expected.clipped)
    assert held["y"] == [expected.ceiling] * len(expected.clipped)
    (rest,) = _traces(figure, "sparsity")
    assert len(rest["y"]) == len(expected.names) - len(expected.clipped)  # one bar per matrix
    assert max(held["width"] + rest["width"]) < 1  # no bar wider than a block
    assert at.metric[2].label == "Highest matrix" and at.metric[2].value == f"{expected.ceiling:.3f}"


def test_matrix_mapping_is_drawn_and_worded_per_matrix(tiny_folder):
    at = _allocation_page(tiny_folder)
    at.slider(key="alloc_epsilon").set_value(0.5).run()
    at.radio(key="alloc_mapping").set_value("matrix").run()
    expected = alloc.alphapruning(at.session_state[ANALYSIS].prunable, 0.7, 0.5, mapping="matrix")
    raw = dict(zip(expected.names, expected.raw, strict=True))
    assert min(raw[n] for n in expected.clipped) < expected.ceiling  # one pushed to the ceiling by the refit
    _check_matrix_mapping(at, expected)


def test_rules_overlaid_on_one_chart_are_the_rules_own_ratios(tiny_folder):
    """Three rules at once: the chart's lines are each rule's block ratios at the same target;
    a rule that needs calibration statistics not yet computed is named, not drawn."""
    from alphaprune import registry
    from alphaprune.arch import prunable_matrices
    from alphaprune.registry import RuleInput

    at = _allocation_page(tiny_folder)
    at.multiselect(key="alloc_overlay").set_value(["uniform", "atp", "owl"]).run()
    _no_errors(at)
    figure = _chart(at, "allocation_chart")
    matrices = tuple(prunable_matrices(tiny_llama(layers=3)))
    params = {"beta": registry.param("beta").default}
    atp = registry.rule("atp").allocate(RuleInput(matrices, 0.7, 0.99, params))
    (line,) = _traces(figure, "atp")
    assert line["y"] == pytest.approx(atp.block_ratios)
    assert _traces(figure, "uniform")[0]["y"] == pytest.approx([0.7] * 3)
    assert not _traces(figure, "owl") and "owl" in " ".join(c.value for c in at.caption)


def test_overlays_are_drawn_at_the_defaults_of_settings_left_to_auto(tiny_folder):
    """With the ceiling and epsilon on "auto", the overlaid rules are drawn at their defaults like
    the selected one (an overlay once got the string "auto" as its ceiling and raised TypeError)."""
    from alphaprune import registry
    from alphaprune.arch import prunable_matrices
    from alphaprune.registry import RuleInput

    at = _allocation_page(tiny_folder)
    at.checkbox(key="alloc_ceiling_auto").check().run()
    at.checkbox(key="alloc_epsilon_auto").check().run()
    at.multiselect(key="alloc_overlay").set_value(["uniform", "atp"]).run()
    _no_errors(at)
    figure = _chart(at, "allocation_chart")
    matrices = tuple(prunable_matrices(tiny_llama(layers=3)))
    atp = registry.rule("atp").allocate(RuleInput(matrices, 0.7, 0.99, {"beta": registry.param("beta").default}))
    assert _traces(figure, "atp")[0]["y"] == pytest.approx(atp.block_ratios)
    assert _traces(figure, "uniform")[0]["y"] == pytest.approx([0.7] * 3)


@pytest.mark.slow
def test_matrix_mapping_on_the_default_model():
    """The issue's case: AlphaPruning, sparsity 0.7, epsilon 0.3, mapping "matrix" on SmolLM2."""
    at = _allocation_page(None, timeout=300)
    assert at.slider(key="alloc_sparsity").value == 0.7 and at.slider(key="alloc_epsilon").value == 0.3
    at.radio(key="alloc_mapping").set_value("matrix").run()
    expected = alloc.alphapruning(at.session_state[ANALYSIS].prunable, 0.7, 0.3, mapping="matrix")
    assert expected.clipped == ("model.layers.10.self_attn.v_proj", "model.layers.23.self_attn.o_proj")
    _check_matrix_mapping(at, expected)


# --- epsilon only where it applies -------------------------------------------------------------------------------


@pytest.mark.parametrize("allocation", ["uniform", "owl", "list"])
def test_config_records_no_epsilon_outside_alphapruning(allocation):
    config = PruneConfig(allocation=allocation, epsilon=0.3, block_list=(0.5,) if allocation == "list" else None)
    assert config.to_dict()["epsilon"] is None
    assert PruneConfig(allocation="alphapruning", epsilon=0.3).to_dict()["epsilon"] == 0.3


def test_uniform_run_shows_no_epsilon_in_cli_exports_and_runs_page(tiny_folder, tmp_path, store):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    data = ["--calib", str(corpus), "--eval", str(corpus), "--calib-samples", "4", "--seqlen", "32"]
    data += ["--eval-windows", "4", "--pruner", "magnitude", "--sparsity", "0.5", "--model", tiny_folder]
    assert main(["prune", "--allocation", "uniform", *data]) == 0
    assert main(["prune", "--allocation", "alphapruning", "--epsilon", "0.2", *data]) == 0
    uniform, alpha = store.list()
    assert uniform.settings["epsilon"] is None and alpha.settings["epsilon"] == 0.2
    assert main(["runs", "--export", str(tmp_path / "runs.json")]) == 0
    exported = json.loads((tmp_path / "runs.json").read_text())
    assert [r["settings"]["epsilon"] for r in exported] == [None, 0.2]
    # a record from before the fix, a uniform run stored with the default epsilon
    store.add(RunRecord(kind="prune", model="old", settings={"allocation": "uniform", "epsilon": 0.3}))
    at = _app()
    at.switch_page("pages/runs.py").run()
    _no_errors(at)
    table = at.dataframe[0].value.set_index("id")
    assert "epsilon" not in table  # each rule's own parameters, in words
    assert table["rule_settings"].tolist() == ["", "epsilon 0.2, metric alpha_peak", ""]


def test_runs_name_each_rules_own_parameters(tiny_folder, tmp_path, store, capsys):
    """The CLI's runs listing and a sweep cell's line word an ATP run by its beta, not an epsilon."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    data = ["--calib", str(corpus), "--eval", str(corpus), "--calib-samples", "4", "--seqlen", "32"]
    data += ["--eval-windows", "4", "--pruner", "magnitude", "--sparsity", "0.5", "--model", tiny_folder]
    assert main(["prune", "--allocation", "atp", "--beta", "0.01", *data]) == 0
    capsys.readouterr()
    assert main(["runs"]) == 0
    listing = capsys.readouterr().out
    assert "rule_settings" in listing and "beta 0.01" in listing and "epsilon" not in listing
    from alphaprune.cli import _cell_line

    assert "(beta 0.01)" in _cell_line(1, store.list()[0])


# --- Runs page ---------------------------------------------------------------------------------------------------


def _two_models(store: RunStore) -> None:
    for model, dense, ppls in (("m-small", 20.0, (30.0, 45.0)), ("m-big", 9.0, (12.0, 15.0))):
        for sparsity, ppl in zip((0.5, 0.6), ppls, strict=True):
            settings = {"pruner": "wanda", "allocation": "uniform", "sparsity": sparsity}
            store.add(RunRecord(kind="prune", model=model, settings=settings, ppl_before=dense, ppl_after=ppl))
    store.add(RunRecord(kind="eval", model="m-big", ppl_before=9.0))


def _runs_page(store: RunStore) -> AppTest:
    _two_models(store)
    at = _app()
    at.switch_page("pages/runs.py").run()
    _no_errors(at)
    return at


def test_runs_chart_keeps_models_apart_on_a_clean_log_axis(store):
    figure = _chart(_runs_page(store), "runs_sparsity_chart")
    assert sorted(t["legendgroup"] for t in figure["data"]) == ["m-big", "m-small"]  # a line per model
    dense = {s["legendgroup"]: s["y0"] for s in figure["layout"]["shapes"]}
    assert dense == {"m-small": 20.0, "m-big": 9.0}  # a dense line per model
    axis = figure["layout"]["yaxis"]
    assert axis["type"] == "log" and axis["ticktext"] == ["5", "10", "20", "50"]


def test_runs_chart_title_follows_the_kind_filter(store):
    at = _runs_page(store)
    at.multiselect(key="runs_kinds").set_value(["eval"]).run()
    _no_errors(at)
    title = _chart(at, "runs_sparsity_chart")["layout"]["title"]["text"]
    assert title == "No prune runs among the 1 runs in this view (kinds: eval)"


def test_deleting_runs_needs_a_confirmation(store):
    at = _runs_page(store)
    first, second = (r.id for r in store.list()[:2])
    at.multiselect(key="runs_delete_ids").set_value([first, second]).run()
    at.button(key="runs_delete").click().run()  # one click: nothing happens but a hint
    _no_errors(at)
    assert len(store.list()) == 5 and "Nothing deleted" in at.warning[0].value
    at.checkbox(key="runs_delete_confirm").check().run()
    at.button(key="runs_delete").click().run()
    _no_errors(at)
    assert [r.id for r in store.list()][:2] != [first, second] and len(store.list()) == 3
    assert at.multiselect(key="runs_delete_ids").value == [] and not at.checkbox  # nothing left armed
    assert first not in at.dataframe[0].value["id"].tolist()


def test_several_statistic_rules_are_overlaid_at_once(tiny_folder, store):
    """OWL and DLP both need calibration statistics: overlaid beside ATP, one button measures
    both, and each line is the rule's own allocation from its own statistics."""
    from alphaprune import registry
    from alphaprune.arch import prunable_matrices
    from alphaprune.registry import RuleInput
    from alphaprune.ui import session

    at = _allocation_page(tiny_folder)
    at.selectbox(key="alloc_method").set_value("atp").run()
    at.multiselect(key="alloc_overlay").set_value(["owl", "dlp", "uniform"]).run()
    assert not _traces(_chart(at, "allocation_chart"), "owl") and not _traces(_chart(at, "allocation_chart"), "dlp")
    at.button(key="overlay_compute").click().run()
    _no_errors(at)
    figure = _chart(at, "allocation_chart")
    measured = at.session_state[session.OUTLIERS]
    assert {key[0] for key in measured} == {"owl", "dlp"}
    settings = at.session_state[session.ALLOC]
    for name in ("owl", "dlp"):
        (line,) = _traces(figure, name)
        values = next(v for k, v in measured.items() if k[0] == name)
        rule = registry.rule(name)
        params = {p.name: p.default for p in rule.params}
        own = rule.allocate(RuleInput(tuple(prunable_matrices(tiny_llama(layers=3))), settings.sparsity,
                                      settings.ceiling, params, statistics=tuple(values)))  # fmt: skip
        assert line["y"] == pytest.approx(own.block_ratios)
        assert max(own.block_ratios) - min(own.block_ratios) > 1e-3  # not uniform: the statistics shaped it
    assert _traces(figure, "uniform")


def test_the_statistics_previewed_are_the_ones_a_run_applies(tiny_folder, store):
    """OWL on the Allocation page measures its block statistics on the Prune page's calibration
    windows: the run then applies exactly the previewed ratios."""
    from alphaprune.ui import session

    at = _allocation_page(tiny_folder)
    at.selectbox(key="alloc_method").set_value("owl").run()
    at.button(key="owl_compute").click().run()
    _no_errors(at)
    previewed = _chart(at, "allocation_chart")
    statistics = list(at.session_state[session.OUTLIERS].values())[-1]  # the latest
    at.switch_page("pages/prune.py").run()
    for key, value in {"prune_samples": 4, "prune_windows": 2}.items():
        at.number_input(key=key).set_value(value)
    at.run()
    at.switch_page("pages/allocation.py").run()  # other calibration settings: computed again
    assert "needs a statistic of every block" in " ".join(i.value for i in at.info)
    at.button(key="owl_compute").click().run()
    statistics = list(at.session_state[session.OUTLIERS].values())[-1]  # the latest
    previewed = _chart(at, "allocation_chart")
    at.switch_page("pages/prune.py").run()
    at.button(key="prune_button").click().run()
    _no_errors(at)
    result = at.session_state[session.RESULT]
    assert result.allocation.settings["outlier_ratios"] == pytest.approx(statistics)
    bars = [t for t in previewed["data"] if t.get("type") == "bar"]
    shown = sorted(y for t in bars for y in t["y"])
    assert shown == pytest.approx(sorted(result.allocation.block_ratios))


def test_a_list_typed_on_the_allocation_page_starts_from_the_last_rule_and_is_applied(tiny_folder, store):
    """The list rule in the app: its box starts from the ratios drawn last (ATP's here), a typed
    list is drawn with its own mean as the target, a bad one is one line, what was typed comes
    back after a switch to another rule (without naming that rule's settings), and the Prune
    page applies exactly the list and records its mean as the target."""
    from alphaprune.ui import session

    at = _allocation_page(tiny_folder)
    at.selectbox(key="alloc_method").set_value("atp").run()
    atp = at.session_state[session.LAST_BLOCKS]
    atp_params = at.session_state[session.ALLOC].params
    at.selectbox(key="alloc_method").set_value("list").run()
    _no_errors(at)
    assert at.text_input(key="alloc_block_list").value == ", ".join(f"{r:g}" for r in atp)
    assert not [s for s in at.slider if s.key == "alloc_sparsity"]  # the list sets the target
    at.text_input(key="alloc_block_list").input("0.2, 0.5, 0.8").run()
    _no_errors(at)
    bars = [t for t in _chart(at, "allocation_chart")["data"] if t.get("type") == "bar"]
    assert sorted(y for t in bars for y in t["y"]) == pytest.approx([0.2, 0.5, 0.8])
    at.text_input(key="alloc_block_list").input("0.2, 0.5").run()  # the tiny model has 3 blocks
    assert len(at.error) == 1 and "3 blocks" in at.error[0].value and "Traceback" not in at.error[0].value
    at.text_input(key="alloc_block_list").input("0.3, 0.6, 0.9").run()
    at.selectbox(key="alloc_method").set_value("atp").run()  # away and back: the typed list returns
    assert at.session_state[session.ALLOC].params == atp_params  # ATP's settings do not name the list
    assert at.slider(key="alloc_sparsity").value == pytest.approx(0.6, abs=0.01)  # the list's mean, kept
    at.selectbox(key="alloc_method").set_value("list").run()
    assert at.text_input(key="alloc_block_list").value == "0.3, 0.6, 0.9"
    at.switch_page("pages/prune.py").run()
    for key, value in {"prune_samples": 2, "prune_windows": 2}.items():
        at.number_input(key=key).set_value(value)
    at.button(key="prune_button").click().run()
    _no_errors(at)
    result = at.session_state[session.RESULT]
    assert result.config.allocation == "list" and result.allocation.block_ratios == pytest.approx([0.3, 0.6, 0.9])
    assert result.config.sparsity == pytest.approx(result.allocation.target, abs=1e-4)  # what the record says


def test_auto_on_the_allocation_page_runs_the_search_and_draws_its_curve(tiny_folder, store):
    from alphaprune.ui import session

    at = _allocation_page(tiny_folder)
    at.checkbox(key="alloc_epsilon_auto").check().run()
    _no_errors(at)
    assert at.session_state[session.ALLOC].epsilon == "auto"
    assert "epsilon auto" in " ".join(c.value for c in at.caption)
    at.switch_page("pages/prune.py").run()
    for key, value in {"prune_samples": 2, "prune_windows": 2, "prune_budget": 2}.items():
        at.number_input(key=key).set_value(value)
    at.run()
    at.button(key="prune_button").click().run()
    _no_errors(at)
    result = at.session_state[session.RESULT]
    assert len(result.search) == 2 and result.config.epsilon in (0.1, 0.5)  # the budget thins 0.1..0.5 to its ends
    # the app keeps the run's three frozen parts (alphaprune/config.py), not untyped dicts
    allocation, pruner, data = (at.session_state[key] for key in (session.ALLOC, session.PRUNER, session.DATA))
    assert isinstance(allocation, AllocationSettings) and allocation.epsilon == "auto"
    searched = PruneConfig.from_parts(dataclasses.replace(allocation, search_budget=2), pruner, data)
    assert searched.with_params(epsilon=result.config.epsilon) == result.config
    assert (data.calib_samples, data.eval_windows) == (2, 2) and pruner == PrunerSettings()
    curve = _chart(at, "search_chart")
    assert [round(x, 3) for x in _traces(curve, "candidates")[0]["x"]] == [0.1, 0.5]


def test_farms_alphas_are_offered_with_their_cost_then_computed_on_both_pages(tiny_folder):
    """FARMS as the Allocation page's method, and alpha_farms as the Spectra page's metric: each
    shows the cost estimate, and its button computes the column once for both pages."""
    from alphaprune.farms import FarmsSettings
    from alphaprune.ui import session

    at = _allocation_page(tiny_folder)
    at.switch_page("pages/spectra.py").run()
    at.selectbox(key="depth_metric").set_value("alpha_farms").run()
    _no_errors(at)
    assert "windows, about" in " ".join(i.value for i in at.info)
    at.button(key="spectra_farms_compute").click().run()
    _no_errors(at)
    analysis = at.session_state[session.ANALYSIS]
    assert analysis.farms == FarmsSettings() and all(math.isfinite(m.alpha_farms) for m in analysis.layers)
    at.switch_page("pages/allocation.py").run()
    at.selectbox(key="alloc_method").set_value("farms").run()
    _no_errors(at)
    assert not any(b.key == "farms_compute" for b in at.button)  # the same settings: computed already
    from alphaprune import registry
    from alphaprune.registry import RuleInput

    params = {p.name: p.default for p in registry.rule("farms").params}
    farms = registry.rule("farms").allocate(RuleInput(analysis.prunable, 0.7, 0.99, params))
    figure = _chart(at, "allocation_chart")
    drawn = [y for name in ("sparsity", "held at ceiling") for t in _traces(figure, name) for y in t["y"]]
    assert sorted(drawn) == pytest.approx(sorted(farms.block_ratios))  # block 2 held at the ceiling here


def test_farms_settings_of_the_allocation_page_are_its_own_analysis(tiny_folder):
    at = _allocation_page(tiny_folder)
    at.selectbox(key="alloc_method").set_value("farms").run()
    assert "farms needs its own metric" in " ".join(i.value for i in at.info)
    at.selectbox(key="alloc_farms_spectrum").set_value("exact").run()
    at.button(key="farms_compute").click().run()
    _no_errors(at)
    assert at.session_state["analysis"].farms.spectrum == "exact"


def test_the_spectra_page_computes_farms_with_the_allocation_page_s_settings(tiny_folder):
    at = _allocation_page(tiny_folder)
    at.selectbox(key="alloc_method").set_value("farms").run()
    at.selectbox(key="alloc_farms_spectrum").set_value("exact").run()  # chosen there, not computed yet
    at.switch_page("pages/spectra.py").run()
    at.selectbox(key="depth_metric").set_value("alpha_farms").run()
    at.button(key="spectra_farms_compute").click().run()
    _no_errors(at)
    assert at.session_state["analysis"].farms.spectrum == "exact"
