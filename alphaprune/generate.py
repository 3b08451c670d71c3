"""Greedy text generation, to compare a dense and a pruned model on the same prompt.

text = generate(model, tokenizer, "The capital of France is", max_new_tokens=40)
"""

from __future__ import annotations

import torch
from torch import nn

from alphaprune.errors import UserError


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """The greedy continuation of `prompt` (deterministic, so two models compare fairly)."""
    if not prompt.strip():
        raise UserError("the prompt is empty; type a few words to continue")
    device = next(model.parameters()).device
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)  # (1, t)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
