"""A model's weights read from its checkpoint files, one tensor at a time (PLACEHOLDER).

This is a minimal stand-in for helper A's alphaprune/checkpoint.py, with the same
interface (brief of issue 10), so that alphaprune/stream.py and its tests run before A's
module is merged: the merge takes A's file whole. It reads only local safetensors folders
(one file or shards with an index); A's also reads hub snapshots and GGUF.

    ckpt = open_checkpoint("folder")      # UserError if it is not a safetensors model folder
    ckpt.config, ckpt.dtype, ckpt.names(), ckpt.shape(name), ckpt.tensor(name), ckpt.nbytes()
    model = skeleton(ckpt.config)         # the model on torch.device("meta"), no memory
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from alphaprune.errors import UserError

_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


class Checkpoint:
    """The safetensors files of a model folder, read one tensor at a time. Each read maps the
    file and unmaps it again: kept open, the pages read stay in the process's RSS (ru_maxrss
    counts mapped file pages), which then grows with every block read."""

    def __init__(self, location: str, config, files: dict[str, Path]):
        self.location, self.kind, self.config = location, "safetensors", config
        self._files = files  # tensor name -> file holding it

    def _read(self, name: str, what):
        from safetensors import safe_open

        with safe_open(str(self._files[name]), framework="pt") as handle:
            return what(handle)

    def names(self) -> list[str]:
        return list(self._files)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._read(name, lambda h: h.get_slice(name).get_shape()))

    def tensor(self, name: str) -> torch.Tensor:
        return self._read(name, lambda h: h.get_tensor(name))

    @property
    def dtype(self) -> torch.dtype:
        first = self.names()[0]
        return _DTYPES[self._read(first, lambda h: h.get_slice(first).get_dtype())]

    def nbytes(self) -> int:
        return sum(math.prod(self.shape(name)) * self._itemsize(name) for name in self.names())

    def _itemsize(self, name: str) -> int:
        return torch.finfo(_DTYPES[self._read(name, lambda h: h.get_slice(name).get_dtype())]).bits // 8


def _weight_files(folder: Path) -> dict[str, Path]:
    from safetensors import safe_open

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: folder / shard for name, shard in weight_map.items()}
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            files.update({name: path for name in handle.keys()})  # noqa: SIM118 (not a dict)
    return files


def open_checkpoint(location: str) -> Checkpoint:
    """A local model folder of safetensors (sharded or not)."""
    from transformers import AutoConfig

    folder = Path(location)
    files = _weight_files(folder) if folder.is_dir() else {}
    if not files:
        raise UserError(f"{location} is not a folder of safetensors files: give a folder written by save_pretrained")
    return Checkpoint(str(folder), AutoConfig.from_pretrained(folder), files)


def skeleton(config) -> nn.Module:
    """The causal LM of `config` on the meta device: shapes and structure, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
