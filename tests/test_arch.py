"""Model layouts (alphaprune/arch.py): decoder blocks, prunable matrices and display matrices
on tiny random models of every supported family (LLaMA, Mistral, Qwen2, GPT-2, OPT,
GPT-NeoX, Phi, Gemma), built from configs only: nothing is downloaded.

    .venv/bin/python -m pytest tests/test_arch.py -q
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn

from alphaprune.arch import all_matrices, display_matrices, find_blocks, prunable_matrices
from alphaprune.errors import UserError

transformers.logging.set_verbosity_error()

HIDDEN, FFN, LAYERS, HEADS, VOCAB, POSITIONS = 32, 64, 2, 4, 128, 64


def _build(config_cls: str, model_cls: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    config = getattr(transformers, config_cls)(**kw)
    return getattr(transformers, model_cls)(config).eval()


def _decoder_kw(**extra) -> dict:
    return dict(
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        vocab_size=VOCAB,
        max_position_embeddings=POSITIONS,
        **extra,
    )


def llama(tie: bool = False):
    return _build("LlamaConfig", "LlamaForCausalLM", **_decoder_kw(num_key_value_heads=2, tie_word_embeddings=tie))


def mistral():
    return _build("MistralConfig", "MistralForCausalLM", **_decoder_kw(num_key_value_heads=2))


def qwen2():
    return _build("Qwen2Config", "Qwen2ForCausalLM", **_decoder_kw(num_key_value_heads=2))


def gemma():
    return _build("GemmaConfig", "GemmaForCausalLM", **_decoder_kw(num_key_value_heads=2, head_dim=HIDDEN // HEADS))


def phi():
    return _build("PhiConfig", "PhiForCausalLM", **_decoder_kw())


def gpt_neox():
    return _build("GPTNeoXConfig", "GPTNeoXForCausalLM", **_decoder_kw())


def gpt2():
    return _build(
        "GPT2Config",
        "GPT2LMHeadModel",
        n_embd=HIDDEN,
        n_layer=LAYERS,
        n_head=HEADS,
        vocab_size=VOCAB,
        n_positions=POSITIONS,
        bos_token_id=0,
        eos_token_id=0,
    )


def opt():
    return _build(
        "OPTConfig",
        "OPTForCausalLM",
        hidden_size=HIDDEN,
        ffn_dim=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        vocab_size=VOCAB,
        max_position_embeddings=POSITIONS,
        word_embed_proj_dim=HIDDEN,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )


LLAMA_KINDS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

# builder, blocks path, kinds of one block, embeddings (display names besides an untied head)
FAMILIES = {
    "llama": (llama, "model.layers", LLAMA_KINDS, ["model.embed_tokens"]),
    "mistral": (mistral, "model.layers", LLAMA_KINDS, ["model.embed_tokens"]),
    "qwen2": (qwen2, "model.layers", LLAMA_KINDS, ["model.embed_tokens"]),
    "gemma": (gemma, "model.layers", LLAMA_KINDS, ["model.embed_tokens"]),
    "phi": (phi, "model.layers", {"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"}, ["model.embed_tokens"]),
    "gpt2": (
        gpt2,
        "transformer.h",
        {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"},
        ["transformer.wte", "transformer.wpe"],
    ),
    "opt": (
        opt,
        "model.decoder.layers",
        {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
        ["model.decoder.embed_tokens", "model.decoder.embed_positions"],
    ),
    "gpt_neox": (
        gpt_neox,
        "gpt_neox.layers",
        {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"},
        ["gpt_neox.embed_in"],
    ),
}

_MODELS: dict[str, nn.Module] = {}


def _model(family: str) -> nn.Module:
    """Each family is built once per session; the tests only read it."""
    if family not in _MODELS:
        _MODELS[family] = FAMILIES[family][0]()
    return _MODELS[family]


def _num_layers(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "num_hidden_layers", None) or config.n_layer


family = pytest.mark.parametrize("family", list(FAMILIES))


@family
def test_find_blocks_path_and_count(family):
    model = _model(family)
    blocks = find_blocks(model)
    assert blocks.path == FAMILIES[family][1]
    assert len(blocks.modules) == _num_layers(model) == LAYERS
    stack = dict(model.named_modules())[blocks.path]
    assert isinstance(stack, nn.ModuleList)
    assert all(a is b for a, b in zip(blocks.modules, stack, strict=True))


@family
def test_prunable_matrices_per_block(family):
    model = _model(family)
    _, path, kinds, _ = FAMILIES[family]
    refs = prunable_matrices(model)
    modules = dict(model.named_modules())

    assert len(refs) == len(kinds) * LAYERS
    for index in range(LAYERS):
        block = [r for r in refs if r.block == index]
        assert len({r.kind for r in block}) == len(block)  # kinds unique within a block
        assert {r.kind for r in block} == kinds
        assert all(r.name.startswith(f"{path}.{index}.") for r in block)
    # blocks come in order 0..L-1
    order = [r.block for r in refs]
    assert order == sorted(order)
    assert sorted(set(order)) == list(range(LAYERS))

    for ref in refs:
        assert ref.name in modules
        assert modules[ref.name] is ref.module
        assert ref.prunable
        w = ref.weight()
        assert tuple(w.shape) == ref.shape
        assert ref.params == w.numel() == ref.module.weight.numel()
        assert w.data_ptr() == ref.module.weight.data_ptr()  # a view, not a copy
        if family == "gpt2":
            assert ref.transposed
            assert torch.equal(w, ref.module.weight.t())
        else:
            assert not ref.transposed
            assert isinstance(ref.module, nn.Linear)
            assert ref.shape == (ref.module.out_features, ref.module.in_features)
            assert torch.equal(w, ref.module.weight)


def test_gpt2_conv1d_comes_out_as_out_in():
    refs = {r.kind: r for r in prunable_matrices(_model("gpt2")) if r.block == 0}
    assert refs["c_attn"].shape == (3 * HIDDEN, HIDDEN)
    assert refs["attn.c_proj"].shape == (HIDDEN, HIDDEN)
    assert refs["c_fc"].shape == (4 * HIDDEN, HIDDEN)
    assert refs["mlp.c_proj"].shape == (HIDDEN, 4 * HIDDEN)
    # the raw Conv1D weight is (in, out)
    assert tuple(refs["c_fc"].module.weight.shape) == (HIDDEN, 4 * HIDDEN)


def test_weight_view_shares_storage():
    model = llama()
    ref = prunable_matrices(model)[0]
    ref.weight()[0, 0] = 123.0
    assert ref.module.weight[0, 0].item() == 123.0

    model = gpt2()
    ref = prunable_matrices(model)[0]
    ref.weight()[1, 0] = 7.0  # (out=1, in=0) is .weight[0, 1] of a Conv1D
    assert ref.module.weight[0, 1].item() == 7.0


@family
def test_display_matrices(family):
    model = _model(family)
    _, path, _, embeddings = FAMILIES[family]
    refs = display_matrices(model)
    names = [r.name for r in refs]
    modules = dict(model.named_modules())

    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == bool(model.config.tie_word_embeddings)
    assert names == embeddings + ([] if tied else ["lm_head"])
    assert len(set(names)) == len(names)
    for ref in refs:
        assert ref.name in modules and modules[ref.name] is ref.module
        assert not ref.prunable
        assert ref.block == -1
        assert not ref.name.startswith(path + ".")
        assert tuple(ref.weight().shape) == ref.shape
        assert ref.params == ref.module.weight.numel()
    assert refs[0].shape == (VOCAB, HIDDEN)  # token embedding first
    prunable = {id(r.module) for r in prunable_matrices(model)}
    assert not prunable & {id(r.module) for r in refs}


@pytest.mark.parametrize("tie", [True, False])
def test_llama_tied_head_listed_once(tie):
    model = llama(tie=tie)
    refs = display_matrices(model)
    if tie:
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert [r.name for r in refs] == ["model.embed_tokens"]
    else:
        assert model.lm_head.weight is not model.model.embed_tokens.weight
        assert [r.name for r in refs] == ["model.embed_tokens", "lm_head"]
        assert refs[1].kind == "lm_head"
        assert refs[1].shape == (VOCAB, HIDDEN)
        assert not refs[1].transposed
    assert all(not r.prunable for r in refs)


def test_all_matrices_is_display_then_prunable():
    model = _model("llama")
    refs = all_matrices(model)
    display, prunable = display_matrices(model), prunable_matrices(model)
    assert [r.name for r in refs] == [r.name for r in display + prunable]


def test_no_module_list_raises_user_error():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(UserError, match="cannot find decoder blocks"):
        find_blocks(model)
    with pytest.raises(UserError):
        prunable_matrices(model)


def test_module_list_without_matrices_raises_user_error():
    model = nn.Module()
    model.norms = nn.ModuleList(nn.LayerNorm(8) for _ in range(3))
    with pytest.raises(UserError):
        find_blocks(model)


def test_largest_uniform_module_list_wins():
    model = nn.Module()
    model.small = nn.ModuleList(nn.Linear(4, 4) for _ in range(4))
    model.mixed = nn.ModuleList([nn.Linear(64, 64), nn.Sequential(nn.Linear(64, 64))])  # two classes: not blocks
    model.big = nn.ModuleList(nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16)) for _ in range(2))
    blocks = find_blocks(model)
    assert blocks.path == "big"
    assert len(blocks.modules) == 2
    refs = prunable_matrices(model)
    assert [r.name for r in refs] == ["big.0.0", "big.0.1", "big.1.0", "big.1.1"]
    assert [r.kind for r in refs] == ["0", "1", "0", "1"]
