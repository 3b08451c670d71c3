"""The preflight: memory estimates from a model's shapes, and in-memory vs streamed.

.venv/bin/python -m pytest tests/test_preflight.py -q
"""

from __future__ import annotations

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from alphaprune import preflight
from alphaprune.errors import UserError
from alphaprune.preflight import GiB, ModelShape, Work, estimate, plan_step


def _tiny():
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _llama7b(layers: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
    )  # fmt: skip


def test_shape_counts_every_weight_once():
    model = _tiny()
    shape = ModelShape.from_model(model, stored_bytes=2)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert shape.params == sum(unique.values())
    assert shape.blocks == 3
    assert shape.block_params == sum(p.numel() for p in model.model.layers[0].parameters())
    assert shape.largest_matrix == (128, 64)  # gate/up (out 128, in 64)
    assert shape.widest_input == 128  # down_proj's input
    assert shape.non_block_params == shape.params - 3 * shape.block_params


def test_shape_of_a_7b_config_needs_no_memory():
    """From a meta-device skeleton: 6.7e9 weights counted without allocating any."""
    shape = ModelShape.from_config(_llama7b(32), stored_bytes=2)
    assert 6.7e9 < shape.params < 6.8e9
    assert shape.blocks == 32 and shape.largest_matrix in ((11008, 4096), (4096, 11008))


def test_streamed_estimates_are_flat_in_depth_and_fit_the_issue_bars():
    """The estimate for 8 layers streamed stays within the bars of issue 10, and does not
    grow with depth: a preflight that refused these runs would make streaming useless."""
    work = Work(samples=4, seqlen=128, pruner="wanda")
    shallow, deep = (ModelShape.from_config(_llama7b(n), stored_bytes=2) for n in (8, 32))
    assert estimate("prune", "disk", shallow, work) == estimate("prune", "disk", deep, work)
    assert estimate("prune", "disk", shallow, work) < 3 * GiB
    assert estimate("eval", "disk", shallow, Work(samples=2, seqlen=128)) < 3 * GiB
    assert estimate("analyze", "disk", deep, Work(workers=1)) < 2 * GiB
    assert estimate("prune", "none", deep, work) > 40 * GiB  # the model twice, in float32


@pytest.mark.parametrize(("ram_gib", "expected"), [(200.0, "none"), (12.0, "cpu"), (4.0, "disk")])
def test_auto_takes_the_first_path_that_fits(ram_gib, expected):
    shape = ModelShape.from_config(_llama7b(8), stored_bytes=2)
    plan = plan_step("prune", shape, Work(samples=4, seqlen=128, pruner="wanda"), ram=int(ram_gib * GiB))
    assert plan.path == expected
    assert plan.streamed == (expected != "none")
    assert dict(plan.estimates)[expected] == plan.need
    assert "GiB" in plan.describe()


def test_refusal_gives_the_numbers_in_one_line():
    shape = ModelShape.from_config(_llama7b(8), stored_bytes=2)
    with pytest.raises(UserError) as err:
        plan_step("prune", shape, Work(samples=4, seqlen=128, pruner="sparsegpt"), ram=1 * GiB)
    message = str(err.value)
    assert "\n" not in message
    assert "streamed from the files needs about" in message and "1.0 GiB is free" in message
    assert "--calib-samples" in message and "**Calibration samples**" in err.value.render("app")


def test_a_forced_path_that_does_not_fit_is_refused_not_replaced():
    shape = ModelShape.from_config(_llama7b(8), stored_bytes=2)
    with pytest.raises(UserError, match="in memory needs about .* try --offload auto"):
        plan_step("eval", shape, Work(samples=2, seqlen=128), offload="none", ram=8 * GiB)
    assert plan_step("eval", shape, Work(samples=2, seqlen=128), offload="disk", ram=8 * GiB).path == "disk"


def test_disk_needs_files_and_offload_names_are_checked():
    shape = ModelShape.from_model(_tiny(), stored_bytes=4)
    with pytest.raises(UserError, match="has none on disk"):
        plan_step("eval", shape, Work(samples=1, seqlen=8), offload="disk", has_files=False)
    with pytest.raises(UserError, match="offload must be one of"):
        plan_step("eval", shape, Work(samples=1, seqlen=8), offload="gpu")
    plan = plan_step("eval", shape, Work(samples=1, seqlen=8), has_files=False, ram=100 * GiB)
    assert [p for p, _ in plan.estimates] == ["none", "cpu"]


def test_gpu_memory_is_checked_too():
    shape = ModelShape.from_config(_llama7b(32), stored_bytes=2)
    work = Work(samples=4, seqlen=128, pruner="wanda", compute_bytes=2)
    plan = plan_step("prune", shape, work, device="cuda", ram=500 * GiB, vram=20 * GiB)
    assert plan.path == "cpu"  # 13.5 GB of bf16 twice does not fit 20 GB of VRAM; one block does
    with pytest.raises(UserError, match="on the GPU"):
        plan_step("prune", shape, work, offload="none", device="cuda", ram=500 * GiB, vram=20 * GiB)


def test_free_memory_is_read_from_this_machine():
    have = preflight.memory_available()
    assert have is not None and 0 < have < 2**50
