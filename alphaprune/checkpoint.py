"""Read a model's weights straight from its checkpoint files, one tensor at a time.

A checkpoint is a folder of safetensors (one file or shards with
model.safetensors.index.json: what save_pretrained writes, or a hub snapshot once
downloaded) or a .gguf file. Nothing is instantiated: the model's layout comes from its
config through a skeleton on torch.device("meta") (no memory), and every tensor is read
on demand under the name it has in `model.state_dict()`:

- safetensors: `safetensors.safe_open` (memory-mapped), opened per read, so the pages
  read are unmapped again afterwards and the resident set stays about one tensor.
- GGUF: the tensor table is read once (transformers' header reader; gguf.GGUFReader for
  what it refuses), the config as AutoConfig derives it; a read maps only that tensor's
  bytes, dequantizes them with `gguf.dequantize` and applies transformers' own GGUF name
  map and tensor processor (the q/k un-permutation of LLaMA-style models), so a tensor
  equals what `from_pretrained(gguf_file=...)` puts in the model, in float32. Opening
  SmolLM2's GGUF takes ~8 s (transformers parses the whole vocabulary for the config).

Tied weights: a head tied to the embedding has no stored tensor of its own; its name
reads the embedding's (and the other way round when only the head was stored).

    from alphaprune.checkpoint import checkpoint_location, open_checkpoint
    ckpt = open_checkpoint(checkpoint_location("smollm2-135m"))  # or a folder / .gguf path
    ckpt.kind, ckpt.dtype, ckpt.nbytes()                         # "safetensors", torch.float32, ...
    w = ckpt.tensor("model.layers.0.mlp.up_proj.weight")         # (1536, 576), CPU
    meta = ckpt.skeleton()                                       # the model on the meta device
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alphaprune import models
from alphaprune.errors import UserError

INDEX_NAME = "model.safetensors.index.json"
_GGUF_PLAIN = {0: np.float32, 1: np.float16, 28: np.float64, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64}
_ST_DTYPES = {  # safetensors' dtype strings -> torch
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


def skeleton(config, dtype: torch.dtype | None = None) -> nn.Module:
    """The causal LM of `config` on the meta device (no memory), its tied weights tied;
    parameters in `dtype` (default: transformers' own choice)."""
    from transformers import AutoModelForCausalLM

    models._quiet_transformers()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype is not None else {}))
    model.tie_weights()
    return model.eval()


