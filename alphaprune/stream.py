"""Prune and evaluate a model one decoder block at a time (sequential onloading).

The model never sits in memory whole. Its skeleton lives on torch.device("meta"); the
modules outside the decoder blocks (embeddings, rotary embedding, final norm, LM head) are
made real when needed, and each block in turn is made real from a weight source (float32
on the CPU; on CUDA the source's dtype, or float32), used, then dropped back to the meta
device. Activations (windows x seqlen x hidden) stay on the CPU and move to the compute
device one batch at a time: one window for calibration (as prune_model), `batch_size`
windows for perplexity (as perplexity()).

Weight sources: `MemorySource(model)`, a dense model in memory (read only; one block is
copied at a time, never the whole model), or a checkpoint on disk
(`alphaprune.checkpoint.open_checkpoint(folder)`, tensors read from the files).

    from alphaprune.stream import MemorySource, stream_prune, stream_perplexity
    source = MemorySource(loaded.model, loaded.tokenizer)   # or open_checkpoint("folder")
    result = stream_prune(source, ratios, "wanda", None, calib, "pruned", progress=cb)
    result.matrix_sparsity, result.device, result.dtype       # zeros written; what ran
    ppl = stream_perplexity(open_checkpoint("pruned"), windows, batch_size=1)
    outliers = stream_outlier_ratios(source, calib, m=5.0)    # OWL, one per block

stream_prune writes `save_folder` as a sharded save_pretrained that transformers loads as
usual: one safetensors shard per block, written as soon as the block is pruned, in the
source's dtype (bf16 stays bf16), then the other tensors' shard, the index, config.json and
the tokenizer; all through alphaprune.atomic, so a kill leaves no half folder. On a float32
source the masks and perplexities equal prune_model's and perplexity()'s (tests/test_stream.py).
"""

from __future__ import annotations

import copy
import gc
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alphaprune import atomic
from alphaprune.arch import MatrixRef, find_blocks
from alphaprune.calibrate import capture_block_inputs, feed
from alphaprune.errors import UserError
from alphaprune.perplexity import nll_of_logits
from alphaprune.prune import block_outlier_ratio, check_prune, matrices_by_block, needs_activations, prune_block
from alphaprune.registry import NO_REFINER

Progress = Callable[[float, str], None]


class MemorySource:
    """A dense model in memory as a weight source. Its tensors are read, never written:
    blocks are copied one at a time, the other tensors used as they are.

    `dtype` is the dtype its checkpoint stores, in which a save is written (a bf16 checkpoint
    loaded in float32 is saved in bf16 again); by default the model's own dtype."""

    location = "memory"
    kind = "memory"

    def __init__(self, model: nn.Module, tokenizer=None, dtype: torch.dtype | None = None):
        self.model, self.tokenizer = model, tokenizer
        self._state = model.state_dict()  # name -> detached tensor sharing the model's storage
        self._dtype = dtype if dtype is not None else next(model.parameters()).dtype

    @property
    def config(self):
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def names(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def tensor(self, name: str) -> torch.Tensor:
        return self._state[name]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in self._state.values()}.values())


@dataclass(frozen=True)
class StreamResult:
    """What stream_prune wrote and how it ran."""

    folder: str
    matrix_sparsity: dict[str, float]  # share of zeros written, per prunable matrix
    actual_sparsity: float  # zeros written over all prunable weights
    device: str  # where the blocks ran
    dtype: str  # the dtype they were computed in
    saved_dtype: str  # the dtype of the shards (the source's)


