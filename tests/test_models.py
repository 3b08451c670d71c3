"""Model loading (alphaprune/models.py): every source, the GGUF cache, bad input.

.venv/bin/python -m pytest tests/test_models.py -q
"""

from __future__ import annotations

import pytest
import torch

from alphaprune import models
from alphaprune.errors import UserError
from alphaprune.models import load_model, resolve_spec
from tests.conftest import tiny_llama


def test_resolve_spec_sources(tmp_path):
    assert resolve_spec("smollm2-135m")[0] == "bundled"
    assert resolve_spec("HuggingFaceTB/SmolLM2-135M") == ("hub", "HuggingFaceTB/SmolLM2-135M")
    tiny_llama().save_pretrained(tmp_path / "tiny")
    assert resolve_spec(str(tmp_path / "tiny")) == ("folder", str(tmp_path / "tiny"))


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("no-such-model", "unknown model"),
        ("/nonexistent/model.gguf", "no such GGUF file"),
    ],
)
def test_resolve_spec_errors(spec, needle):
    with pytest.raises(UserError, match=needle):
        resolve_spec(spec)


def test_folder_without_config_and_plain_file(tmp_path):
    with pytest.raises(UserError, match="without config.json"):
        resolve_spec(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="not a model"):
        resolve_spec(str(tmp_path / "weights.bin"))


def test_local_folder_loads_with_tokenizer_free_model(tmp_path):
    """A saved tiny Llama loads; it has no tokenizer files, so that gives a clear error."""
    model = tiny_llama()
    model.save_pretrained(tmp_path)
    with pytest.raises(UserError, match="cannot load"):
        load_model(str(tmp_path))


def test_non_causal_model_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="not a causal language model"):
        load_model(str(tmp_path))


@pytest.mark.slow
def test_too_large_for_memory_is_refused(tmp_path, monkeypatch, real_model):
    monkeypatch.setattr(models, "available_memory_bytes", lambda: 10 * 2**20)  # 10 MiB free
    with pytest.raises(UserError, match="GiB is free"):
        load_model("smollm2-135m")


def test_unknown_dtype():
    with pytest.raises(UserError, match="unknown dtype"):
        load_model("smollm2-135m", dtype="int3")


@pytest.mark.slow
def test_bundled_model_loads_and_second_load_reads_the_cache(real_model, monkeypatch):
    """The first load (session fixture) dequantizes and caches; the next reads the cache."""
    from alphaprune import models

    assert real_model.source == "bundled"
    assert len(real_model.model.model.layers) == 30
    monkeypatch.setattr(models, "_save_cache", lambda *a: pytest.fail("dequantized again"))
    again = load_model("smollm2-135m")
    assert again.from_cache
    for (name, a), (_, b) in zip(real_model.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    ids = again.tokenizer("The capital of France is", return_tensors="pt")
    out = again.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in again.tokenizer.decode(out[0])
