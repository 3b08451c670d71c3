"""The app's Model and Prune & evaluate pages and its entry point, with AppTest on a tiny model
(one slow test on the default model): results kept when an optional step fails, N:M said,
failures obvious, the numbers and names shown, settings kept across pages, the sidebar.

    .venv/bin/python -m pytest tests/test_app_model_prune.py -q            # -m "not slow": tiny only
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from alphaprune.runs import RunStore
from alphaprune.ui import session
from tests.conftest import tiny_llama, tiny_tokenizer

FOLDER_SOURCE = "Hub id, folder or .gguf path"
UPLOAD_SOURCE = "Upload (.gguf or .zip of a model folder)"
SMALL = {"prune_samples": 2, "prune_seqlen": 32, "prune_windows": 2}


@pytest.fixture(autouse=True)
def clear_streamlit_caches():
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def tiny_folder(tmp_path):
    folder = tmp_path / "tiny"
    tiny_llama(layers=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def app(timeout: int = 120) -> AppTest:
    return AppTest.from_file("../app.py", default_timeout=timeout).run()


def load(at: AppTest, spec: str | None) -> AppTest:
    if spec is not None:
        at.radio(key="model_source").set_value(FOLDER_SOURCE).run()
        at.text_input(key="model_spec").set_value(spec).run()
    at.button(key="load").click().run()
    return at


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def prune_page(at: AppTest, **values) -> AppTest:
    at.switch_page("pages/prune.py").run()
    for key, value in {**SMALL, **values}.items():
        widget = at.number_input(key=key) if key in SMALL else at.selectbox(key=key)
        widget.set_value(value)
    return at.run()


def prune(at: AppTest) -> AppTest:
    return at.button(key="prune_button").click().run()


def runs_stored() -> int:
    return len(RunStore().list())


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def test_sidebar_status_is_drawn_when_a_page_stops_early():
    """The Model page stops early (st.stop) while nothing is loaded; the sidebar still says so.

    Only the first run of an AppTest runs app.py: later runs of an app with a pages/ folder
    run the page alone (AppTest resets PagesManager.uses_pages_directory on every run), so
    the sidebar can be checked on the first run only."""
    at = app()
    assert at.info[0].value.startswith("Press **Load and analyse**")  # the page stopped here
    assert [c.value for c in at.sidebar.caption] == ["Loaded model: none"]


def test_model_caption_has_the_fingerprint_measured_once_per_model(tiny_folder, monkeypatch):
    from alphaprune.models import load_model
    from alphaprune.pipeline import fingerprint

    calls = []
    monkeypatch.setattr(session, "fingerprint", lambda model: calls.append(model) or fingerprint(model))
    at = load(app(), str(tiny_folder))
    no_errors(at)
    expected = fingerprint(load_model(str(tiny_folder)).model)[:12]  # the weights as stored, loaded anew
    assert f"Dense weights fingerprint `{expected}`" in captions(at)
    at.run()
    at.run()
    assert len(calls) == 1  # reruns show the value measured for this model object


def test_a_cached_reload_shows_the_time_of_this_press(tiny_folder):
    at = load(app(), str(tiny_folder))
    assert "Loaded from the files," in captions(at)
    at.button(key="load").click().run()
    no_errors(at)
    assert "Loaded from memory," in captions(at)
    seconds = at.session_state[session.LOAD_INFO].seconds
    assert at.metric[4].value == f"{seconds:.1f} s"  # this press, not the first load's seconds_load


def test_load_reports_the_stage_and_the_elapsed_time(tiny_folder):
    messages = []
    loaded, info = session.load(str(tiny_folder), False, None, messages.append)
    assert messages[0] == "locating"
    assert messages[1].startswith("reading the weights ... ") and messages[1].endswith(" s")
    assert info.how == "from the files" and loaded.source == "folder"


def test_a_failed_load_is_shown_as_such_and_the_old_model_stays(tiny_folder):
    at = load(app(), str(tiny_folder))
    before = at.session_state[session.MODEL]
    load(at, str(tiny_folder / "missing.gguf"))
    assert not at.exception
    assert len(at.error) == 1 and "no such GGUF file" in at.error[0].value
    assert at.warning[0].value.startswith(f"Still loaded: **{tiny_folder}**, the model below")
    assert at.session_state[session.MODEL] is before


def test_trust_remote_code_is_off_and_warns_when_on():
    at = app()
    at.radio(key="model_source").set_value(FOLDER_SOURCE).run()
    assert at.checkbox(key="model_trust").value is False
    assert not at.warning
    at.checkbox(key="model_trust").check().run()
    assert "**Trust remote code** is on" in at.warning[0].value


def test_upload_limit_is_stated_next_to_the_uploader():
    at = app()
    at.radio(key="model_source").set_value(UPLOAD_SOURCE).run()
    limit = session.upload_limit_mb()
    assert limit == 1024  # .streamlit/config.toml
    assert f"Up to {limit} MB" in captions(at) and FOLDER_SOURCE in captions(at)


def test_prune_settings_survive_a_page_switch(tiny_folder):
    at = load(app(), str(tiny_folder))
    prune(prune_page(at, prune_pruner="magnitude", prune_pattern="2:4"))  # the save folder needs a result
    at.text_input(key="save_folder").set_value("elsewhere").run()
    at.selectbox(key="prune_eval").set_value("a text file path").run()
    at.text_input(key="prune_eval_path").set_value("some/text.txt").run()
    at.switch_page("pages/allocation.py").run()
    at.switch_page("pages/prune.py").run()
    assert not at.exception
    assert at.selectbox(key="prune_pruner").value == "magnitude"
    assert at.selectbox(key="prune_pattern").value == "2:4"
    assert [at.number_input(key=k).value for k in SMALL] == list(SMALL.values())
    assert at.selectbox(key="prune_eval").value == "a text file path"
    assert at.text_input(key="prune_eval_path").value == "some/text.txt"
    assert at.text_input(key="save_folder").value == "elsewhere"


def test_the_text_uploader_appears_as_soon_as_it_is_chosen(tiny_folder):
    at = load(app(), str(tiny_folder))
    at.switch_page("pages/prune.py").run()
    assert not at.file_uploader
    at.selectbox(key="prune_calib").set_value("upload a text file").run()
    assert [u.key for u in at.file_uploader] == ["prune_calib_file"]


def test_nm_pattern_says_it_replaces_the_allocation(tiny_folder):
    at = load(app(), str(tiny_folder))
    prune_page(at, prune_pattern="2:4", prune_pruner="magnitude")
    assert (
        "uniform at sparsity 0.5" in at.warning[0].value and "alphapruning at 0.7 does not apply" in at.warning[0].value
    )
    assert "Allocation: uniform, pattern 2:4" in captions(at)
    prune(at)
    no_errors(at)
    assert "magnitude, uniform at 0.5, 2:4" in captions(at)
    assert float(at.metric[2].value) == pytest.approx(0.5, abs=1e-3)


def test_a_failing_optional_step_keeps_and_stores_the_run(tiny_folder, monkeypatch):
    """The pruned model's spectra fail (as fits.esd_peak did on a matrix with -inf): the
    perplexities stay on the page and in the run history, the failure is one st.error."""
    import alphaprune.analysis

    at = load(app(), str(tiny_folder))  # the dense spectra: measured before the fault
    before = runs_stored()

    def broken(*args, **kwargs):
        raise RuntimeError("torch.histc: range of [-inf, 0.5] is not finite")

    monkeypatch.setattr(alphaprune.analysis, "fit_all", broken)
    prune(prune_page(at, prune_pruner="wanda"))
    assert not at.exception
    assert runs_stored() == before + 1
    stored = RunStore().list()[-1]
    result = at.session_state[session.RESULT]
    assert (stored.ppl_before, stored.ppl_after) == (result.ppl_before, result.ppl_after)
    assert at.metric[1].value == f"{result.ppl_after:.2f}"
    [error] = at.error
    assert "spectra of the pruned model failed" in error.value and f"kept (run {stored.id})" in error.value
    assert "\n" not in error.value
    monkeypatch.undo()  # the retry button measures them now
    at.button(key="pruned_spectra_button").click().run()
    no_errors(at)
    assert at.session_state[session.PRUNED_ANALYSIS] is not None


def test_evaluation_caption_shows_the_measured_windows_and_the_upload_name(tiny_folder):
    at = load(app(), str(tiny_folder))
    prune_page(at, prune_pruner="magnitude", prune_eval="upload a text file")
    at.number_input(key="prune_windows").set_value(1024)
    text = "The quick brown fox jumps over the lazy dog. " * 3  # 135 characters: 4 windows of 32 tokens
    at.file_uploader(key="prune_eval_file").set_value(("notes.txt", text.encode(), "text/plain")).run()
    prune(at)
    no_errors(at)
    assert (
        "evaluation 4 windows (the text holds no more of the 1024 asked for) of 32 tokens of notes.txt (uploaded)"
        in (captions(at))
    )
    assert "uploads" not in captions(at)  # no cache path


def test_a_failed_prune_is_shown_as_such_and_the_old_result_stays(tiny_folder):
    at = load(app(), str(tiny_folder))
    prune(prune_page(at, prune_pruner="magnitude"))
    before, runs = at.session_state[session.RESULT], runs_stored()
    at.selectbox(key="prune_eval").set_value("a text file path").run()
    at.text_input(key="prune_eval_path").set_value(str(tiny_folder / "missing.txt")).run()
    prune(at)
    assert not at.exception and len(at.error) == 1
    assert at.warning[0].value.startswith("The result below is from the previous run (run ")
    assert at.session_state[session.RESULT] is before and runs_stored() == runs


def test_save_folder_says_where_and_saves_there(tiny_folder, tmp_path):
    at = load(app(), str(tiny_folder))
    prune(prune_page(at, prune_pruner="magnitude"))
    assert f"Writes to `{Path.cwd() / 'pruned-model'}` (a relative folder is relative to `{Path.cwd()}`)" in captions(
        at
    )
    at.text_input(key="save_folder").set_value(str(tmp_path / "out")).run()
    at.selectbox(key="prune_pruner").set_value("wanda").run()  # changed after the run: not what was saved
    at.button(key="save_button").click().run()
    no_errors(at)
    assert at.success[-1].value == f"Saved to `{tmp_path / 'out'}`"
    assert (tmp_path / "out" / "config.json").exists()
    from alphaprune.export import load_ratios

    meta = load_ratios(tmp_path / "out").metadata  # the run's settings and numbers, as the CLI saves them
    result = at.session_state[session.RESULT]
    assert meta["pruner"] == "magnitude" and meta["actual_sparsity"] == pytest.approx(result.actual_sparsity)


def test_messages_name_the_apps_widgets_not_cli_flags(tiny_folder):
    at = load(app(), str(tiny_folder))
    prune(prune_page(at, prune_pruner="magnitude", prune_seqlen=512))  # the tiny model's context is 256
    assert not at.exception
    [error] = at.error
    assert "**Sequence length**" in error.value and "--seqlen" not in error.value


@pytest.mark.slow
def test_high_sparsity_few_samples_on_the_default_model_keeps_the_run():
    """The issue's reproduction: Allocation defaults (AlphaPruning 0.7, epsilon 0.3), Wanda,
    8 samples x 256 tokens, 8 windows. The run is shown and stored, whatever the optional
    spectra of the pruned model do."""
    at = load(app(timeout=600), None)
    no_errors(at)
    before = runs_stored()
    prune(prune_page(at, prune_pruner="wanda", prune_samples=8, prune_seqlen=256, prune_windows=8))
    assert not at.exception
    assert runs_stored() == before + 1
    result = at.session_state[session.RESULT]
    assert result.config.allocation == "alphapruning" and result.config.sparsity == 0.7
    assert 1.0 < result.ppl_before < result.ppl_after
    assert at.metric[1].value == f"{result.ppl_after:.2f}"
    no_errors(at)  # and the spectra of the pruned model fit too (the histogram fix in alphaprune/fits.py)
    assert len(at.session_state[session.PRUNED_ANALYSIS].prunable) == 210


def test_compare_runs_one_stored_run_per_rule_and_resumes(tiny_folder):
    """The Prune page's Compare: each chosen rule pruned with the page's pruner and texts,
    stored under one compare id, shown side by side; pressing again runs nothing new."""
    before = runs_stored()
    at = prune_page(load(app(), str(tiny_folder)))
    at.multiselect(key="compare_rules").set_value(["uniform", "atp"]).run()
    at.button(key="compare_button").click().run()
    no_errors(at)
    cid, rows = at.session_state[session.COMPARE]
    assert sorted(r["rule"] for r in rows) == ["atp", "uniform"] and runs_stored() == before + 2
    runs = RunStore().list(sweep=cid)
    assert len(runs) == 2 and len({r.ppl_before for r in runs}) == 1  # the same texts and dense model
    # side by side: each rule's block ratios as a line, its perplexity in the legend
    (plot,) = [c for c in at.get("plotly_chart") if "compare_chart" in c.proto.id]
    lines = {t["name"]: t["y"] for t in json.loads(plot.proto.spec)["data"]}
    for run in runs:
        assert lines[f"{run.settings['allocation']}: ppl {run.ppl_after:.1f}"] == pytest.approx(run.block_ratios)
    at.button(key="compare_button").click().run()
    assert runs_stored() == before + 2  # resumed: both rules were measured already


def test_zero_shot_accuracy_is_measured_shown_and_stored_with_the_run(tiny_folder):
    """lm-eval on the dense and the pruned tiny model (the local task of tests/data), on demand."""
    tasks = Path(__file__).parent / "data" / "lmeval_tiny"
    at = prune(prune_page(load(app(), str(tiny_folder)), prune_pruner="magnitude"))
    no_errors(at)
    at.text_input(key="zs_tasks").set_value("alphaprune_tiny")
    at.text_input(key="zs_path").set_value(str(tasks))
    at.number_input(key="zs_limit").set_value(3)
    at.button(key="zs_button").click().run(timeout=300)
    no_errors(at)
    table = at.dataframe[-1].value
    assert list(table["metric"]) == ["acc", "acc_norm"] and set(table.columns) >= {"dense", "pruned", "change"}
    stored = RunStore().list()[-1].accuracy
    assert stored["limit"] == 3 and stored["after"]["alphaprune_tiny"]["acc"] == table["pruned"][0]
    at.text_input(key="zs_tasks").set_value("no_such_task")
    at.button(key="zs_button").click().run(timeout=300)
    assert "knows no task 'no_such_task'" in at.error[0].value and len(at.error) == 1
