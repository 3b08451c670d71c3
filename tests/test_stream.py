"""Block-by-block pruning and evaluation (alphaprune/stream.py) against the in-memory path.

Tiny LLaMA and GPT-2 checkpoints (bf16 and float32, written by save_pretrained) are pruned
and evaluated one block at a time, from the files and from a dense model in memory, and
compared with prune_model / perplexity() on the same weights in float32: identical masks
and weights as written, the saved folder loads in plain transformers with the zeros
recorded and its dtype, per-window losses equal, and the dense source stays untouched.
One slow test does the same on the default model against today's run path.

    .venv/bin/python -m pytest tests/test_stream.py -q
"""

from __future__ import annotations

import copy
import gc
import json
import math

import pytest
import torch
from conftest import tiny_llama, tiny_tokenizer
from safetensors import safe_open
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from alphaprune import stream
from alphaprune.arch import prunable_matrices
from alphaprune.checkpoint import open_checkpoint
from alphaprune.perplexity import perplexity
from alphaprune.prune import owl_outlier_ratios, prune_model
from alphaprune.stream import MemorySource, stream_nll, stream_outlier_ratios, stream_perplexity, stream_prune

PRUNES = {  # name -> (pruner, N:M pattern)
    "magnitude": ("magnitude", None),
    "wanda": ("wanda", None),
    "sparsegpt": ("sparsegpt", None),
    "wanda-2:4": ("wanda", (2, 4)),
}


def _tiny_gpt2(layers: int):
    torch.manual_seed(1)
    config = GPT2Config(n_embd=32, n_layer=layers, n_head=4, vocab_size=300, n_positions=256)
    return GPT2LMHeadModel(config).eval()


def _checkpoint(tmp_path, arch: str, dtype: torch.dtype, layers: int = 2):
    """A model folder written by save_pretrained (weights in `dtype`) with its tokenizer."""
    if arch.startswith("llama"):
        model = tiny_llama(layers=layers, hidden=32, tie=arch == "llama")
    else:
        model = _tiny_gpt2(layers)
    folder = tmp_path / f"{arch}-{str(dtype)[6:]}"
    model.to(dtype).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _dense(folder):
    """The checkpoint in memory in float32, as the in-memory path holds it."""
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _windows(count: int = 3, seqlen: int = 16, seed: int = 0):
    return torch.randint(0, 96, (count, seqlen), generator=torch.Generator().manual_seed(seed))


def _ratios(model):
    """Different sparsities per matrix, so a mix-up of matrices shows."""
    return {ref.name: 0.3 + 0.1 * (i % 4) for i, ref in enumerate(prunable_matrices(model))}


def _saved_tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            out.update({name: handle.get_tensor(name) for name in handle.keys()})  # noqa: SIM118
    return out


@pytest.mark.parametrize("prune", list(PRUNES))
@pytest.mark.parametrize("arch,dtype", [("llama", torch.bfloat16), ("llama", torch.float32), ("gpt2", torch.bfloat16)])
def test_stream_prune_writes_what_prune_model_computes(tmp_path, arch, dtype, prune):
    pruner, nm = PRUNES[prune]
    folder = _checkpoint(tmp_path, arch, dtype)
    reference = _dense(folder)
    ratios = _ratios(reference) if nm is None else {ref.name: 0.5 for ref in prunable_matrices(reference)}
    calib = _windows(seed=1)
    prune_model(reference, ratios, pruner, nm, calib)
    seen = []
    progress = lambda fraction, message: seen.append(fraction)  # noqa: E731
    result = stream_prune(open_checkpoint(folder), ratios, pruner, nm, calib, tmp_path / "out", progress)

    saved = _saved_tensors(tmp_path / "out")
    assert {t.dtype for t in saved.values()} == {dtype}  # bf16 stays bf16, float32 stays float32
    for name, tensor in reference.state_dict().items():  # every tensor, pruned or not, as written
        if name in saved:
            assert torch.equal(saved[name], tensor.to(dtype)), name
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # plain transformers
    assert loaded.dtype == dtype
    for ref, mine in zip(prunable_matrices(reference), prunable_matrices(loaded), strict=True):
        assert torch.equal(mine.weight() == 0, ref.weight() == 0), ref.name  # the same mask
        zeros = float((mine.weight() == 0).sum()) / mine.weight().numel()
        assert result.matrix_sparsity[ref.name] == zeros  # exactly the zeros recorded
    assert (result.device, result.dtype, result.saved_dtype) == ("cpu", "float32", str(dtype)[6:])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == str(dtype)[6:]
    blocks = len({ref.block for ref in prunable_matrices(loaded)})
    assert len(list((tmp_path / "out").glob("model-*-of-*.safetensors"))) == blocks + 1
    assert seen == sorted(seen) and len(seen) == blocks + 1 and seen[-1] == 1.0  # per block, then saved


