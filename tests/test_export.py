"""Exporting a pruned model (alphaprune/export.py): the weights' zeros survive a round trip
through transformers, the ratios JSON, the llm-compressor recipe, and the folder rules
(never half-written, never over a foreign folder). Tiny random models only.

    .venv/bin/python -m pytest tests/test_export.py -q
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from alphaprune import registry
from alphaprune.arch import prunable_matrices
from alphaprune.errors import UserError
from alphaprune.export import RATIOS_FILE, RECIPE_FILE, llmcompressor_recipe, load_ratios, save_pruned
from tests.conftest import tiny_llama

transformers.logging.set_verbosity_error()

SPARSITY = 0.6
METADATA = {"pruner": "wanda", "allocation": "alpha", "sparsity": SPARSITY, "epsilon": 0.2, "ppl_dense": 31.5}


def _tokenizer():
    """A word-level fast tokenizer built in memory (no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, "hello": 2, "world": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


@torch.no_grad()
def _pruned(tie: bool = True, dtype: torch.dtype = torch.float32):
    """A tiny LLaMA whose block matrices lose their 60% smallest |w|; (model, ratios, block_ratios)."""
    model = tiny_llama(tie=tie).to(dtype)
    ratios = {}
    for ref in prunable_matrices(model):
        w = ref.weight()
        count = round(SPARSITY * w.numel())
        drop = w.abs().flatten().float().argsort(stable=True)[:count]
        w.view(-1)[drop] = 0
        ratios[ref.name] = count / w.numel()
    blocks = sorted({ref.block for ref in prunable_matrices(model)})
    return model, ratios, [SPARSITY] * len(blocks)


def _save(tmp_path, model, ratios, block_ratios, tokenizer=None, metadata=METADATA, name="out"):
    return save_pruned(model, tokenizer, tmp_path / name, ratios, block_ratios, metadata)


def _recipe_lists(text: str) -> tuple[list[float], list[str], str]:
    """(sparsity, targets, mask_structure) read back with regexes, without a YAML library."""
    sparsity = [float(v) for v in re.findall(r"^\s+- ([0-9.e+-]+)  # ", text, flags=re.M)]
    block = text.split("targets:", 1)[1].split("ignore:", 1)[0]
    targets = re.findall(r"^\s+- '([^']*)'", block, flags=re.M)
    mask = re.search(r"mask_structure: '([^']*)'", text).group(1)
    return sparsity, targets, mask


# ---------------------------------------------------------------- round trip


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_keeps_every_weight(tmp_path, tie):
    model, ratios, block_ratios = _pruned(tie=tie)
    folder = _save(tmp_path, model, ratios, block_ratios, tokenizer=_tokenizer())
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()

    loaded = AutoModelForCausalLM.from_pretrained(folder)
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert torch.equal(got[key], expected[key]), key
    head, embed = loaded.get_output_embeddings().weight, loaded.get_input_embeddings().weight
    assert (head.data_ptr() == embed.data_ptr()) is tie  # tied weights stay tied, untied stay apart
    for ref in prunable_matrices(loaded):
        assert torch.equal(ref.weight() == 0, dict(model.named_modules())[ref.name].weight == 0)
    assert AutoTokenizer.from_pretrained(folder)("hello world").input_ids == [2, 3]


def test_round_trip_bfloat16_without_tokenizer(tmp_path):
    model, ratios, block_ratios = _pruned(dtype=torch.bfloat16)
    folder = _save(tmp_path, model, ratios, block_ratios)
    assert not (folder / "tokenizer.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_gguf_loaded_model_is_saved_as_a_plain_model(tmp_path):
    """transformers keeps a GGUF quantizer on dequantized models and then refuses save_pretrained."""
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig

    model, ratios, block_ratios = _pruned()
    config = GgufConfig()
    model.hf_quantizer, model.is_quantized, model.quantization_method = GgufHfQuantizer(config), True, "gguf"
    model.config.quantization_config = config
    folder = _save(tmp_path, model, ratios, block_ratios)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert model.hf_quantizer is not None and model.config.quantization_config is config  # restored
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- ratios JSON and recipe


def test_ratios_json(tmp_path):
    model, ratios, block_ratios = _pruned()
    folder = _save(tmp_path, model, ratios, block_ratios, metadata={**METADATA, "ppl": torch.tensor(42.5)})
    record = json.loads((folder / RATIOS_FILE).read_text())
    assert record["ratios"] == ratios and list(record["ratios"]) == [r.name for r in prunable_matrices(model)]
    assert record["block_ratios"] == block_ratios
    assert record["metadata"] == {**METADATA, "ppl": 42.5}
    assert record["measured"] == pytest.approx(ratios, abs=1e-6)
    exported = load_ratios(folder)
    assert exported.ratios == ratios and exported.metadata["pruner"] == "wanda"


def test_recipe_lists_one_sparsity_per_target_in_module_order(tmp_path):
    model, ratios, block_ratios = _pruned()
    shuffled = dict(reversed(list(ratios.items())))  # save_pruned restores the module order
    folder = _save(tmp_path, model, shuffled, block_ratios)
    text = (folder / RECIPE_FILE).read_text()
    sparsity, targets, mask = _recipe_lists(text)
    names = [ref.name for ref in prunable_matrices(model)]
    module_order = [n for n, _ in model.named_modules() if n in ratios]
    assert targets == names == module_order
    assert sparsity == [ratios[n] for n in names]
    assert mask == "0:0" and "WandaPruningModifier:" in text and "sparsity_stage:" in text


def test_recipe_parses_as_llmcompressor_yaml():
    yaml = pytest.importorskip("yaml")  # llm-compressor reads recipes with yaml.safe_load
    ratios = {"model.layers.0.self_attn.q_proj": 0.61, "model.layers.0.mlp.down_proj": 1e-5}
    recipe = yaml.safe_load(llmcompressor_recipe(ratios, "sparsegpt", "unstructured", offload_hessians=True))
    args = recipe["sparsity_stage"]["sparsity_modifiers"]["SparseGPTModifier"]
    assert args == {
        "sparsity": [0.61, 1e-5],
        "mask_structure": "0:0",
        "block_size": 128,
        "dampening_frac": 0.01,
        "offload_hessians": True,
        "targets": list(ratios),
        "ignore": ["re:.*lm_head"],
    }
    wanda = yaml.safe_load(llmcompressor_recipe(ratios, "wanda", "2:4"))
    assert wanda["sparsity_stage"]["sparsity_modifiers"]["WandaPruningModifier"]["mask_structure"] == "2:4"


def test_nm_pattern_gives_mask_structure():
    text = llmcompressor_recipe({"model.layers.0.mlp.up_proj": 0.5}, "sparsegpt", "2:4")
    assert _recipe_lists(text)[2] == "2:4" and "SparseGPTModifier:" in text and "block_size: 128" in text
    assert "mask_structure: '4:8'" in llmcompressor_recipe({"a": 0.5}, "wanda", "4:8")


def test_magnitude_recipe_keeps_zeros_and_documents_the_ratios():
    ratios = {"model.layers.0.self_attn.q_proj": 0.7, "model.layers.1.mlp.down_proj": 0.4}
    text = llmcompressor_recipe(ratios, "magnitude")
    active = [line for line in text.splitlines() if not line.startswith("#")]
    assert "ConstantPruningModifier:" in "\n".join(active) and "sparsity:" not in "\n".join(active)
    # module names: llm-compressor matches modules and masks their weight (a parameter name matches nothing)
    assert re.findall(r"- '([^']*)'", "\n".join(active)) == list(ratios)
    commented = "\n".join(line[2:] for line in text.splitlines() if line.startswith("#   ") or line.startswith("# s"))
    assert _recipe_lists(commented)[:2] == (list(ratios.values()), list(ratios))
    assert "no one-shot magnitude pruner" in text


@pytest.mark.parametrize("pruner", ["magnitude", "ria"])
def test_ratios_for_a_dense_model_get_a_runnable_one_shot_stage(pruner):
    # `allocate --out recipe.yaml` and the Allocation page: nothing is pruned yet, so keeping
    # zeros would do nothing; the stage that prunes must be live, with the spec's note
    ratios = {"model.layers.0.self_attn.q_proj": 0.7, "model.layers.1.mlp.down_proj": 0.4}
    text = llmcompressor_recipe(ratios, pruner, dense=True)
    active = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "WandaPruningModifier:" in active and "ConstantPruningModifier" not in text
    assert _recipe_lists(text)[:2] == (list(ratios.values()), list(ratios))
    assert all(line in text for line in registry.pruner(pruner).recipe["note"])
    assert llmcompressor_recipe(ratios, "sparsegpt", dense=True) == llmcompressor_recipe(ratios, "sparsegpt")


@pytest.mark.parametrize(
    "ratios,pruner,pattern,needle",
    [
        ({"a": 0.5}, "obs", "unstructured", "pruner must be one of"),
        ({"a": 0.5}, "wanda", "2-4", "pattern must be"),
        ({"a": 0.5}, "wanda", "4:2", "0 < N < M"),
        ({"a": 1.5}, "wanda", "unstructured", r"\[0, 1\]"),
        ({}, "wanda", "unstructured", "no sparsity ratios"),
    ],
)
def test_recipe_bad_input(ratios, pruner, pattern, needle):
    with pytest.raises(UserError, match=needle):
        llmcompressor_recipe(ratios, pruner, pattern)


def test_unknown_matrix_name_is_refused(tmp_path):
    model, ratios, block_ratios = _pruned()
    with pytest.raises(UserError, match="not a module of the model"):
        _save(tmp_path, model, {**ratios, "model.layers.9.q": 0.5}, block_ratios)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the target folder


def test_refuses_a_foreign_folder_and_a_file(tmp_path):
    model, ratios, block_ratios = _pruned()
    foreign = tmp_path / "out"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not written by alphaprune") as info:
        _save(tmp_path, model, ratios, block_ratios)
    assert "\n" not in str(info.value)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and (foreign / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        _save(tmp_path, model, ratios, block_ratios, name="file")
    assert (tmp_path / "file").read_text() == "x"


def test_writes_into_an_empty_folder_and_replaces_a_previous_export(tmp_path):
    model, ratios, block_ratios = _pruned()
    (tmp_path / "out").mkdir()
    folder = _save(tmp_path, model, ratios, block_ratios, tokenizer=_tokenizer())
    (folder / "stale.txt").write_text("from the first export")
    assert (folder / "tokenizer.json").exists()

    again = _save(tmp_path, model, ratios, block_ratios, metadata={**METADATA, "pruner": "sparsegpt"})
    assert again == folder
    assert not (folder / "stale.txt").exists() and not (folder / "tokenizer.json").exists()
    assert load_ratios(folder).metadata["pruner"] == "sparsegpt"
    assert "SparseGPTModifier:" in (folder / RECIPE_FILE).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("error,expected", [(RuntimeError("boom"), RuntimeError), (OSError(28, "No space"), UserError)])
def test_failure_midway_leaves_nothing(tmp_path, monkeypatch, error, expected):
    model, ratios, block_ratios = _pruned()

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(model, "save_pretrained", fail)
    with pytest.raises(expected):
        _save(tmp_path, model, ratios, block_ratios)
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_keeps_the_previous_export(tmp_path, monkeypatch):
    model, ratios, block_ratios = _pruned()
    folder = _save(tmp_path, model, ratios, block_ratios)
    before = sorted(p.name for p in folder.iterdir())
    tokenizer = _tokenizer()
    monkeypatch.setattr(tokenizer, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        _save(tmp_path, model, ratios, block_ratios, tokenizer=tokenizer)
    assert sorted(p.name for p in folder.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------- both transformers generations, model card


def test_folder_carries_what_transformers_4_reads(tmp_path):
    """4.x reads a top-level rope_theta (else silently 10000) and cannot import TokenizersBackend."""
    model, ratios, block_ratios = _pruned()
    model.config.rope_parameters = {"rope_type": "default", "rope_theta": 123456.0}
    tokenizer = _tokenizer()
    folder = _save(tmp_path, model, ratios, block_ratios, tokenizer)
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 123456.0
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    reread = transformers.AutoTokenizer.from_pretrained(folder)
    assert reread("hello world").input_ids == tokenizer("hello world").input_ids
    assert AutoModelForCausalLM.from_pretrained(folder).config.rope_parameters["rope_theta"] == 123456.0


def test_model_card_says_settings_ratios_perplexity_and_versions(tmp_path):
    model, ratios, block_ratios = _pruned()
    meta = {**METADATA, "ppl_before": 31.5, "ppl_after": 40.25, "actual_sparsity": 0.6, "clipped": ["x"]}
    folder = _save(tmp_path, model, ratios, block_ratios, metadata=meta)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "- wanda" in card
    assert "| dense | 31.5000 |" in card and "| pruned | 40.2500 |" in card
    assert "| epsilon | 0.2 |" in card and "| allocation | alpha |" in card and "clipped" in card
    first = next(iter(ratios))
    assert f"| {first} | {ratios[first]:.4f} | {ratios[first]:.4f} |" in card  # target and the zeros saved
    assert f"| torch | {torch.__version__.split('+')[0]}" in card and "| transformers |" in card
    assert (folder / "sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "(sparsity.png)" in card


@pytest.mark.slow
def test_saved_default_model_generates_with_a_pipeline(real_model, tmp_path):
    """The real model's export, read back and run by transformers.pipeline("text-generation")."""
    ratios = {ref.name: 0.0 for ref in prunable_matrices(real_model.model)}
    folder = save_pruned(real_model.model, real_model.tokenizer, tmp_path / "dense", ratios, [0.0] * 30, {})
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_theta"] == 100000.0  # what 4.x would otherwise take as 10000
    pipe = transformers.pipeline("text-generation", model=str(folder), device="cpu")
    text = pipe("The capital of France is", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    ids = real_model.tokenizer("The capital of France is", return_tensors="pt").input_ids
    expected = real_model.model.generate(ids, max_new_tokens=5, do_sample=False)
    assert text == real_model.tokenizer.decode(expected[0], skip_special_tokens=True)
