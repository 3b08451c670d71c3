"""The app at scale (issue 10, item 6), with AppTest on a tiny bf16 LLaMA folder: the Model
page's **Offload** choice, analysis straight from the files (no model loaded) that the
Spectra and Allocation pages use, streamed prunes ("disk", "cpu") into a named save folder
whose run records say which path ran and whose perplexities equal the in-memory run's, a
streamed run without a save folder refused, and a path that does not fit refused in one
line with the numbers.

    .venv/bin/python -m pytest tests/test_app_scale.py -q
"""

from __future__ import annotations

import pytest
import torch
from streamlit.testing.v1 import AppTest

from alphaprune import preflight
from alphaprune.checkpoint import open_checkpoint
from alphaprune.runs import RunStore
from alphaprune.ui import session
from tests.conftest import tiny_llama, tiny_tokenizer
from tests.test_app_model_prune import (
    FOLDER_SOURCE,
    SMALL,
    clear_streamlit_caches,  # noqa: F401 (an autouse fixture, used here too)
    no_errors,
)


@pytest.fixture
def bf16_folder(tmp_path):
    folder = tmp_path / "tiny-bf16"
    tiny_llama(layers=2).to(torch.bfloat16).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def analysed(folder, offload: str) -> AppTest:
    at = AppTest.from_file("../app.py", default_timeout=120).run()
    at.radio(key="model_source").set_value(FOLDER_SOURCE).run()
    at.text_input(key="model_spec").set_value(str(folder)).run()
    at.radio(key="model_offload").set_value(offload).run()
    return at.button(key="load").click().run()


def pruned(at: AppTest, save=None) -> AppTest:
    at.switch_page("pages/prune.py").run()
    for key, value in SMALL.items():
        at.number_input(key=key).set_value(value)
    at.run()
    if save is not None:
        at.text_input(key="stream_save").set_value(str(save)).run()
    return at.button(key="prune_button").click().run()


def test_disk_analyses_from_the_files_and_the_spectra_page_shows_it(bf16_folder):
    from alphaprune.analysis import analyze
    from alphaprune.models import load_model

    at = analysed(bf16_folder, "disk")
    no_errors(at)
    assert at.session_state[session.MODEL] is None  # nothing loaded
    assert at.session_state[session.FILES].location == str(bf16_folder)
    assert any(c.value.startswith("Preflight: analyze streamed from the files") for c in at.caption)
    assert at.get("progress")[0].proto.value == 100  # the per-matrix bar, filled
    analysis = at.session_state[session.ANALYSIS]
    expected = analyze(load_model(str(bf16_folder)).model, "x", use_cache=False)
    assert [m.alpha_peak for m in analysis.layers] == [m.alpha_peak for m in expected.layers]

    at.switch_page("pages/spectra.py").run()
    at.toggle(key="esd_random").set_value(True).run()  # the shuffled copy: one matrix read from the files
    no_errors(at)
    layer = analysis.layer(at.selectbox(key="esd_matrix").value)
    rule = at.radio(key="esd_rule").value
    assert at.metric[0].value == f"{getattr(layer, f'alpha_{rule}'):.3f}"
    at.switch_page("pages/allocation.py").run()
    no_errors(at)
    assert at.metric[0].label == "Weighted mean"


def test_a_streamed_prune_into_a_named_folder_matches_the_in_memory_run(bf16_folder, tmp_path):
    """disk (blocks read from the files) and cpu (the model held once, in bf16, streamed)."""
    streamed = {}
    for offload in ("disk", "cpu"):
        save = tmp_path / f"pruned-{offload}"
        at = pruned(analysed(bf16_folder, offload), save)
        no_errors(at)
        streamed[offload] = run = RunStore().get(at.session_state[session.RUN_ID])
        assert run.settings["offload"] == offload and run.settings["saved"] == str(save)
        assert (save / "model.safetensors.index.json").is_file()
        assert open_checkpoint(str(save)).dtype == torch.bfloat16  # saved as stored, not as computed
        assert at.session_state[session.RESULT].model is None  # no pruned copy in memory
    assert "Ran streamed from memory." in "\n".join(c.value for c in at.caption)

    at = pruned(analysed(bf16_folder, "none"))  # the same settings, in memory
    no_errors(at)
    memory = RunStore().get(at.session_state[session.RUN_ID])
    assert memory.settings["offload"] == "none"
    for run in streamed.values():
        assert run.ppl_before == pytest.approx(memory.ppl_before, rel=1e-6)
        assert run.ppl_after == pytest.approx(memory.ppl_after, rel=1e-6)
    assert memory.ppl_after != pytest.approx(memory.ppl_before, rel=1e-3)  # the pruning did something


def test_a_streamed_prune_without_a_save_folder_is_refused_in_one_line(bf16_folder):
    at = pruned(analysed(bf16_folder, "disk"))
    assert not at.exception
    assert [e.value for e in at.error] == [
        "a streamed run writes the pruned model as it goes: name a **Save folder** for it"
    ]
    assert at.session_state[session.RUN_ID] is None


def test_a_forced_path_that_does_not_fit_is_refused_with_the_numbers(bf16_folder, monkeypatch):
    monkeypatch.setattr(preflight, "memory_available", lambda: 2**20)  # 1 MiB free
    at = analysed(bf16_folder, "disk")
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert message.startswith("analyze streamed from the files needs about ") and "0.0 GiB is free" in message
    assert at.session_state[session.ANALYSIS] is None and at.session_state[session.FILES] is None


def test_auto_loads_a_model_that_fits_and_prunes_it_streamed_when_its_copy_would_not(bf16_folder, monkeypatch):
    """Free memory set between the estimates: the analysis fits in memory (the model is
    loaded), pruning's copy does not, so auto streams the loaded model block by block."""
    from alphaprune.analysis import analysis_workers
    from alphaprune.preflight import HEADROOM, ModelShape, Work, estimate

    shape = ModelShape.from_model(open_checkpoint(str(bf16_folder)).skeleton(), stored_bytes=2)
    prune = Work(SMALL["prune_samples"], SMALL["prune_seqlen"], 1, "wanda")
    need = {
        "analyze": estimate("analyze", "none", shape, Work(workers=analysis_workers())),
        "cpu": estimate("prune", "cpu", shape, prune),
        "none": estimate("prune", "none", shape, prune),
    }
    ram = int(max(need["analyze"], need["cpu"]) / HEADROOM) + 1
    assert ram * HEADROOM < need["none"]  # the copy does not fit
    monkeypatch.setattr(preflight, "memory_available", lambda: ram)
    at = analysed(bf16_folder, "auto")
    no_errors(at)
    assert at.session_state[session.MODEL] is not None  # loaded, analysed in memory
    at = pruned(at, bf16_folder.parent / "pruned-auto")
    no_errors(at)
    assert any(c.value.startswith("Preflight: prune streamed from memory") for c in at.caption)
    run = RunStore().get(at.session_state[session.RUN_ID])
    assert run.settings["offload"] == "cpu" and at.session_state[session.RESULT].model is None
    assert open_checkpoint(run.settings["saved"]).dtype == torch.bfloat16  # the float32 model saved as stored
