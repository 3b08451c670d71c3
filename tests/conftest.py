"""Shared fixtures: an isolated cache folder, tiny models, and the real default model.

Run the suite: `make test` (or `.venv/bin/python -m pytest -q`).
"""

from __future__ import annotations

import os

import pytest
import torch

# Isolate every test session from the user's cache and data folders (set before any
# alphaprune import reads them; subprocesses inherit it).
_SESSION_ROOT = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"alphaprune-tests-{os.getpid()}")
os.environ["ALPHAPRUNE_CACHE"] = os.path.join(_SESSION_ROOT, "cache")
os.environ["ALPHAPRUNE_DATA"] = os.path.join(_SESSION_ROOT, "data")


def tiny_llama(layers: int = 2, hidden: int = 64, tie: bool = True, seed: int = 0):
    """A random LLaMA-architecture causal LM small enough for unit tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden + 32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def real_model():
    """The bundled SmolLM2-135M-Instruct, loaded once per session (dequantized once)."""
    from alphaprune.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def real_analysis(real_model):
    from alphaprune.analysis import analyze

    return analyze(real_model.model, "smollm2-135m", use_cache=False)
