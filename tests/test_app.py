"""The Streamlit app with AppTest: every page on a tiny model, bad input, the main path on the
default model (load, analyse, move a slider, prune, see perplexity).

    .venv/bin/python -m pytest tests/test_app.py -q
"""

from __future__ import annotations

import pytest

from tests.conftest import tiny_llama, tiny_tokenizer
from tests.test_app_model_prune import app as _app
from tests.test_app_model_prune import clear_streamlit_caches  # noqa: F401 (an autouse fixture, used here too)
from tests.test_app_model_prune import load as _load
from tests.test_app_model_prune import no_errors as _no_errors

PAGES = ("pages/model.py", "pages/spectra.py", "pages/allocation.py", "pages/prune.py", "pages/runs.py")
PAGES += ("pages/about.py",)
FOLDER_SOURCE = "Hub id, folder or .gguf path"


@pytest.fixture
def tiny_folder(tmp_path):
    tiny_llama(layers=2).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_before_anything_is_loaded(page):
    at = _app()
    at.switch_page(page).run()
    _no_errors(at)


def test_every_page_on_a_tiny_model(tiny_folder):
    at = _load(_app(), str(tiny_folder))
    _no_errors(at)
    assert at.status[0].label.startswith("Analysed 15 matrices")
    at.switch_page("pages/spectra.py").run()
    at.selectbox(key="esd_matrix").set_value("model.layers.1.mlp.down_proj").run()
    at.radio(key="esd_rule").set_value("ks").run()
    at.toggle(key="esd_random").set_value(True).run()
    at.selectbox(key="depth_metric").set_value("stable_rank").run()
    _no_errors(at)
    at.switch_page("pages/allocation.py").run()
    at.slider(key="alloc_sparsity").set_value(0.8).run()
    at.slider(key="alloc_epsilon").set_value(0.5).run()
    _no_errors(at)
    at.selectbox(key="alloc_method").set_value("owl").run()
    at.button(key="owl_compute").click().run()
    _no_errors(at)
    assert at.get("plotly_chart")  # the OWL allocation is drawn
    at.switch_page("pages/prune.py").run()
    for key, value in (("prune_samples", 2), ("prune_seqlen", 32), ("prune_windows", 2)):
        at.number_input(key=key).set_value(value)
    at.button[0].click().run()  # the form's submit button
    _no_errors(at)
    assert [m.label for m in at.metric][:3] == ["Perplexity, dense", "Perplexity, pruned", "Actual sparsity"]
    at.button(key="gen_button").click().run()
    _no_errors(at)
    at.switch_page("pages/runs.py").run()
    _no_errors(at)
    assert len(at.dataframe[0].value) >= 1
    at.switch_page("pages/about.py").run()
    _no_errors(at)


def test_bad_model_shows_an_error_not_a_traceback():
    at = _load(_app(), "no-such-model")
    assert not at.exception
    assert "unknown model" in at.error[0].value


@pytest.mark.slow
def test_main_path_on_the_default_model():
    """Load the bundled SmolLM2, analyse, move the allocation slider, prune, see perplexity."""
    at = _load(_app(timeout=300), None)
    _no_errors(at)
    assert at.subheader[0].value == "smollm2-135m" and at.metric[0].value == "30"
    at.switch_page("pages/allocation.py").run()
    at.slider(key="alloc_sparsity").set_value(0.5).run()
    _no_errors(at)
    assert at.metric[0].value == "0.5000"  # weighted mean follows the slider
    at.switch_page("pages/prune.py").run()
    for key, value in (("prune_samples", 4), ("prune_seqlen", 128), ("prune_windows", 2)):
        at.number_input(key=key).set_value(value)
    at.button[0].click().run(timeout=600)
    _no_errors(at)
    dense, pruned = float(at.metric[0].value), float(at.metric[1].value)
    assert 1.0 < dense < pruned
    assert float(at.metric[2].value) == pytest.approx(0.5, abs=1e-3)
