"""Calibration passes: run calibration windows through the decoder blocks one at a time.

As in the Wanda / SparseGPT / AlphaPruning code, the model is not run end to end: the
inputs of block 0 are captured once, then for each block in order the caller looks at it
(collects input statistics through hooks, prunes it), and the block's outputs, computed
after that, become the next block's inputs. So block k is calibrated on the activations
of the already pruned blocks 0..k-1, and memory holds one block's activations at a time.

    def on_block(index, block, run):
        stats = collect(block_refs[index], run)    # run() feeds every sample through `block`
        ...prune the block...
    sequential(model, windows, on_block, progress=cb)      # windows: (N, seqlen) token ids

`InputStats` accumulates, per matrix, what the pruners need: the squared norm of every
input feature (Wanda, OWL) and optionally X^T X (SparseGPT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from alphaprune.arch import MatrixRef, find_blocks

Progress = Callable[[float, str], None]
BlockVisitor = Callable[[int, nn.Module, Callable[[], None]], None]


class _Captured(Exception):
    """Raised by the hook on block 0 to stop the forward pass once its inputs are seen."""


def capture_block_inputs(model: nn.Module, windows: torch.Tensor) -> tuple[list[torch.Tensor], list[dict]]:
    """Per window: the hidden states entering block 0, (1, seqlen, hidden), and its kwargs."""
    first = find_blocks(model).modules[0]
    inputs: list[torch.Tensor] = []
    kwargs: list[dict] = []

    def hook(module, args, kw):
        kw = dict(kw)
        hidden = args[0] if args else kw.pop("hidden_states")
        inputs.append(hidden.detach())
        kwargs.append(kw)  # attention mask, position ids / embeddings, ... as the model passes them
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for window in windows:
            try:
                model(input_ids=window[None].to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return inputs, kwargs


def _hidden(output) -> torch.Tensor:
    """A block returns a tensor or a tuple whose first element is the hidden states."""
    return output[0] if isinstance(output, tuple | list) else output


@torch.no_grad()
def sequential(model: nn.Module, windows: torch.Tensor, on_block: BlockVisitor, progress: Progress | None = None):
    """Visit every decoder block in order with the current calibration activations."""
    blocks = find_blocks(model).modules
    inputs, kwargs = capture_block_inputs(model, windows)
    for index, block in enumerate(blocks):

        def run(block=block, inputs=inputs) -> None:
            for x, kw in zip(inputs, kwargs, strict=True):
                block(x, **kw)

        on_block(index, block, run)
        inputs = [_hidden(block(x, **kw)) for x, kw in zip(inputs, kwargs, strict=True)]
        if progress is not None:
            progress((index + 1) / len(blocks), f"block {index + 1}/{len(blocks)}")


class InputStats:
    """Running sums over the calibration tokens entering one matrix (in features)."""

    def __init__(self, columns: int, hessian: bool, device: torch.device):
        self.tokens = 0
        self.col_sq = torch.zeros(columns, dtype=torch.float64, device=device)  # sum_t x_tj^2
        self.xtx = torch.zeros(columns, columns, device=device) if hessian else None  # sum_t x_t x_t^T

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        self.tokens += x.shape[0]
        self.col_sq += (x * x).sum(0, dtype=torch.float64)
        if self.xtx is not None:
            self.xtx.addmm_(x.T, x)

    def hessian(self) -> torch.Tensor:
        """X^T X / tokens (SparseGPT is invariant to the scale)."""
        return self.xtx / max(self.tokens, 1)


def collect(refs: Sequence[MatrixRef], run: Callable[[], None], hessian: bool = False) -> dict[str, InputStats]:
    """Input statistics of each matrix in `refs` while `run()` feeds the calibration data."""
    stats: dict[str, InputStats] = {}
    handles = []
    for ref in refs:
        device = ref.module.weight.device
        stats[ref.name] = InputStats(ref.shape[1], hessian, device)
        handles.append(ref.module.register_forward_hook(lambda m, args, out, s=stats[ref.name]: s.add(args[0])))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return stats