def test_one_shard_per_block_and_an_index(tmp_path):
    folder = _checkpoint(tmp_path, "llama-untied", torch.bfloat16, layers=3)
    source = open_checkpoint(folder)
    ratios = _ratios(_dense(folder))
    stream_prune(source, ratios, "magnitude", None, None, tmp_path / "out")
    shards = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert shards == [f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)]  # 3 blocks + the rest
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(source.names())  # the untied head is saved too
    assert {v for k, v in index["weight_map"].items() if ".layers.1." in k} == {shards[1]}
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in _saved_tensors(tmp_path / "out").values())
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.vocab_size == 300


def test_one_block_resident_at_a_time(tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path, "llama", torch.bfloat16, layers=3)
    resident = []
    load = stream._Onloader.load

    def counting_load(self, index):
        block = load(self, index)
        real = [i for i, b in enumerate(self.blocks.modules) if any(p.device.type != "meta" for p in b.parameters())]
        resident.append(real)
        return block

    monkeypatch.setattr(stream._Onloader, "load", counting_load)
    source = open_checkpoint(folder)
    stream_prune(source, _ratios(_dense(folder)), "wanda", None, _windows(), tmp_path / "out")
    stream_perplexity(source, _windows(2))
    assert resident == [[0], [1], [2]] * 2


def _real_tensors_shaped(shape: tuple[int, ...]) -> int:
    """Tensors of `shape` with real storage that Python still tracks (a cycle keeps them)."""
    alive = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and tuple(o.shape) == shape]
    return sum(t.device.type != "meta" for t in alive)


@pytest.mark.parametrize("step", ["perplexity", "prune"])
def test_a_streamed_step_leaves_nothing_onloaded(tmp_path, step):
    """Measured on a 7B-shaped model: a cycle kept the evaluation's embedding and head (1 GB
    in float32) alive into the prune that followed, until a collection happened to run."""
    folder = _checkpoint(tmp_path, "llama-untied", torch.bfloat16)
    source, head = open_checkpoint(folder), tuple(_dense(folder).lm_head.weight.shape)
    gc.collect()
    gc.disable()  # only what the step itself frees counts
    try:
        if step == "perplexity":
            stream_perplexity(source, _windows(2))
        else:
            stream_prune(source, _ratios(_dense(folder)), "wanda", None, _windows(), tmp_path / "out")
        assert _real_tensors_shaped(head) == 0
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "arch,dtype", [("llama", torch.bfloat16), ("llama-untied", torch.float32), ("gpt2", torch.float32)]
)
def test_stream_perplexity_equals_the_in_memory_forward(tmp_path, arch, dtype):
    folder = _checkpoint(tmp_path, arch, dtype)
    dense, windows = _dense(folder), _windows(5)
    per_window = stream_nll(open_checkpoint(folder), windows, batch_size=1)
    for i, (nll, count) in enumerate(per_window):  # every window's loss
        assert math.exp(nll / count) == pytest.approx(perplexity(dense, windows[i : i + 1]), rel=1e-6)
    for source in (open_checkpoint(folder), MemorySource(dense)):
        streamed = stream_perplexity(source, windows, batch_size=2)
        assert streamed == pytest.approx(perplexity(dense, windows, 2), rel=1e-6)


def _state_copy(model) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_dense_memory_source_is_untouched_and_pruned_alike(tmp_path, arch):
    from alphaprune.pipeline import fingerprint

    dense = _dense(_checkpoint(tmp_path, arch, torch.float32))
    before, fp = _state_copy(dense), fingerprint(dense)
    reference, ratios, calib = copy.deepcopy(dense), _ratios(dense), _windows(seed=2)
    prune_model(reference, ratios, "sparsegpt", None, calib)
    result = stream_prune(MemorySource(dense, tiny_tokenizer()), ratios, "sparsegpt", None, calib, tmp_path / "out")
    assert fingerprint(dense) == fp
    assert all(torch.equal(dense.state_dict()[name], t) for name, t in before.items())
    saved = _saved_tensors(tmp_path / "out")
    for name, tensor in reference.state_dict().items():
        if name in saved:
            assert torch.equal(saved[name], tensor), name
    assert result.actual_sparsity > 0.3
    assert (tmp_path / "out" / "tokenizer.json").exists()