def compute_dtype(source, device: torch.device) -> torch.dtype:
    """float32 on the CPU; on CUDA the source's own dtype when it is a half type, else float32."""
    if device.type == "cuda" and source.dtype in (torch.bfloat16, torch.float16):
        return source.dtype
    return torch.float32


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _Onloader:
    """The model of a source on the meta device; parts of it made real, and dropped, on demand."""

    def __init__(self, source, device, dtype: torch.dtype | None):
        from alphaprune.checkpoint import skeleton
        from alphaprune.spectra import resolve_device

        self.source = source
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = dtype if dtype is not None else compute_dtype(source, self.device)
        config = copy.deepcopy(source.config)  # from_config writes to it; the source's stays as it is
        config.dtype = self.dtype  # buffers built in __init__ (Gemma's embed_scale) as a model of this dtype has them
        self.model = skeleton(config).eval()
        self.blocks = find_blocks(self.model)
        self.available = set(source.names())
        self.groups = _tied_groups(self.model)  # tensor name -> every name of that tensor

    def onload_outside(self, head: bool = True) -> None:
        """Make the modules outside the blocks real (the LM head only with head=True, unless
        it is tied to the embeddings: capturing block 0's inputs never reaches it)."""
        skip = set() if head else {self.model.get_output_embeddings()}
        outside = [(n, m) for n, m in self.model.named_modules() if not self.blocks.contains(n) and m not in skip]
        self._onload(outside, own=False)  # never written: may share the dense model's storage

    def load(self, index: int) -> nn.Module:
        """Block `index`, real: its own copy of the source's tensors (it is pruned in place)."""
        block, prefix = self.blocks.modules[index], self.blocks.prefix(index)
        self._onload([(prefix + n if n else prefix[:-1], m) for n, m in block.named_modules()], own=True)
        return block

    def drop(self, index: int | None = None) -> None:
        """Back to the meta device: block `index`, or the whole model (None)."""
        (self.model if index is None else self.blocks.modules[index]).to_empty(device="meta")
        _give_back_freed_memory()

    def block_state(self, index: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Block `index`'s saved tensors on the CPU in `dtype`, named as in the model."""
        prefix = self.blocks.prefix(index)
        state = self.blocks.modules[index].state_dict()
        return {prefix + k: v.to("cpu", dtype).contiguous() for k, v in state.items()}

    def _onload(self, modules: list[tuple[str, nn.Module]], own: bool) -> None:
        """Give the direct tensors of `modules` (name, module) real storage: the source's values
        for parameters and saved buffers (tied weights stay one tensor), then the model's own
        initialisation for buffers no checkpoint holds (rotary frequencies), as from_pretrained.
        own=True copies every tensor (a block is pruned in place); else the source's may be shared."""
        real: dict[str, torch.Tensor] = {}
        owners = []
        for path, module in modules:
            for table in (module._parameters, module._buffers):
                for key, t in list(table.items()):
                    if t is None or t.device.type != "meta":
                        continue
                    name = f"{path}.{key}" if path else key
                    if table is module._buffers and key in module._non_persistent_buffers_set:
                        table[key] = torch.empty_like(t, device=self.device)
                        continue
                    group = self.groups.get(name, (name,))
                    if group[0] not in real:
                        real[group[0]] = self._read(group, t, own, table is module._parameters)
                    table[key] = real[group[0]]
            if module._non_persistent_buffers_set:
                owners.append(module)
        for module in owners:  # skips every tensor read above (flagged _is_hf_initialized)
            self.model._init_weights(module)

    def _read(self, group: tuple[str, ...], meta: torch.Tensor, own: bool, parameter: bool) -> torch.Tensor:
        """The source's tensor for one of `group`'s names, on the device in the compute dtype."""
        name = self.stored_name(group)
        value = self.source.tensor(name)
        if tuple(value.shape) != tuple(meta.shape):
            raise UserError(
                f"{self.source.location}: tensor {name} has shape {tuple(value.shape)} but its config "
                f"says {tuple(meta.shape)}; the checkpoint does not match its config.json"
            )
        dtype = self.dtype if value.is_floating_point() else value.dtype
        value = value.to(device=self.device, dtype=dtype, copy=own)
        if parameter:
            value = nn.Parameter(value, requires_grad=False)
        value._is_hf_initialized = True
        return value

    def stored_name(self, group: tuple[str, ...]) -> str:
        """The name under which the source holds a tensor known by the names `group`."""
        name = next((n for n in group if n in self.available), None)
        if name is None:
            raise UserError(f"{self.source.location} has no tensor {group[0]}: the checkpoint is incomplete")
        return name

    def outside_names(self) -> list[tuple[str, ...]]:
        """The saved tensors outside the blocks, one name group per tensor (the first is saved)."""
        return [g for g in dict.fromkeys(self.groups.values()) if not self.blocks.contains(g[0])]


def _give_back_freed_memory() -> None:
    """Return the memory of a dropped block to the OS. glibc keeps freed large buffers in its
    heap once it has raised its mmap threshold, and the RSS would grow by about one block per
    block (measured: +30 MB per 1024-wide bf16 block); malloc_trim gives them back (a no-op
    where there is no glibc). A collection first frees what only a reference cycle still
    holds (before stream_nll dropped its model, 1 GB of a 7B model's embedding and head)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _tied_groups(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Every saved tensor's name -> all names of that same tensor (tied weights), in
    state_dict order, so the first one is the name save_pretrained keeps."""
    by_id: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_id.setdefault(id(tensor), []).append(name)
    return {name: tuple(names) for names in by_id.values() for name in names}


def _capture(run: _Onloader, windows: torch.Tensor, batch_size: int, head: bool):
    """(block-0 inputs on the CPU, one (b, seqlen, hidden) per batch, and their kwargs), with
    only the modules outside the blocks onloaded, and dropped again afterwards."""
    run.onload_outside(head=head)
    inputs, kwargs = [], []
    for start in range(0, len(windows), batch_size):
        x, kw = capture_block_inputs(run.model, windows[start : start + batch_size], batch_size)
        inputs.append(x[0].to("cpu"))
        kwargs.append(kw[0])
    run.drop()
    return inputs, kwargs


def _walk(run: _Onloader, inputs, kwargs, visit, progress: Progress | None, steps: int) -> None:
    """Each block in turn: onload it, visit(index, block, feed_calibration), compute its
    outputs (the next block's inputs, back on the CPU), drop it."""
    count = len(run.blocks.modules)
    for index in range(count):
        block = run.load(index)
        if visit is not None:
            visit(index, block, lambda block=block: feed(block, inputs, kwargs, run.device))
        if inputs:
            feed(block, inputs, kwargs, run.device, keep=True)
        run.drop(index)
        if progress is not None:
            progress((index + 1) / steps, f"block {index + 1}/{count}")


@torch.no_grad()
def stream_prune(
    source,
    ratios: dict[str, float],
    pruner: str,
    nm: tuple[int, int] | None,
    calib_windows: torch.Tensor | None,
    save_folder,
    progress: Progress | None = None,
    device="cpu",
    dtype: torch.dtype | None = None,
    tokenizer=None,
    finish: Callable[[Path, dict[str, float]], None] | None = None,
    params: dict | None = None,
    refine: str = NO_REFINER,
) -> StreamResult:
    """Prune `source` block by block into `save_folder` (see the module docstring).
    `finish(folder, zeros per matrix)` writes more files into the folder before it appears
    (alphaprune/export.py's ratios and recipe)."""
    run = _Onloader(source, device, dtype)
    blocks = matrices_by_block(run.model)
    check_prune(blocks, ratios, pruner, nm)
    inputs, kwargs = [], []
    if needs_activations(pruner, refine):
        if calib_windows is None:
            raise ValueError(f"{pruner} needs calibration windows")
        inputs, kwargs = _capture(run, calib_windows, 1, head=False)
    saved = source.dtype
    zeros: dict[str, tuple[int, int]] = {}
    Path(save_folder).parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_folder(save_folder) as tmp:
        shards = _Shards(tmp, len(blocks) + 1)

        def visit(index: int, block: nn.Module, feed_calibration) -> None:
            prune_block(blocks[index], ratios, pruner, nm, feed_calibration, params, refine)
            tensors = run.block_state(index, saved)
            zeros.update(_zeros(blocks[index], tensors))
            shards.write(tensors)

        _walk(run, inputs, kwargs, visit, progress, len(blocks) + 1)
        shards.write(_outside_tensors(run, saved))
        shards.write_index()
        _write_config(tmp, run, saved, tokenizer)
        if finish is not None:
            finish(tmp, {name: z / n for name, (z, n) in zeros.items()})
    if progress is not None:
        progress(1.0, f"saved {save_folder}")
    total = sum(n for _, n in zeros.values())
    return StreamResult(
        folder=str(save_folder),
        matrix_sparsity={name: z / n for name, (z, n) in zeros.items()},
        actual_sparsity=sum(z for z, _ in zeros.values()) / total,
        device=str(run.device),
        dtype=_name(run.dtype),
        saved_dtype=_name(saved),
    )


def _zeros(refs: list[MatrixRef], tensors: dict[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    """(zeros, size) of each pruned matrix as written."""
    out = {}
    for ref in refs:
        weight = tensors[ref.name + ".weight"]
        out[ref.name] = (int((weight == 0).sum()), weight.numel())
    return out


def _outside_tensors(run: _Onloader, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors outside the blocks as the source holds them (pruning never changes them)."""
    out = {}
    for group in run.outside_names():
        out[group[0]] = run.source.tensor(run.stored_name(group)).to("cpu", dtype).contiguous()
    return out


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A .safetensors file written tensor by tensor from the tensors' own memory (safetensors'
    save_file first builds the whole file in memory: a second copy of a shard, ~0.5 GB for a
    7B model's embedding and head). Layout: u64 header size, JSON header, the raw bytes."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in tensors.items():
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for t in tensors.values():
            f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))


class _Shards:
    """The safetensors shards of a save folder, written one at a time, and their index
    (the layout save_pretrained writes: model-0000i-of-0000n.safetensors)."""

    def __init__(self, folder: Path, count: int):
        self.folder, self.count = folder, count
        self.weight_map: dict[str, str] = {}
        self.total = 0  # bytes

    def write(self, tensors: dict[str, torch.Tensor]) -> None:
        shard = f"model-{len(set(self.weight_map.values())) + 1:05d}-of-{self.count:05d}.safetensors"
        write_safetensors(self.folder / shard, tensors)
        self.weight_map.update(dict.fromkeys(tensors, shard))
        self.total += sum(t.numel() * t.element_size() for t in tensors.values())

    def write_index(self) -> None:
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(self.weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_config(folder: Path, run: _Onloader, dtype: torch.dtype, tokenizer) -> None:
    """config.json (the saved dtype recorded) and the tokenizer's files."""
    from alphaprune.models import saved_config

    config = saved_config(run.source.config, _name(dtype))
    config["architectures"] = [type(run.model).__name__]
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is None:
        tokenizer = run.source.tokenizer if isinstance(run.source, MemorySource) else stored_tokenizer(run.source)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def stored_tokenizer(checkpoint):
    """The tokenizer stored with a checkpoint (never looked up online), None when it has none."""
    from transformers import AutoTokenizer

    location = Path(checkpoint.location)
    options = {"gguf_file": location.name} if checkpoint.kind == "gguf" else {}
    where = str(location.parent if options else location)
    try:
        return AutoTokenizer.from_pretrained(where, local_files_only=True, **options)
    except (OSError, ValueError, TypeError):
        return None


@torch.no_grad()
def stream_block_statistics(source, windows: torch.Tensor, statistic, params: dict,
                            progress: Progress | None = None, device="cpu", dtype=None) -> list[float]:  # fmt: skip
    """A rule's per-block statistic (registry.Rule.statistic), as prune.block_statistics,
    block by block."""
    run = _Onloader(source, device, dtype)
    blocks = matrices_by_block(run.model)
    inputs, kwargs = _capture(run, windows, 1, head=False)
    values: list[float] = []

    def visit(index: int, block: nn.Module, feed_calibration) -> None:
        values.append(float(statistic(blocks[index], feed_calibration, params)))

    _walk(run, inputs, kwargs, visit, progress, len(blocks))
    return values


def stream_outlier_ratios(
    source, windows: torch.Tensor, m: float = 5.0, progress: Progress | None = None, device="cpu", dtype=None
) -> list[float]:
    """OWL's outlier ratio of every block, as prune.owl_outlier_ratios, block by block."""
    statistic = lambda refs, run, p: block_outlier_ratio(refs, run, m)  # noqa: E731
    return stream_block_statistics(source, windows, statistic, {}, progress, device, dtype)


class _Replay(nn.Module):
    """Stands in for a decoder block in the model's own forward once all blocks have run:
    the first returns the final hidden states computed block by block, the others pass
    them on, so the final norm, the LM head and any logit scaling run as the model says."""

    def __init__(self, block: nn.Module, final=None, as_tuple: bool = False):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not a submodule: only its attributes are read
        self.final, self.as_tuple = final, as_tuple

    def __getattr__(self, name: str):  # attributes the model reads off a block (attention_type ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states if self.final is None else self.final()
        return (out,) if self.as_tuple else out


def _tail(run: _Onloader, hidden: list[torch.Tensor], as_tuple: bool):
    """The model's forward from the last block on, one batch of final hidden states per call."""
    stack = run.model.get_submodule(run.blocks.path)
    batches = iter(hidden)
    for index, block in enumerate(run.blocks.modules):
        final = (lambda: next(batches).to(run.device)) if index == 0 else None
        stack[index] = _Replay(block, final, as_tuple)
    run.onload_outside(head=True)


@torch.no_grad()
def stream_nll(
    source, windows: torch.Tensor, batch_size: int = 1, progress: Progress | None = None, device="cpu", dtype=None
) -> list[tuple[float, int]]:
    """(sum of token NLLs, predicted tokens) of every batch of `batch_size` windows, every
    window through block k, then block k+1; the loss as perplexity() computes it."""
    run = _Onloader(source, device, dtype)
    hidden, kwargs = _capture(run, windows, batch_size, head=False)
    as_tuple: list[bool] = []
    hook = run.blocks.modules[0].register_forward_hook(lambda m, a, out: as_tuple.append(isinstance(out, tuple)))
    _walk(run, hidden, kwargs, None, progress, len(run.blocks.modules) + 1)
    hook.remove()
    _tail(run, hidden, bool(as_tuple and as_tuple[0]))
    out = []
    try:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size].to(run.device)
            out.append(nll_of_logits(run.model(input_ids=batch, use_cache=False).logits, batch))
    finally:  # the stand-ins' closures hold `run` in a cycle: free the embedding and head now
        run.drop()
    if progress is not None:
        progress(1.0, f"perplexity {len(windows)}/{len(windows)} windows")
    return out


def stream_perplexity(
    source, windows: torch.Tensor, batch_size: int = 1, progress: Progress | None = None, device="cpu", dtype=None
) -> float:
    """exp(mean token NLL) over (W, seqlen) windows, block by block (see stream_nll)."""
    pairs = stream_nll(source, windows, batch_size, progress, device, dtype)
    return math.exp(sum(s for s, _ in pairs) / sum(c for _, c in pairs))
