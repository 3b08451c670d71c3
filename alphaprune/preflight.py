"""Memory estimates before a big step, and the one decision: in memory or streamed.

Every big step (analysis, pruning, evaluation) asks here first. The estimate is made from
the model's shapes alone (a meta-device skeleton: no weights read), against the memory
that is free now (RAM: MemAvailable, within a cgroup's limit; VRAM: cudaMemGetInfo).

Paths (`--offload`):
- "none": today's in-memory path. The whole model is loaded (float32 on a CPU); pruning
  works on a copy, so it needs the model twice.
- "cpu": the dense model is held in memory in its stored dtype, and pruning / evaluation
  stream it block by block onto the compute device (one block resident, no copy).
- "disk": nothing is held: every block is read from the checkpoint files when it is
  needed, and the pruned model is written block by block to the save folder.
- "auto" (default): the first of none, cpu, disk whose estimate fits; a one-line refusal
  with the numbers when even "disk" does not.

    shape = ModelShape.from_config(config, stored_bytes=2)
    plan = plan_step("prune", shape, offload="auto", pruner="wanda", samples=128, seqlen=2048)
    plan.path, plan.need, plan.have, plan.describe()
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from alphaprune import registry
from alphaprune.errors import UserError, setting

OFFLOADS = ("auto", "none", "cpu", "disk")
STEPS = ("analyze", "prune", "eval")
HEADROOM = 0.85  # share of free memory a plan may use: the rest is for the OS and Python
BASELINE = 600 * 2**20  # Python, torch and transformers themselves (~0.6 GB measured here)
F32 = 4
F64 = 8
GiB = 2**30
WHERE = {"none": "in memory", "cpu": "streamed from memory", "disk": "streamed from the files"}  # how a path is said


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need to know of a model, read from its config (no weights)."""

    params: int  # every weight, tied ones once
    block_params: int  # the largest decoder block's
    blocks: int
    largest_matrix: tuple[int, int]  # (out, in) of the largest prunable matrix
    widest_input: int  # the largest in_features of a prunable matrix (SparseGPT's Hessian side)
    block_matrix_inputs: tuple[int, ...]  # in_features of every matrix of the largest block
    hidden: int
    vocab: int
    stored_bytes: int  # bytes per weight in the checkpoint (bf16: 2)

    @property
    def non_block_params(self) -> int:
        return self.params - self.block_params * self.blocks

    @classmethod
    def from_model(cls, model, stored_bytes: int) -> ModelShape:
        """From a model or a meta-device skeleton (arch.py says where its blocks are)."""
        from alphaprune.arch import find_blocks, prunable_matrices

        refs = prunable_matrices(model)
        blocks = find_blocks(model).modules
        block_params = max(sum(p.numel() for p in b.parameters()) for b in blocks)
        seen, params = set(), 0
        for p in model.parameters():  # tied weights share one Parameter: count it once
            if id(p) not in seen:
                seen.add(id(p))
                params += p.numel()
        first = [r for r in refs if r.block == 0]
        config = getattr(model, "config", None)
        return cls(
            params=params,
            block_params=block_params,
            blocks=len(blocks),
            largest_matrix=max((r.shape for r in refs), key=lambda s: s[0] * s[1]),
            widest_input=max(r.shape[1] for r in refs),
            block_matrix_inputs=tuple(r.shape[1] for r in first),
            hidden=int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or refs[0].shape[1]),
            vocab=int(getattr(config, "vocab_size", 0) or 0),
            stored_bytes=stored_bytes,
        )

    @classmethod
    def from_config(cls, config, stored_bytes: int) -> ModelShape:
        from alphaprune.checkpoint import skeleton

        return cls.from_model(skeleton(config), stored_bytes)


def memory_available() -> int | None:
    """Bytes of RAM this process may still use: MemAvailable (free + reclaimable page
    cache, which memory-mapped checkpoint reads live in), capped by a cgroup limit."""
    have = _meminfo_available()
    limit = _cgroup_room()
    if have is None:
        return limit
    return have if limit is None else min(have, limit)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """limit - usage of a cgroup v2 memory limit, None when there is none."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        usage = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(0, int(limit) - usage)


def vram_available(device: str) -> int | None:
    """Free bytes on a CUDA device, None for a CPU."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


@dataclass(frozen=True)
class Work:
    """The sizes of one step's data: calibration (prune) or evaluation windows."""

    samples: int = 0  # calibration windows (prune) or evaluation windows (eval)
    seqlen: int = 0
    batch: int = 1
    pruner: str = registry.WEIGHTS_ONLY  # one that needs no calibration data
    workers: int = 1  # analysis processes at once
    compute_bytes: int = F32  # bytes per weight of an in-memory load (float32 on a CPU)


@dataclass(frozen=True)
class Plan:
    """What a step will do and what it was estimated to need (bytes)."""

    step: str
    path: str  # "none" | "cpu" | "disk"
    need: int
    have: int | None
    estimates: tuple[tuple[str, int], ...]  # (path, bytes) of every path considered

    @property
    def streamed(self) -> bool:
        return self.path != "none"

    def describe(self) -> str:
        where = WHERE[self.path]
        free = f" of {self.have / GiB:.1f} GiB free" if self.have is not None else ""
        return f"{self.step} {where} (needs about {self.need / GiB:.1f} GiB{free})"

    def to_dict(self) -> dict:
        return {"step": self.step, "offload": self.path, "need_bytes": self.need, "free_bytes": self.have}


