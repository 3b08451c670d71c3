"""Synthetic checkpoints: a model folder of random weights shaped by a config, written tensor
by tensor, without ever holding the model in memory.

For benchmarks at sizes this machine cannot hold (bench/scale.py). The tensors' names, shapes
and order come from a meta-device skeleton of the model (no memory). Then each module's own
tensors, alone, are materialised on the CPU in the checkpoint's dtype, initialised by the
model's own `_init_weights` (normal with std = initializer_range for linear and embedding
weights, ones for norms: activations stay finite), streamed into a safetensors shard and
dropped. Peak memory is one module's own tensors: for Llama-2-7B the 32000 x 4096 embedding,
250 MiB in bf16, whatever the depth.

The folder is what `save_pretrained` writes and plain transformers loads: config.json,
generation_config.json, safetensors shards of at most `shard_bytes` each (model.safetensors,
or model-0000i-of-0000n.safetensors + model.safetensors.index.json), and `byte_tokenizer()`,
which the config's vocabulary covers. It appears whole or not at all (alphaprune/atomic.py).

    from alphaprune.synthetic import llama2_7b, write_synthetic
    write_synthetic("ckpt/llama2-7b-L2", llama2_7b(layers=2), seed=0, shard_bytes=2 * 2**30)

bench/scale.py writes these from the command line.
"""

from __future__ import annotations

import copy
import json
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alphaprune import atomic
from alphaprune.errors import UserError