def test_a_bf16_checkpoint_loaded_in_float32_is_saved_in_bf16(tmp_path):
    folder = _checkpoint(tmp_path, "gpt2", torch.bfloat16)
    dense, calib = _dense(folder), _windows(seed=4)
    ratios = _ratios(dense)
    stream_prune(open_checkpoint(folder), ratios, "sparsegpt", None, calib, tmp_path / "from-files")
    stream_prune(MemorySource(dense, dtype=torch.bfloat16), ratios, "sparsegpt", None, calib, tmp_path / "from-memory")
    files, memory = _saved_tensors(tmp_path / "from-files"), _saved_tensors(tmp_path / "from-memory")
    assert files.keys() == memory.keys()
    assert all(memory[name].dtype == torch.bfloat16 and torch.equal(memory[name], files[name]) for name in files)


def test_the_tokenizer_is_saved_from_the_folder_and_never_looked_up_for_a_model_in_memory(tmp_path, monkeypatch):
    import transformers

    folder = _checkpoint(tmp_path, "llama", torch.float32)
    ratios = _ratios(_dense(folder))
    stream_prune(open_checkpoint(folder), ratios, "magnitude", None, None, tmp_path / "from-files")
    assert (tmp_path / "from-files" / "tokenizer.json").read_text() == (folder / "tokenizer.json").read_text()
    looked_up = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: looked_up.append(a))
    stream_prune(MemorySource(_dense(folder)), ratios, "magnitude", None, None, tmp_path / "from-memory")
    assert looked_up == [] and not (tmp_path / "from-memory" / "tokenizer.json").exists()


def test_streamed_owl_ratios_equal_the_in_memory_ones(tmp_path):
    folder = _checkpoint(tmp_path, "llama", torch.bfloat16)
    calib = _windows(seed=3)
    streamed = stream_outlier_ratios(open_checkpoint(folder), calib, m=3.0)
    assert streamed == owl_outlier_ratios(_dense(folder), calib, 3.0)


def test_a_failure_midway_leaves_no_folder(tmp_path, monkeypatch):
    folder = _checkpoint(tmp_path, "llama", torch.bfloat16)
    ratios = _ratios(_dense(folder))
    calls = []

    def failing(refs, *args):
        calls.append(refs[0].block)
        if len(calls) == 2:
            raise RuntimeError("disk gone")

    monkeypatch.setattr(stream, "prune_block", failing)
    with pytest.raises(RuntimeError, match="disk gone"):
        stream_prune(open_checkpoint(folder), ratios, "wanda", None, _windows(), tmp_path / "out")
    assert calls == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no folder, no temporary


@pytest.mark.slow
def test_default_model_streamed_equals_the_run(real_model, tmp_path):
    """Wanda at 50% on the default model: streamed from the dense model in memory, then
    evaluated streamed from the saved folder, against the steps of run_prune (today's path:
    a pruned deep copy, evaluated in memory), on the run's own calibration and evaluation windows."""
    from alphaprune import pipeline
    from alphaprune.prune import measured_sparsity

    config = pipeline.PruneConfig(sparsity=0.5, pruner="wanda", calib_samples=4, seqlen=128, eval_windows=2)
    fp = pipeline.fingerprint(real_model.model)
    _, eval_windows, calib_ids = pipeline.read_texts(real_model.tokenizer, config)
    calib = pipeline.text.calibration_windows(calib_ids, config.calib_samples, config.seqlen, config.seed)
    allocation = pipeline.make_allocation(real_model.model, config)
    pruned = pipeline.prune_copy(real_model.model, allocation, config, calib)
    source = MemorySource(real_model.model, real_model.tokenizer)
    streamed = stream_prune(source, allocation.ratios, "wanda", None, calib, tmp_path / "pruned")
    saved = _saved_tensors(tmp_path / "pruned")
    for ref in prunable_matrices(pruned):
        assert torch.equal(saved[ref.name + ".weight"] == 0, ref.weight() == 0), ref.name
    assert streamed.matrix_sparsity == measured_sparsity(pruned)[1]
    ppl = stream_perplexity(open_checkpoint(tmp_path / "pruned"), eval_windows, config.batch_size)
    assert ppl == pytest.approx(perplexity(pruned, eval_windows, config.batch_size), rel=1e-6)
    assert pipeline.fingerprint(real_model.model) == fp  # the dense model untouched
