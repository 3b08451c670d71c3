"""Prune a model's decoder blocks with per-matrix ratios, and OWL's outlier statistics.

    ratios = allocation.ratios                               # matrix name -> sparsity
    prune_model(model, ratios, "wanda", windows=calib)       # in place; windows (N, seqlen)
    prune_model(model, ratios, "magnitude")                  # no data needed
    owl_outlier_ratios(model, calib, m=5.0)                  # one value per block
    block_statistics(model, calib, rule.statistic, params)   # any rule's per-block statistic

The pruner is a spec of the registry (alphaprune/pruning/): one that needs only the
weights prunes every matrix at once; the others walk the blocks in order
(alphaprune/calibrate.py): the statistics of all of a block's matrices come from one pass
of the calibration activations through the still dense block, then the block is pruned
and its outputs feed the next block, as in the reference code. `prune_block` and
`block_outlier_ratio` are that per-block step, shared with the block-by-block path that
never holds the whole model (alphaprune/stream.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from alphaprune import registry
from alphaprune.arch import MatrixRef, prunable_matrices
from alphaprune.calibrate import InputStats, collect, sequential
from alphaprune.pruners import check_pattern

Progress = Callable[[float, str], None]


def _prune_matrix(ref: MatrixRef, spec: registry.Pruner, sparsity: float, nm, stats: InputStats | None,
                  params: dict, refiner: registry.Refiner | None) -> None:  # fmt: skip
    w = ref.weight()  # (out, in) view of the model's storage
    if sparsity <= 0.0 and nm is None:
        return
    refines = refiner is not None and (refiner.applies is None or refiner.applies(ref, params))
    if spec.update is not None and not refines:  # a matrix the refiner leaves: the pruner alone, updates and all
        w.copy_(spec.update(w, stats, sparsity, nm, params).to(w.dtype))
        return
    start = spec.mask if spec.update is None else spec.refine_from  # refined: the mask it starts from
    mask = start(w, stats, sparsity, nm, params)  # (out, in), True = removed
    if refines:
        mask = refiner.refine(w, mask, stats, nm, params)
    w[mask] = 0


def matrices_by_block(model: nn.Module) -> list[list[MatrixRef]]:
    """The prunable matrices grouped by decoder block (works on a meta-device skeleton too)."""
    refs = prunable_matrices(model)
    blocks: list[list[MatrixRef]] = [[] for _ in range(max(r.block for r in refs) + 1)]
    for ref in refs:
        blocks[ref.block].append(ref)
    return blocks


def check_prune(model_refs: list[list[MatrixRef]], ratios: dict[str, float], pruner: str, nm) -> None:
    """A known pruner, a ratio for every matrix and an N:M pattern that fits every matrix."""
    registry.pruner(pruner)
    for ref in (r for block in model_refs for r in block):
        if ref.name not in ratios:
            raise ValueError(f"no sparsity ratio for {ref.name}")
        check_pattern(nm, ref.shape[1], ref.name)


def needs_activations(pruner: str, refine: str = registry.NO_REFINER) -> bool:
    """Whether a pruner (and its refiner) needs calibration activations: every one but a
    pruner of the weights alone without a refiner."""
    return registry.pruner(pruner).needs != registry.WEIGHTS or registry.refiner(refine) is not None


def prune_block(refs: list[MatrixRef], ratios: dict[str, float], pruner: str, nm, run=None,
                params: dict | None = None, refine: str = registry.NO_REFINER) -> None:  # fmt: skip
    """Prune one block's matrices in place with the registry's pruner `pruner` and its
    `params` (and refiner `refine`'s). `run()` feeds the calibration activations through
    the still dense block (pruners that need them). Shared by prune_model and the
    block-by-block path (alphaprune/stream.py)."""
    spec, refiner = registry.pruner(pruner), registry.refiner(refine)
    stats = {}
    if needs_activations(pruner, refine):
        stats = collect(refs, run, hessian=spec.needs == registry.HESSIAN, moments=refiner is not None)
    for ref in refs:
        _prune_matrix(ref, spec, ratios[ref.name], nm, stats.get(ref.name), params or {}, refiner)


@torch.no_grad()
def prune_model(
    model: nn.Module,
    ratios: dict[str, float],
    pruner: str,
    nm: tuple[int, int] | None = None,
    windows: torch.Tensor | None = None,
    progress: Progress | None = None,
    params: dict | None = None,
    refine: str = registry.NO_REFINER,
) -> None:
    """Prune every prunable matrix in place to its ratio (or to the N:M pattern)."""
    blocks = matrices_by_block(model)
    check_prune(blocks, ratios, pruner, nm)
    if not needs_activations(pruner, refine):
        for index, refs in enumerate(blocks):
            prune_block(refs, ratios, pruner, nm, params=params)
            if progress is not None:
                progress((index + 1) / len(blocks), f"block {index + 1}/{len(blocks)}")
        return
    if windows is None:
        raise ValueError(f"{pruner} needs calibration windows")

    def on_block(index: int, block: nn.Module, run) -> None:
        prune_block(blocks[index], ratios, pruner, nm, run, params, refine)

    sequential(model, windows, on_block, progress)


def block_outlier_ratio(refs: list[MatrixRef], run, m: float) -> float:
    """OWL's outlier ratio of one dense block: the share (in %) of its Wanda scores above m x
    the block's mean score, with `run()` feeding the calibration activations through it."""
    stats = collect(refs, run)
    scores = [(ref.weight().float().abs() * stats[ref.name].col_sq.float().sqrt()[None, :]).flatten() for ref in refs]
    flat = torch.cat(scores)
    return float((flat > m * flat.mean()).float().mean() * 100.0)


@torch.no_grad()
def block_statistics(model: nn.Module, windows: torch.Tensor, statistic, params: dict,
                     progress: Progress | None = None) -> list[float]:  # fmt: skip
    """A rule's statistic (registry.Rule.statistic) of every block, from the dense model's
    activations: statistic(block's refs, run, params), the blocks in order."""
    blocks = matrices_by_block(model)
    values: list[float] = []

    def on_block(index: int, block: nn.Module, run) -> None:
        values.append(float(statistic(blocks[index], run, params)))

    sequential(model, windows, on_block, progress)
    return values


def owl_outlier_ratios(
    model: nn.Module, windows: torch.Tensor, m: float = 5.0, progress: Progress | None = None
) -> list[float]:
    """OWL's layer outlier ratio of every block, from the dense model's activations."""
    return block_statistics(model, windows, lambda refs, run, p: block_outlier_ratio(refs, run, m), {}, progress)


def measured_sparsity(model: nn.Module) -> tuple[float, dict[str, float]]:
    """(share of zeros over all prunable weights, share of zeros per matrix)."""
    per_matrix, zeros, total = {}, 0, 0
    for ref in prunable_matrices(model):
        w = ref.module.weight
        z = int((w == 0).sum())
        per_matrix[ref.name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    return zeros / total, per_matrix
