"""Prune a model's decoder blocks with per-matrix ratios, and OWL's outlier statistics.

    ratios = allocation.ratios                               # matrix name -> sparsity
    prune_model(model, ratios, "wanda", windows=calib)       # in place; windows (N, seqlen)
    prune_model(model, ratios, "magnitude")                  # no data needed
    owl_outlier_ratios(model, calib, m=5.0)                  # one value per block

Magnitude prunes every matrix at once. Wanda and SparseGPT walk the blocks in order
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

from alphaprune.arch import MatrixRef, prunable_matrices
from alphaprune.calibrate import InputStats, collect, sequential
from alphaprune.errors import UserError
from alphaprune.pruners import PRUNERS, check_pattern, magnitude_mask, sparsegpt, wanda_mask

Progress = Callable[[float, str], None]


def _prune_matrix(ref: MatrixRef, pruner: str, sparsity: float, nm, stats: InputStats | None) -> None:
    w = ref.weight()  # (out, in) view of the model's storage
    if sparsity <= 0.0 and nm is None:
        return
    if pruner == "sparsegpt":
        w.copy_(sparsegpt(w, stats.hessian(), sparsity, nm).to(w.dtype))
        return
    mask = magnitude_mask(w, sparsity, nm) if pruner == "magnitude" else wanda_mask(w, stats.col_sq, sparsity, nm)
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
    if pruner not in PRUNERS:
        raise UserError(f"pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    for ref in (r for block in model_refs for r in block):
        if ref.name not in ratios:
            raise ValueError(f"no sparsity ratio for {ref.name}")
        check_pattern(nm, ref.shape[1], ref.name)


def prune_block(refs: list[MatrixRef], ratios: dict[str, float], pruner: str, nm, run=None) -> None:
    """Prune one block's matrices in place. `run()` feeds the calibration activations through
    the still dense block (Wanda, SparseGPT); magnitude needs none. Shared by prune_model and
    the block-by-block path (alphaprune/stream.py)."""
    stats = {} if pruner == "magnitude" else collect(refs, run, hessian=pruner == "sparsegpt")
    for ref in refs:
        _prune_matrix(ref, pruner, ratios[ref.name], nm, stats.get(ref.name))


@torch.no_grad()
def prune_model(
    model: nn.Module,
    ratios: dict[str, float],
    pruner: str,
    nm: tuple[int, int] | None = None,
    windows: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> None:
    """Prune every prunable matrix in place to its ratio (or to the N:M pattern)."""
    blocks = matrices_by_block(model)
    check_prune(blocks, ratios, pruner, nm)
    if pruner == "magnitude":
        for index, refs in enumerate(blocks):
            prune_block(refs, ratios, pruner, nm)
            if progress is not None:
                progress((index + 1) / len(blocks), f"block {index + 1}/{len(blocks)}")
        return
    if windows is None:
        raise ValueError(f"{pruner} needs calibration windows")

    def on_block(index: int, block: nn.Module, run) -> None:
        prune_block(blocks[index], ratios, pruner, nm, run)

    sequential(model, windows, on_block, progress)


def block_outlier_ratio(refs: list[MatrixRef], run, m: float) -> float:
    """OWL's outlier ratio of one dense block: the share (in %) of its Wanda scores above m x
    the block's mean score, with `run()` feeding the calibration activations through it."""
    stats = collect(refs, run)
    scores = [(ref.weight().float().abs() * stats[ref.name].col_sq.float().sqrt()[None, :]).flatten() for ref in refs]
    flat = torch.cat(scores)
    return float((flat > m * flat.mean()).float().mean() * 100.0)


@torch.no_grad()
def owl_outlier_ratios(
    model: nn.Module, windows: torch.Tensor, m: float = 5.0, progress: Progress | None = None
) -> list[float]:
    """OWL's layer outlier ratio of every block, from the dense model's activations."""
    blocks = matrices_by_block(model)
    ratios: list[float] = []

    def on_block(index: int, block: nn.Module, run) -> None:
        ratios.append(block_outlier_ratio(blocks[index], run, m))

    sequential(model, windows, on_block, progress)
    return ratios


def measured_sparsity(model: nn.Module) -> tuple[float, dict[str, float]]:
    """(share of zeros over all prunable weights, share of zeros per matrix)."""
    per_matrix, zeros, total = {}, 0, 0
    for ref in prunable_matrices(model):
        w = ref.module.weight
        z = int((w == 0).sum())
        per_matrix[ref.name] = z / w.numel()
        zeros, total = zeros + z, total + w.numel()
    return zeros / total, per_matrix
