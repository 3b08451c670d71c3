"""Reading checkpoints tensor by tensor (alphaprune/checkpoint.py) and analysing from files
(analysis.analyze_checkpoint): tiny LLaMA / GPT-2 models saved as sharded bf16 safetensors,
tiny GGUF files, and (slow) the real default model from its cache folder and its GGUF.

.venv/bin/python -m pytest tests/test_checkpoint.py -q
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alphaprune import analysis as analysis_mod
from alphaprune import cache, models
from alphaprune.analysis import analyze, analyze_checkpoint
from alphaprune.arch import all_matrices, find_blocks
from alphaprune.checkpoint import checkpoint_location, open_checkpoint, skeleton
from alphaprune.errors import UserError
from tests.conftest import tiny_llama

CASES = ("llama-tied", "llama-untied", "gpt2")


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=128)
    return GPT2LMHeadModel(config).eval()


def _tiny(case: str):
    return _tiny_gpt2() if case == "gpt2" else tiny_llama(layers=2, tie=case == "llama-tied", seed=3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """case -> a bf16 model folder in several shards with an index, as save_pretrained writes it."""
    folders = {}
    for case in CASES:
        folder = tmp_path_factory.mktemp(case)
        _tiny(case).to(torch.bfloat16).save_pretrained(folder, max_shard_size="64KB")
        assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("*.safetensors"))) > 2
        folders[case] = folder
    return folders


def _load(folder, dtype):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


@pytest.mark.parametrize("case", CASES)
def test_names_shapes_tensors_equal_the_loaded_state_dict(saved, case):
    ckpt = open_checkpoint(str(saved[case]))
    state = _load(saved[case], torch.bfloat16).state_dict()
    assert ckpt.kind == "safetensors" and ckpt.dtype == torch.bfloat16
    assert ckpt.names() == list(state)  # tied heads included, in state_dict order
    for name, value in state.items():
        assert ckpt.shape(name) == tuple(value.shape)
        stored = ckpt.tensor(name)
        assert stored.dtype == value.dtype and torch.equal(stored, value), name
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in state.values()}
    assert ckpt.nbytes() == sum(unique.values())


@pytest.mark.parametrize("case", CASES)
def test_analysis_from_files_equals_in_memory_float32(saved, case, tmp_path, monkeypatch):
    """Same alphas, eigenvalues and fingerprint; one path's cache entry serves the other."""
    monkeypatch.setenv("ALPHAPRUNE_CACHE", str(tmp_path))
    ckpt = open_checkpoint(str(saved[case]))
    seen = []
    files = analyze_checkpoint(ckpt, case, progress=lambda f, m: seen.append((f, m)))
    memory = analyze(_load(saved[case], torch.float32), case)
    assert not files.from_cache and memory.from_cache  # the in-memory path found the files' entry
    assert files.fingerprint == memory.fingerprint
    fresh = analyze(_load(saved[case], torch.float32), case, use_cache=False)
    assert files.layers == fresh.layers
    assert list(files.eigenvalues) == list(fresh.eigenvalues)
    for name, ev in fresh.eigenvalues.items():
        np.testing.assert_array_equal(files.eigenvalues[name], ev)
    n = len(files.layers)
    assert [m for _, m in seen if m.startswith("spectra")] == [f"spectra {k}/{n}" for k in range(1, n + 1)]
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_sequential_path_reads_files_too(saved, monkeypatch):
    ckpt = open_checkpoint(str(saved["gpt2"]))
    pooled = analyze_checkpoint(ckpt, use_cache=False)
    monkeypatch.setattr(analysis_mod, "_workers", lambda device, n: 1)
    sequential = analyze_checkpoint(ckpt, use_cache=False)
    assert pooled.layers == sequential.layers


def test_skeleton_is_on_meta_with_tied_weights():
    config = tiny_llama(layers=3, tie=True).config
    model = skeleton(config)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert len(find_blocks(model).modules) == 3
    refs = all_matrices(model)
    assert refs[0].tensor_name == "model.embed_tokens.weight" and len(refs) == 1 + 3 * 7


def test_only_the_head_stored_serves_the_tied_embedding(tmp_path):
    """safetensors' save_model may keep the tied pair under the head's name (the GGUF cache does)."""
    from safetensors.torch import save_model

    model = tiny_llama(layers=1, tie=True)
    model.config.save_pretrained(tmp_path)
    save_model(model, str(tmp_path / "model.safetensors"))
    ckpt = open_checkpoint(str(tmp_path))
    assert "model.embed_tokens.weight" in ckpt.names() and "lm_head.weight" in ckpt.names()
    assert torch.equal(ckpt.tensor("model.embed_tokens.weight"), model.model.embed_tokens.weight)


def test_base_model_checkpoint_without_the_prefix(tmp_path):
    """A checkpoint saved from the base model ("layers.0...") reads under the causal LM's names."""
    from safetensors.torch import save_file

    model = tiny_llama(layers=1, tie=True)
    model.config.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in model.model.state_dict().items()}, str(tmp_path / "model.safetensors"))
    ckpt = open_checkpoint(str(tmp_path))
    assert ckpt.names() == list(model.state_dict())
    assert torch.equal(ckpt.tensor("model.layers.0.mlp.up_proj.weight"), model.model.layers[0].mlp.up_proj.weight)