def _matrix_work(shape: ModelShape) -> int:
    """One matrix being analysed (alphaprune/spectra.py): its stored bytes, one block of rows
    (at most 4M weights) in float32 and float64, the Gram matrix and LAPACK's copy of it."""
    from alphaprune.spectra import BLOCK_WEIGHTS  # torch: loaded by then (the shape came from a skeleton)

    rows, cols = shape.largest_matrix
    block = min(rows * cols, BLOCK_WEIGHTS)
    return rows * cols * shape.stored_bytes + block * (F32 + F64) + 2 * min(rows, cols) ** 2 * F64


def _forward_work(shape: ModelShape, work: Work) -> int:
    """Activations entering and leaving a block for every window (they stay on the CPU),
    plus one batch's working set inside a block (~ seqlen x the block's width)."""
    acts = 2 * work.samples * work.seqlen * shape.hidden * F32
    width = shape.block_params // max(1, shape.hidden)  # ~ 4 hidden + 3 intermediate (LLaMA)
    return acts + work.batch * work.seqlen * width * F32


def _stats_work(shape: ModelShape, work: Work) -> int:
    """A Hessian pruner's (SparseGPT's) X^T X (in, in) for every matrix of a block, and its
    inverse's copies; else the per-input statistics."""
    if registry.pruner(work.pruner).needs != registry.HESSIAN:
        return sum(shape.block_matrix_inputs) * F32
    hessians = sum(n * n for n in shape.block_matrix_inputs) * F32
    return hessians + 3 * shape.widest_input**2 * F32


def _logits_work(shape: ModelShape, work: Work) -> int:
    return 2 * work.batch * work.seqlen * shape.vocab * F32


def estimate(step: str, path: str, shape: ModelShape, work: Work) -> int:
    """Peak bytes of `step` along `path` (see the module docstring)."""
    model = shape.params * work.compute_bytes
    held = shape.params * shape.stored_bytes  # "cpu": the dense model kept as stored
    block = shape.block_params * F32
    outside = shape.non_block_params * F32  # embeddings, final norm, LM head
    if step == "analyze":
        per_worker = _matrix_work(shape)
        return BASELINE + (model if path == "none" else 0) + work.workers * per_worker
    if step == "prune":
        data = _forward_work(shape, work) + _stats_work(shape, work)
        if path == "none":
            return BASELINE + 2 * model + data  # the dense model and its pruned copy
        shard = shape.block_params * shape.stored_bytes  # the pruned block on its way to the save folder
        base = held + block if path == "cpu" else outside + block + shard
        return BASELINE + base + data
    if step == "eval":
        data = _forward_work(shape, work) + _logits_work(shape, work)
        if path == "none":
            return BASELINE + model + data
        return BASELINE + (held if path == "cpu" else outside) + block + data
    raise ValueError(f"step must be one of {STEPS}, got {step!r}")


def device_estimate(step: str, path: str, shape: ModelShape, work: Work) -> int:
    """Peak bytes resident on a CUDA device: the whole model in memory, else one block and
    one batch's data (streamed activations move to the device a batch at a time)."""
    one = Work(work.samples and work.batch, work.seqlen, work.batch, work.pruner, 1, work.compute_bytes)
    if step == "analyze":
        return _matrix_work(shape)
    extra = _forward_work(shape, one) + (_stats_work(shape, work) if step == "prune" else _logits_work(shape, one))
    if path == "none":
        return shape.params * work.compute_bytes * (2 if step == "prune" else 1) + extra
    return shape.block_params * work.compute_bytes + extra


_ADVICE = {
    "analyze": "free memory, or analyse on a machine with more",
    "prune": f"lower {setting('calib_samples')} or {setting('seqlen')}, or free memory",
    "eval": f"lower {setting('eval_windows')}, {setting('batch_size')} or {setting('seqlen')}, or free memory",
}


def plan_step(
    step: str,
    shape: ModelShape,
    work: Work,
    offload: str = "auto",
    has_files: bool = True,
    device: str = "cpu",
    ram: int | None = None,
    vram: int | None = None,
) -> Plan:
    """The path a step takes: `offload` itself, or under "auto" the first of none, cpu, disk
    that fits; UserError with the numbers when the chosen path cannot fit."""
    if offload not in OFFLOADS:
        raise UserError(f"offload must be one of {', '.join(OFFLOADS)}, got {offload!r}; set {setting('offload')}")
    if offload == "disk" and not has_files:
        raise UserError(f"{setting('offload')} disk reads the model's files, and this model has none on disk: use auto")
    ram = memory_available() if ram is None else ram
    vram = vram_available(device) if vram is None else vram
    paths = [p for p in ("none", "cpu", "disk") if has_files or p != "disk"]
    estimates = tuple((p, estimate(step, p, shape, work)) for p in paths)

    def fits(path: str, need: int) -> bool:
        dev_ok = vram is None or device_estimate(step, path, shape, work) <= HEADROOM * vram
        return (ram is None or need <= HEADROOM * ram) and dev_ok

    chosen = [(p, n) for p, n in estimates if p == offload] if offload != "auto" else estimates
    for path, need in chosen:
        if fits(path, need):
            return Plan(step, path, need, ram, estimates)
    path, need = chosen[-1]
    raise UserError(_refusal(step, path, need, ram, device_estimate(step, path, shape, work), vram, offload))


def _refusal(step: str, path: str, need: int, ram: int | None, dev_need: int, vram: int | None, offload: str) -> str:
    where = WHERE[path]
    if vram is not None and dev_need > HEADROOM * vram:
        what = f"{dev_need / GiB:.1f} GiB on the GPU but {vram / GiB:.1f} GiB is free there"
    else:
        what = f"about {need / GiB:.1f} GiB but {ram / GiB:.1f} GiB is free"
    retry = f"; try {setting('offload')} auto" if offload not in ("auto", "disk") else ""
    return f"{step} {where} needs {what}: {_ADVICE[step]}{retry}"
