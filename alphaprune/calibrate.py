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

The block-by-block path (alphaprune/stream.py) uses the same pieces with one block in
memory at a time: `capture_block_inputs` (the blocks may still be on the meta device),
`feed` (inputs kept on the CPU, each moved to the compute device in turn) and `collect`.

`InputStats` accumulates, per matrix, what the pruners need: the squared norm of every
input feature (Wanda, OWL, RIA), optionally X^T X (SparseGPT) and optionally the mean and
variance of every feature over the calibration tokens (DSnoT):

    stats = collect(refs, run, moments=True)
    s = stats["model.layers.0.mlp.down_proj"]
    s.col_sq, s.mean, s.var, s.window_sum             # (in,) each
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from alphaprune.arch import MatrixRef, find_blocks
from alphaprune.placement import module_device

Progress = Callable[[float, str], None]
BlockVisitor = Callable[[int, nn.Module, Callable[[], None]], None]


class _Captured(Exception):
    """Raised by the hook on block 0 to stop the forward pass once its inputs are seen."""


def capture_block_inputs(
    model: nn.Module, windows: torch.Tensor, batch_size: int = 1
) -> tuple[list[torch.Tensor], list[dict]]:
    """Per batch of windows: the hidden states entering block 0, (b, seqlen, hidden), and its
    kwargs. Only the modules before block 0 run, so the blocks may still be on the meta device."""
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
    device = next(p for p in model.parameters() if p.device.type != "meta").device  # the embeddings'
    try:
        for start in range(0, len(windows), batch_size):
            try:
                model(input_ids=windows[start : start + batch_size].to(device), use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return inputs, kwargs


def _hidden(output) -> torch.Tensor:
    """A block returns a tensor or a tuple whose first element is the hidden states."""
    return output[0] if isinstance(output, tuple | list) else output


def feed(block: nn.Module, inputs: list[torch.Tensor], kwargs: list[dict], device=None, keep: bool = False) -> None:
    """Run every input (b, seqlen, hidden) through `block`, each moved to `device` (default:
    where it is) on its own. keep=True replaces each input by the block's output, stored where
    the input was (the CPU for the block-by-block path): the next block's inputs."""
    for i, (x, kw) in enumerate(zip(inputs, kwargs, strict=True)):
        if device is not None:  # position embeddings, masks: where the block computes
            kw = {k: _to(v, device) for k, v in kw.items()}
        out = _hidden(block(x if device is None else x.to(device), **kw))
        if keep:
            inputs[i] = out.to(x.device)


def _to(value, device):
    """A tensor, or a tuple / list of them (RoPE's (cos, sin)), moved to `device`; else as is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple | list):
        return type(value)(_to(v, device) for v in value)
    return value


@torch.no_grad()
def sequential(model: nn.Module, windows: torch.Tensor, on_block: BlockVisitor, progress: Progress | None = None):
    """Visit every decoder block in order with the current calibration activations."""
    blocks = find_blocks(model).modules
    inputs, kwargs = capture_block_inputs(model, windows)
    for index, block in enumerate(blocks):
        device = module_device(block)  # a device map may put each block elsewhere
        on_block(index, block, lambda block=block, device=device: feed(block, inputs, kwargs, device))
        feed(block, inputs, kwargs, device, keep=True)
        if progress is not None:
            progress((index + 1) / len(blocks), f"block {index + 1}/{len(blocks)}")


class InputStats:
    """Running statistics of the calibration inputs entering one matrix (in features).

    Kept exactly as the reference code keeps them (float32 running means over samples),
    because at high sparsity rounding-level differences in these statistics flip masks
    and move perplexity by several percent (bench/reference_check.py measures it):
    col_sq = mean over samples of ||x_j||^2 (Wanda: scaler_row), and
    xtx = (2 / samples) sum_t x_t x_t^T (SparseGPT: H).

    moments=True also keeps, in float64, the token count, the sum of every feature and its
    sum of squared deviations from the mean (merged batch by batch, Chan et al.'s pairwise
    update: no cancellation as in E[x^2] - E[x]^2). `mean` and `var` (population variance)
    are then over all calibration tokens together; `window_sum` is the sum divided by the
    number of samples (DSnoT's code: sum_metric_row, at the scale of one window).
    `window_var` is DSnoT's code's variance: each window's own population variance, averaged
    over windows weighted by tokens (float32 as its running update), which leaves out the
    spread of the windows' means that `var` includes.
    """

    def __init__(self, columns: int, hessian: bool, device: torch.device, moments: bool = False):
        self.samples = 0
        self.col_sq = torch.zeros(columns, device=device)  # (in,)
        self.xtx = torch.zeros(columns, columns, device=device) if hessian else None  # (in, in)
        self.tokens = 0
        self._sum = torch.zeros(columns, device=device, dtype=torch.float64) if moments else None  # (in,)
        self._m2 = torch.zeros(columns, device=device, dtype=torch.float64) if moments else None  # (in,)
        self._window_var = torch.zeros(columns, device=device) if moments else None  # (in,)
        self._window_sum = torch.zeros(columns, device=device) if moments else None  # (in,)

    def add(self, x: torch.Tensor) -> None:
        batch = x.shape[0] if x.dim() == 3 else 1
        rows = x.reshape(-1, x.shape[-1]).float()  # (tokens, in)
        inp = rows.t()  # (in, tokens)
        before, self.samples = self.samples, self.samples + batch
        self.col_sq *= before / self.samples
        self.col_sq += torch.norm(inp, p=2, dim=1) ** 2 / self.samples
        if self.xtx is not None:
            self.xtx *= before / self.samples
            inp = math.sqrt(2 / self.samples) * inp
            self.xtx += inp.matmul(inp.t())
        if self._sum is not None:
            self._window_sum *= before / self.samples  # DSnoT's code's sum_metric_row, float32 as there
            self._window_sum += torch.sum(rows.t(), dim=1) / self.samples  # (in, tokens) summed as the code
            seen = self.tokens  # tokens before this batch (_add_moments counts them after)
            for window in x.reshape(batch, -1, x.shape[-1]):  # (seqlen, in) each: the code's one window per call
                self._add_window_var(window.float(), seen)
                seen += window.shape[0]
            self._add_moments(rows)

    def _add_window_var(self, window: torch.Tensor, seen: int) -> None:
        """DSnoT's running token-weighted mean of each window's population variance (float32),
        `seen` tokens before this window."""
        count = window.shape[0]
        var = torch.var(window, dim=0, unbiased=False)  # (in,)
        self._window_var = var if seen == 0 else (self._window_var * seen + var * count) / (seen + count)

    def _add_moments(self, rows: torch.Tensor) -> None:
        """Merge one batch's sum and squared deviations (rows: (tokens, in), float32)."""
        count = rows.shape[0]
        batch_mean = rows.mean(dim=0)  # (in,)
        batch_m2 = ((rows - batch_mean) ** 2).sum(dim=0).double()  # (in,)
        total = self.tokens + count
        if self.tokens:
            delta = batch_mean.double() - self._sum / self.tokens  # (in,)
            self._m2 += batch_m2 + delta**2 * (self.tokens * count / total)
        else:
            self._m2 += batch_m2
        self._sum += rows.sum(dim=0, dtype=torch.float64)
        self.tokens = total

    def _moments(self) -> None:
        if self._sum is None:
            raise ValueError("these statistics were collected without moments=True")
        if not self.tokens:
            raise ValueError("no calibration tokens were seen")

    @property
    def mean(self) -> torch.Tensor:
        """(in,) float32: every feature's mean over all calibration tokens."""
        self._moments()
        return (self._sum / self.tokens).float()

    @property
    def var(self) -> torch.Tensor:
        """(in,) float32: every feature's population variance over all calibration tokens."""
        self._moments()
        return (self._m2 / self.tokens).float()

    @property
    def window_var(self) -> torch.Tensor:
        """(in,) float32: the windows' own population variances, averaged weighted by tokens (DSnoT's code)."""
        self._moments()
        return self._window_var

    @property
    def window_sum(self) -> torch.Tensor:
        """(in,) float32: every feature's sum over the tokens divided by the samples seen, kept
        as DSnoT's code keeps it (a float32 running mean of each sample's sum)."""
        self._moments()
        return self._window_sum

    def hessian(self) -> torch.Tensor:
        return self.xtx


def collect(
    refs: Sequence[MatrixRef], run: Callable[[], None], hessian: bool = False, moments: bool = False
) -> dict[str, InputStats]:
    """Input statistics of each matrix in `refs` while `run()` feeds the calibration data
    (moments=True: also every feature's mean and variance, as DSnoT needs)."""
    stats: dict[str, InputStats] = {}
    handles = []
    for ref in refs:
        device = ref.module.weight.device
        stats[ref.name] = InputStats(ref.shape[1], hessian, device, moments)
        handles.append(ref.module.register_forward_hook(lambda m, args, out, s=stats[ref.name]: s.add(args[0])))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return stats