def _write_gguf(path, model, quantize: bool) -> None:
    """A llama GGUF of `model` the way llama.cpp's converter writes one (q/k rows permuted)."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for name, value in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        base, suffix = name.rsplit(".", 1)
        array = value.float().numpy()
        heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}.get(base.rsplit(".", 1)[-1])
        if heads:  # llama.cpp's permute: each head's rotary halves interleaved
            array = array.reshape(heads, 2, -1, array.shape[1]).swapaxes(1, 2).reshape(array.shape)
        if quantize and array.ndim == 2:
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(f"{names.get_name(base)}.{suffix}", gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(f"{names.get_name(base)}.{suffix}", np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tie,quantize", [(True, True), (False, False)])
def test_gguf_tensors_equal_what_transformers_loads(tmp_path, tie, quantize):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = tiny_llama(layers=2, tie=tie, seed=4)
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, model, quantize)
    ckpt = open_checkpoint(str(path))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    state = loaded.state_dict()
    assert ckpt.kind == "gguf" and ckpt.dtype == torch.float32
    assert ckpt.config.to_dict() == AutoConfig.from_pretrained(tmp_path, gguf_file=path.name).to_dict()
    assert ckpt.names() == list(state)
    for name, value in state.items():
        assert ckpt.shape(name) == tuple(value.shape) and torch.equal(ckpt.tensor(name), value), name
    if not quantize:  # float32 in the file: transformers' un-permutation gives the model back exactly
        assert torch.equal(
            ckpt.tensor("model.layers.1.self_attn.k_proj.weight"), model.model.layers[1].self_attn.k_proj.weight
        )
    files = analyze_checkpoint(ckpt, use_cache=False)
    assert files.layers == analyze(loaded, use_cache=False).layers


def test_bad_checkpoints_are_one_line_user_errors(tmp_path, saved):
    def message(location) -> str:
        with pytest.raises(UserError) as info:
            open_checkpoint(str(location))
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "no such checkpoint" in message(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("x")
    assert "not a checkpoint" in message(tmp_path / "notes.txt")
    assert "without config.json" in message(tmp_path)  # models._check_folder's wording
    assert "no such GGUF file" in message(tmp_path / "missing.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    assert "damaged or truncated" in message(tmp_path / "fake.gguf")

    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "lfm2.gguf"), "lfm2")  # transformers' newer GGUF loader's
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "cannot read tensor by tensor" in message(tmp_path / "lfm2.gguf")

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved["llama-tied"], broken)
    shard = sorted(broken.glob("*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    assert "damaged or truncated" in message(broken) and shard.name in message(broken)
    shard.unlink()
    assert f"lacks the shard {shard.name}" in message(broken)
    (broken / "model.safetensors.index.json").write_text("{not json")
    assert "index.json is broken" in message(broken)


def test_a_missing_matrix_is_named_before_any_work(tmp_path, saved):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    shutil.copytree(saved["llama-untied"], folder)
    name = "model.layers.1.mlp.down_proj.weight"
    shard = folder / json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"][name]
    tensors = load_file(shard)
    del tensors[name]
    save_file(tensors, str(shard), metadata={"format": "pt"})  # the shard without that matrix
    ckpt = open_checkpoint(str(folder))
    assert name not in ckpt.names()
    with pytest.raises(UserError, match="no tensor model.layers.1.mlp.down_proj.weight"):
        analyze_checkpoint(ckpt, use_cache=False, progress=lambda f, m: pytest.fail("work started"))


def test_checkpoint_location_of_each_kind_of_spec(tmp_path, monkeypatch, saved):
    monkeypatch.setenv("ALPHAPRUNE_CACHE", str(tmp_path / "cache"))
    gguf_file = str(models.bundled_gguf("smollm2-135m"))
    assert checkpoint_location("smollm2-135m") == gguf_file  # not dequantized yet: the GGUF itself
    folder = models._gguf_cache_folder(models.bundled_gguf("smollm2-135m"))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert checkpoint_location("smollm2-135m") == gguf_file  # half a folder is not the cache
    (folder / "model.safetensors").write_bytes(b"")
    assert checkpoint_location("smollm2-135m") == str(folder)
    assert checkpoint_location(str(saved["gpt2"])) == str(saved["gpt2"])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        checkpoint_location("someone/some-model")


@pytest.mark.slow
def test_real_model_from_its_files_gives_the_same_analysis(real_model, real_analysis, tmp_path, monkeypatch):
    """The bundled model from its dequantized cache folder and from the GGUF file itself:
    the same alphas and eigenvalues as the in-memory analysis, and the same fingerprint."""
    gguf_file = models.bundled_gguf("smollm2-135m")
    location = checkpoint_location("smollm2-135m")
    assert location == str(models._gguf_cache_folder(gguf_file))  # what the in-memory path loads
    monkeypatch.setenv("ALPHAPRUNE_CACHE", str(tmp_path))  # a fresh cache: computed, not read
    folder = analyze_checkpoint(open_checkpoint(location), "smollm2-135m")
    assert not folder.from_cache
    assert folder.fingerprint == cache.weights_fingerprint(all_matrices(real_model.model))
    assert folder.layers == real_analysis.layers
    for name, ev in real_analysis.eigenvalues.items():
        np.testing.assert_array_equal(folder.eigenvalues[name], ev)
    gguf = open_checkpoint(str(gguf_file))
    assert gguf.kind == "gguf"
    direct = analyze_checkpoint(gguf, "smollm2-135m", use_cache=False)
    assert direct.layers == real_analysis.layers