Progress = Callable[[float, str], None]
SAFETENSORS_DTYPES = {  # torch dtype -> the safetensors header's name
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
INDEX_NAME = "model.safetensors.index.json"


def llama2_7b(layers: int = 32):
    """Llama-2-7B's shape (hidden 4096, MLP 11008, 32 heads, vocab 32000, context 4096) with
    `layers` decoder blocks; 32 is the real model (6.74 B parameters, 13.5 GB in bf16)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def tiny_llama(layers: int = 2, hidden: int = 64, **overrides):
    """A Llama a few hundred kB big, laid out like `llama2_7b` (for tests and `--preset tiny`);
    `overrides` are LlamaConfig fields (tests/conftest.py's tiny models are built from it)."""
    from transformers import LlamaConfig

    fields = dict(intermediate_size=2 * hidden + 48, num_attention_heads=4, num_key_value_heads=4, vocab_size=320,
                  max_position_embeddings=512, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, **{**fields, **overrides})


def byte_tokenizer():
    """A byte-level tokenizer with Llama's special ids (<unk> 0, <s> 1, </s> 2) and the 256
    bytes as 3..258: any text, no files, no network; it adds a BOS like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {"<unk>": 0, "<s>": 1, "</s>": 2}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())  # one printable character per byte
    vocab = {**specials, **{ch: len(specials) + i for i, ch in enumerate(alphabet)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: a token per byte
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", add_bos_token=True
    )


@dataclass(frozen=True)
class Entry:
    """One tensor of the checkpoint: its state_dict name, and where it lives in the skeleton."""

    name: str
    module: nn.Module
    attr: str  # the module's own parameter or buffer
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        numel = 1
        for size in self.shape:
            numel *= size
        return numel * self.dtype.itemsize


def skeleton(config, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """The causal LM of `config` on the meta device, in `dtype` (alphaprune/checkpoint.py)."""
    from alphaprune.checkpoint import skeleton as meta_skeleton

    return meta_skeleton(config, dtype)


def entries(model: nn.Module) -> list[Entry]:
    """The tensors save_pretrained would write, in state_dict order; a tied tensor (lm_head
    sharing the embedding) is written once, under its first name, as save_pretrained does."""
    seen, out = set(), []
    for prefix, module in model.named_modules():
        skip = module._non_persistent_buffers_set
        own = [(k, t) for k, t in (*module._parameters.items(), *module._buffers.items()) if k not in skip]
        for attr, tensor in own:
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            name = f"{prefix}.{attr}" if prefix else attr
            out.append(Entry(name, module, attr, tuple(tensor.shape), tensor.dtype))
    return out


def plan_shards(items: list[Entry], shard_bytes: int) -> list[list[Entry]]:
    """Consecutive groups of at most `shard_bytes` each (a bigger tensor gets a shard of its own)."""
    if shard_bytes < 1:
        raise UserError(f"the shard size must be at least 1 byte, got {shard_bytes}")
    shards: list[list[Entry]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """File names as save_pretrained gives them: one file, or model-0000i-of-0000n."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def _tensors(model: nn.Module, items: list[Entry], seed: int) -> Iterator[torch.Tensor]:
    """The entries' tensors in order, random as the model initialises them. Each module's own
    tensors are materialised together (its init may touch all of them) and dropped back to
    the meta device once the last one is consumed."""
    last = {id(item.module): item for item in items}  # each module's last entry
    state = torch.Generator().manual_seed(seed).get_state()  # this stream's own RNG
    for i, item in enumerate(items):
        if i == 0 or items[i - 1].module is not item.module:
            state = _materialise(model, item.module, state)
        yield getattr(item.module, item.attr)
        if last[id(item.module)] is item:
            item.module.to_empty(device="meta", recurse=False)  # frees its CPU memory


def _materialise(model: nn.Module, module: nn.Module, state: torch.Tensor) -> torch.Tensor:
    """The module's own tensors on the CPU, zeroed, then set by the model's own initialiser
    drawing from RNG `state`; returns the state after. The caller's RNG is left as it was."""
    module.to_empty(device="cpu", recurse=False)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.set_rng_state(state)
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None:
                tensor.zero_()  # no uninitialised memory in a tensor the initialiser does not set
        model._init_weights(module)
        return torch.get_rng_state()


def _header(shard: list[Entry]) -> bytes:
    """The safetensors header of a shard: JSON of names, dtypes, shapes and byte ranges,
    padded with spaces to 8 bytes, after its little-endian u64 length."""
    meta, offset = {"__metadata__": {"format": "pt"}}, 0
    for item in shard:
        dtype = SAFETENSORS_DTYPES[item.dtype]
        meta[item.name] = {"dtype": dtype, "shape": list(item.shape), "data_offsets": [offset, offset + item.nbytes]}
        offset += item.nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _write_tensor(handle, tensor: torch.Tensor, item: Entry) -> None:
    if tuple(tensor.shape) != item.shape or tensor.dtype != item.dtype:  # the header promised these
        raise RuntimeError(f"{item.name}: got {tuple(tensor.shape)} {tensor.dtype}, planned {item.shape} {item.dtype}")
    handle.write(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)


def _write_weights(folder: Path, model: nn.Module, shards: list[list[Entry]], seed: int, progress) -> None:
    """Every shard, streamed: header first, then each tensor's bytes as it is made."""
    items = [item for shard in shards for item in shard]
    stream = _tensors(model, items, seed)
    total, written = sum(item.nbytes for item in items), 0
    for shard, name in zip(shards, shard_names(len(shards)), strict=True):
        with open(folder / name, "wb") as handle:
            handle.write(_header(shard))
            for item in shard:
                _write_tensor(handle, next(stream), item)  # no reference outlives the call
                written += item.nbytes
                if progress is not None:
                    progress(written / total, f"{item.name} -> {name}")
    if len(shards) > 1:
        weight_map = {
            item.name: file for shard, file in zip(shards, shard_names(len(shards)), strict=True) for item in shard
        }
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")


def _check_vocab(config, tokenizer) -> None:
    if config.vocab_size < len(tokenizer):
        raise UserError(
            f"the config's vocabulary ({config.vocab_size} ids) is smaller than the synthetic tokenizer's "
            f"({len(tokenizer)}); give a config with vocab_size {len(tokenizer)} or more"
        )


def _check_disk(folder: Path, need: int) -> None:
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if need > free:
        raise UserError(
            f"the checkpoint needs {need / 2**30:.1f} GiB of disk, {free / 2**30:.1f} GiB is free at {parent}"
        )


def checkpoint_bytes(config, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of weights write_synthetic would write for `config` (nothing is written)."""
    return sum(item.nbytes for item in entries(skeleton(config, dtype)))


def write_synthetic(
    folder,
    config,
    seed: int = 0,
    shard_bytes: int = 2 * 2**30,
    progress: Progress | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write a checkpoint of random weights shaped by `config` into `folder` (replaced if it
    exists); returns the folder. Memory: one module's own tensors (see the module docstring)."""
    folder = Path(folder).expanduser()
    config = copy.deepcopy(config)  # the caller's config keeps its fields
    tokenizer = byte_tokenizer()
    _check_vocab(config, tokenizer)
    model = skeleton(config, dtype)
    items = entries(model)
    shards = plan_shards(items, shard_bytes)
    _check_disk(folder, sum(item.nbytes for item in items))
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_folder(folder) as tmp:
        _write_weights(tmp, model, shards, seed, progress)
        config.architectures = [type(model).__name__]
        config.dtype = dtype
        config.save_pretrained(tmp)
        _generation_config(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder


def _generation_config(config):
    from transformers import GenerationConfig

    return GenerationConfig.from_model_config(config)
