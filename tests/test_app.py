"""The Streamlit app (AppTest): the landing page renders and the analysis runs on a tiny
local model folder.

    .venv/bin/python -m pytest tests/test_app.py -q
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import tiny_llama


@pytest.fixture(autouse=True)
def clear_streamlit_caches():
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def tiny_folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model = tiny_llama(layers=2)
    model.save_pretrained(tmp_path)
    vocab = {f"w{i}": i for i in range(300)}
    vocab["[UNK]"] = 0
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    return tmp_path


def test_landing_page_renders():
    at = AppTest.from_file("../app.py", default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Layer spectra"


def test_load_and_analyse_tiny_model(tiny_folder):
    at = AppTest.from_file("../app.py", default_timeout=120).run()
    at.text_input(key="model_spec").set_value(str(tiny_folder)).run()
    at.button(key="analyse").click().run()
    assert not at.exception and not at.error
    assert at.status[0].label.startswith("Analysed 15 matrices")
    assert at.selectbox(key="esd_matrix").value == "model.layers.0.self_attn.q_proj"
    at.selectbox(key="depth_metric").set_value("alpha_ks").run()
    at.radio(key="esd_rule").set_value("ks").run()
    assert not at.exception


def test_bad_model_shows_error_not_traceback():
    at = AppTest.from_file("../app.py", default_timeout=60).run()
    at.text_input(key="model_spec").set_value("no-such-model").run()
    at.button(key="analyse").click().run()
    assert not at.exception
    assert "unknown model" in at.error[0].value
