"""Perplexity of a causal LM over token windows (method.md section 6).

Perplexity = exp(mean negative log-likelihood of every predicted token), each window of
seqlen tokens scored on its own (seqlen - 1 predictions, no context carried over), as the
Wanda / SparseGPT evaluation code does. With equal windows this is exactly their
exp(sum_w seqlen * mean_loss_w / (W * seqlen)).

    ppl = perplexity(model, windows, batch_size=4, progress=cb)   # windows: (W, seqlen)

A model too large for memory is evaluated block by block by alphaprune/stream.py, with
the same loss (`nll_of_logits`).

The log-softmax over the vocabulary is taken in float32 whatever the model's dtype, and in
slices of the sequence so that (batch, seqlen, vocab) logits never sit in memory twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Progress = Callable[[float, str], None]


def nll_of_logits(logits: torch.Tensor, batch: torch.Tensor) -> tuple[float, int]:
    """(sum of token NLLs, number of predicted tokens) of (b, seqlen, vocab) logits for the
    (b, seqlen) token ids they were computed from. The one place the loss is computed: the
    in-memory forward and the block-by-block one (alphaprune/stream.py) both end here."""
    targets = batch[:, 1:]  # (b, seqlen - 1)
    total = 0.0
    for start in range(0, logits.shape[1] - 1, 256):  # slices keep the float32 copy small
        stop = min(start + 256, logits.shape[1] - 1)
        chunk = logits[:, start:stop].float()  # (b, s, vocab)
        total += float(F.cross_entropy(chunk.flatten(0, 1), targets[:, start:stop].flatten(), reduction="sum"))
    return total, targets.numel()


def _forwards(model: nn.Module, windows: torch.Tensor, batch_size: int, progress: Progress | None):
    """(b, seqlen, vocab) logits and their (b, seqlen) ids, batch_size windows per forward pass."""
    from alphaprune.placement import first_device

    device = first_device(model)  # the embeddings' (a device map may keep other weights on meta)
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size].to(device)
        yield model(input_ids=batch, use_cache=False).logits, batch
        if progress is not None:
            done = min(start + batch_size, len(windows))
            progress(done / len(windows), f"perplexity {done}/{len(windows)} windows")


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: Progress | None = None) -> float:
    """exp(mean token NLL) over (W, seqlen) windows, batch_size windows per forward pass."""
    nll, count = 0.0, 0
    for logits, batch in _forwards(model, windows, batch_size, progress):
        batch_nll, batch_count = nll_of_logits(logits, batch)
        nll, count = nll + batch_nll, count + batch_count
    return math.exp(nll / count)


@torch.no_grad()
def window_nlls(model: nn.Module, windows: torch.Tensor, batch_size: int = 1, progress: Progress | None = None,
                ) -> list[float]:  # fmt: skip
    """The mean token NLL of each of the (W, seqlen) windows: the terms whose mean is log
    perplexity (equal windows), kept apart so that two models can be compared window by window
    (the standard errors of alphaprune/tune.py)."""
    out: list[float] = []
    for logits, batch in _forwards(model, windows, batch_size, progress):
        for row in range(batch.shape[0]):
            total, count = nll_of_logits(logits[row : row + 1], batch[row : row + 1])
            out.append(total / count)
    return out


def perplexity_of(nlls: list[float]) -> float:
    """exp(mean token NLL) from equal windows' mean NLLs (window_nlls)."""
    return math.exp(sum(nlls) / len(nlls))