def _tied_groups(model: nn.Module) -> list[list[str]]:
    """Names of parameters that share one tensor, e.g. [['model.embed_tokens.weight', 'lm_head.weight']]."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


class Checkpoint:
    """The weights of one checkpoint, read tensor by tensor (see the module docstring).

    A subclass indexes its files, hands `_resolve` the stored key of each state_dict name,
    and reads one stored key in `_read`.
    """

    kind: str

    def __init__(self, location: str, config) -> None:
        self.location = location
        self.config = config
        self._names: dict[str, str] = {}  # state_dict name -> stored key, set by the subclass

    @cached_property
    def _skeleton(self) -> nn.Module:
        return skeleton(self.config)

    def skeleton(self) -> nn.Module:
        """This checkpoint's model on the meta device (built once per checkpoint)."""
        return self._skeleton

    def _resolve(self, stored: dict[str, str]) -> None:
        """Keep the stored keys the model has, in state_dict order, tied names included."""
        expected = self._skeleton.state_dict()
        for group in _tied_groups(self._skeleton):  # as from_pretrained ties: a missing name reads the stored one
            source = next((stored[n] for n in group if n in stored), None)
            if source is not None:
                stored.update({n: source for n in group if n not in stored})
        self._names = {name: stored[name] for name in expected if name in stored}
        self._shapes = {name: tuple(t.shape) for name, t in expected.items()}

    @property
    def dtype(self) -> torch.dtype:
        raise NotImplementedError

    def names(self) -> list[str]:
        """Tensor names as `model.state_dict()` keys, in that order (tied names included)."""
        return list(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        self._key(name)
        return self._shapes[name]

    def _key(self, name: str) -> str:
        if name not in self._names:
            raise UserError(
                f"{self.location} has no tensor {name} (the config asks for it): the checkpoint is incomplete; "
                "save or download it again"
            )
        return self._names[name]

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name` on the CPU, in the stored dtype (GGUF: float32), HF layout."""
        return self._read(self._key(name))

    def _read(self, key: str) -> torch.Tensor:
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes of all weights as stored (GGUF: quantized), each tied tensor counted once."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r}, {len(self._names)} tensors)"


class SafetensorsCheckpoint(Checkpoint):
    """A folder of *.safetensors (sharded through its index, or every file in it)."""

    kind = "safetensors"

    def __init__(self, folder: Path, config) -> None:
        super().__init__(str(folder), config)
        self._files: dict[str, Path] = {}  # stored key -> file
        self._meta: dict[str, tuple[str, tuple[int, ...]]] = {}  # stored key -> (dtype string, shape)
        for file in _shard_files(folder):
            self._index_file(file)
        self._resolve(_state_dict_names(self._skeleton, list(self._files)))

    def _index_file(self, file: Path) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if key in self._files:
                        continue
                    piece = handle.get_slice(key)
                    self._files[key] = file
                    self._meta[key] = (piece.get_dtype(), tuple(piece.get_shape()))
        except (SafetensorError, OSError) as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            raise UserError(f"cannot read {file} ({why}): the file is damaged or truncated; get it again") from None

    @property
    def dtype(self) -> torch.dtype:
        """The dtype holding most of the stored float bytes (norms may be float32 beside bf16)."""
        by_dtype: Counter = Counter()
        for key in set(self._names.values()):
            code, shape = self._meta[key]
            dtype = _ST_DTYPES.get(code)
            if dtype is not None and dtype.is_floating_point:
                by_dtype[dtype] += int(np.prod(shape)) * dtype.itemsize
        return by_dtype.most_common(1)[0][0] if by_dtype else torch.float32

    def _read(self, key: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        try:  # opened per read: closing unmaps the pages read, so they leave the resident set
            with safe_open(str(self._files[key]), framework="pt") as handle:
                return handle.get_tensor(key)
        except (SafetensorError, OSError) as exc:
            why = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
            raise UserError(f"cannot read {key} from {self._files[key]} ({why}): get the checkpoint again") from None

    def nbytes(self) -> int:
        total = 0
        for key in set(self._names.values()):
            code, shape = self._meta[key]
            total += int(np.prod(shape)) * _ST_DTYPES[code].itemsize if code in _ST_DTYPES else 0
        return total


def _state_dict_names(model: nn.Module, keys: list[str]) -> dict[str, str]:
    """{state_dict name: stored key}, renamed the way from_pretrained renames checkpoint keys
    (its renamings, and the base-model prefix added or dropped). A key that transformers
    converts (fuses or splits, e.g. MoE experts) is left out: it is no single stored tensor."""
    from copy import deepcopy

    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    mapping = deepcopy(get_model_conversion_mapping(model))  # renamings keep state: a copy per checkpoint
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    meta, prefix = model.state_dict(), model.base_model_prefix
    names: dict[str, str] = {}
    for key in sorted(keys, key=dot_natural_key):  # in from_pretrained's order, as its renamings expect
        name, converted = rename_source_key(key, renamings, converters, prefix, meta)
        if name not in meta and key in meta:  # renamed by mistake: only the prefix may change
            name, converted = rename_source_key(key, [], [], prefix, meta)
        if converted is None and name in meta:
            names.setdefault(name, key)
    return names


def _shard_files(folder: Path) -> list[Path]:
    """The files the index names (save_pretrained's shards), else every *.safetensors."""
    index = folder / INDEX_NAME
    if not index.is_file():
        return sorted(folder.glob("*.safetensors"))
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted({folder / name for name in weight_map.values()})
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{index} is broken ({type(exc).__name__}): save or download the model again") from None
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise UserError(f"{folder} lacks the shard {missing[0]} its index names: save or download the model again")
    return files


class GGUFCheckpoint(Checkpoint):
    """A .gguf file, dequantized tensor by tensor the way transformers loads it."""

    kind = "gguf"

    def __init__(self, path: Path, config, table: dict, gguf_config: dict, architecture: str) -> None:
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
        )

        super().__init__(str(path), config)
        self._table = table  # gguf name -> (ggml type, numpy dtype, numpy shape, file offset, bytes)
        self._processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=gguf_config)
        # gguf name -> state_dict name: transformers' own map, over the model and its direct children only
        self._to_hf = get_gguf_hf_weights_map(_Shallow(self._skeleton), self._processor)
        self._sources: dict[str, list[str]] = {}  # state_dict name -> the gguf tensors it is made of
        for gguf_name in table:
            if gguf_name in self._to_hf:
                self._sources.setdefault(self._to_hf[gguf_name], []).append(gguf_name)
        self._resolve({name: name for name in self._sources})

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # dequantized

    def _read(self, key: str) -> torch.Tensor:
        from gguf import dequantize

        parsed: dict = {"tensors": {}}  # where a processor puts what it assembles itself (GPT-2's head, MoE)
        weights = None
        for gguf_name in self._sources[key]:
            qtype, dtype, shape, offset, _ = self._table[gguf_name]
            raw = np.memmap(self.location, dtype=dtype, mode="r", offset=offset, shape=shape)  # this tensor only
            result = self._processor.process(
                weights=dequantize(raw, qtype),
                name=gguf_name,
                tensor_key_mapping=self._to_hf,
                parsed_parameters=parsed,
            )
            if result.name is not None:  # float32 in the file: a view of the mapping, which goes with `raw`
                weights = np.copy(result.weights) if np.may_share_memory(result.weights, raw) else result.weights
            del raw
        tensor = parsed["tensors"][key] if key in parsed["tensors"] else torch.from_numpy(weights)
        return tensor.to(torch.float32)

    def nbytes(self) -> int:
        used = {g for key in set(self._names.values()) for g in self._sources[key]}
        return sum(self._table[g][4] for g in used)


class _Shallow:
    """A model as get_gguf_hf_weights_map walks it, down to its direct children only.

    That function maps the whole state_dict at the top and recurses into every module for
    checkpoints converted from a base model (their names lack the prefix): one level of
    children covers those, and the full walk costs ~14 s on a 30-block model."""

    def __init__(self, module: nn.Module, depth: int = 1) -> None:
        self.module, self.depth = module, depth
        self.config = getattr(module, "config", None)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def named_children(self) -> list:
        if self.depth == 0:
            return []
        return [(name, _Shallow(child, self.depth - 1)) for name, child in self.module.named_children()]


def _gguf_table(path: Path) -> tuple[dict, str]:
    """({gguf name: (type, numpy dtype, shape, offset, bytes)}, architecture), data untouched.

    transformers' header reader parses the table in milliseconds; gguf's GGUFReader (which
    parses the whole vocabulary too, ~4 s here) only reads what that one refuses."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape
    from transformers.integrations.gguf.reader import GgufHeader

    try:
        header = GgufHeader.from_file(str(path))
    except Exception:  # a type transformers' reader lacks, big-endian, or damaged: gguf's reader says which
        return _gguf_table_slow(path)
    size, table = path.stat().st_size, {}
    for info in header.tensors:
        qtype = GGMLQuantizationType(info.ggml_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
        dtype = _GGUF_PLAIN.get(qtype, np.uint8)
        shape = info.shape if qtype in _GGUF_PLAIN else quant_shape_to_byte_shape(info.shape, qtype)
        start, nbytes = header.data_start + info.offset, int(np.prod(info.shape)) * type_size // block
        table[info.name] = (qtype, np.dtype(dtype), tuple(shape), start, nbytes)
    _check_extent(path, table, size)
    return table, header.architecture


def _gguf_table_slow(path: Path) -> tuple[dict, str]:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        arch_field = reader.fields["general.architecture"]
        architecture = bytes(arch_field.parts[arch_field.data[0]]).decode()
    except Exception as exc:  # gguf's parser fails in many ways on a damaged file, all meaning the same
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"cannot read {path}: the GGUF file is damaged or truncated ({why}); get it again") from None
    if reader.byte_order != "I":
        raise UserError(f"{path} is a big-endian GGUF file: get a little-endian one (as llama.cpp writes by default)")
    table = {
        t.name: (t.tensor_type, t.data.dtype, tuple(t.data.shape), int(t.data_offset), int(t.n_bytes))
        for t in reader.tensors
    }
    _check_extent(path, table, path.stat().st_size)
    return table, architecture


def _check_extent(path: Path, table: dict, size: int) -> None:
    for name, (*_, start, nbytes) in table.items():
        if start + nbytes > size:
            raise UserError(f"{path} is truncated (tensor {name} runs past its end): get the file again")


def _gguf_config(path: Path, location: str):
    """(config, the raw config dict transformers' tensor processors read), from one parse.

    AutoConfig.from_pretrained(folder, gguf_file=...) is get_config_dict (which parses the
    whole file, vocabulary included: ~8 s for SmolLM2) then the model type's from_dict; done
    here in those two steps so the file is parsed once (tests compare it with AutoConfig)."""
    from transformers import PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    models._quiet_transformers()
    try:
        raw, _ = PretrainedConfig.get_config_dict(str(path.parent), gguf_file=path.name)
        config = CONFIG_MAPPING[raw["model_type"]].from_dict(copy.deepcopy(raw))
    except Exception as exc:  # transformers' GGUF metadata parser: damaged, or an architecture it lacks
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(
            f"cannot read the config of {location} ({why}): the GGUF file is damaged or unsupported"
        ) from None
    config.name_or_path = str(path.parent)  # as from_pretrained records it
    return config, raw


def _open_gguf(path: Path, location: str) -> GGUFCheckpoint:
    from transformers.integrations.gguf import is_gguf_arch_supported

    models._check_gguf_file(path, location)
    table, architecture = _gguf_table(path)
    if is_gguf_arch_supported(architecture):  # transformers' newer GGUF loader, whose conversions differ
        raise UserError(
            f"{location} is a {architecture} GGUF, which alphaprune cannot read tensor by tensor yet: "
            "load it once and save it as safetensors (save_pretrained), then give that folder"
        )
    config, raw = _gguf_config(path, location)
    models._check_causal(config, location)
    return GGUFCheckpoint(path, config, table, raw, architecture)


def _open_folder(folder: Path, location: str) -> SafetensorsCheckpoint:
    from transformers import AutoConfig

    models._check_folder(folder, location)
    models._quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (ValueError, KeyError, OSError) as exc:
        why = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(
            f"cannot read the config of {location} ({why}): save the model again with save_pretrained"
        ) from None
    models._check_causal(config, location)
    return SafetensorsCheckpoint(folder, config)


def open_checkpoint(location: str) -> Checkpoint:
    """A model folder of safetensors (sharded or not), a hub snapshot folder, or a .gguf file."""
    path = Path(location).expanduser()
    if path.suffix == ".gguf":
        return _open_gguf(path, location)
    if path.is_dir():
        return _open_folder(path, location)
    if path.exists():
        raise UserError(f"{location} is not a checkpoint: give a model folder of safetensors or a .gguf file")
    raise UserError(f"no such checkpoint: {location}; give a model folder of safetensors or a .gguf file")


def checkpoint_location(spec: str) -> str:
    """The checkpoint a model spec reads (what `load_model(spec)` would load), for open_checkpoint.

    The bundled model and GGUF files: the float32 folder they were dequantized into once
    (models._gguf_cache_folder, what the in-memory path loads) when it exists, else the
    GGUF itself. A hub id: its snapshot in the local Hugging Face cache (never downloaded).
    """
    source, location = models.resolve_spec(spec)
    if source in ("bundled", "gguf"):
        folder = models._gguf_cache_folder(Path(location))
        whole = (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
        return str(folder) if whole else location
    if source == "hub":
        return _hub_snapshot(location)
    return location


def _hub_snapshot(repo: str) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo, local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise UserError(
            f"{repo} is not in the local Hugging Face cache: download it first (`hf download {repo}`) "
            "or give a local folder or a .gguf"
        ) from None
