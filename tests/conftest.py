"""Shared fixtures: an isolated cache folder, tiny models, and the real default model.

Run the suite: `make test` (or `.venv/bin/python -m pytest -q`).
"""

from __future__ import annotations

import os

import pytest

# Each of make test's xdist workers gets its share of the cores (and so do the CLI, app and
# worker subprocesses the tests start: they inherit it). Without this, two workers with two
# torch threads each on two cores spin against each other: the suite took 11:45 instead of 8:31.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // _WORKERS))

import torch  # noqa: E402  (after OMP_NUM_THREADS: it sizes its thread pool when first used)

# Isolate every test session from the user's cache and data folders (set before any
# alphaprune import reads them; subprocesses inherit it).
_SESSION_ROOT = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"alphaprune-tests-{os.getpid()}")
os.environ["ALPHAPRUNE_CACHE"] = os.path.join(_SESSION_ROOT, "cache")
os.environ["ALPHAPRUNE_DATA"] = os.path.join(_SESSION_ROOT, "data")


@pytest.fixture(scope="session", autouse=True)
def _remove_session_folders():
    """The session's cache (with a ~0.5 GB dequantized model) goes when the session ends."""
    yield
    import shutil

    shutil.rmtree(_SESSION_ROOT, ignore_errors=True)


def tiny_llama(layers: int = 2, hidden: int = 64, tie: bool = True, seed: int = 0):
    """A random LLaMA-architecture causal LM small enough for unit tests."""
    from transformers import LlamaForCausalLM

    from alphaprune.synthetic import tiny_llama as tiny_config

    torch.manual_seed(seed)
    config = tiny_config(
        layers, hidden, intermediate_size=2 * hidden + 32, num_key_value_heads=2, vocab_size=300,
        max_position_embeddings=256, tie_word_embeddings=tie,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_tokenizer():
    """A character-level tokenizer (ids < 100) for the tiny models: no files, no network."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {chr(i): i - 32 for i in range(32, 127)}
    vocab.update({"[UNK]": 95, "\n": 96})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def tiny_loaded(layers: int = 2, hidden: int = 64, seed: int = 0):
    """A tiny LLaMA with its tokenizer, wrapped like alphaprune.models.load_model's result."""
    from alphaprune.models import LoadedModel

    model = tiny_llama(layers=layers, hidden=hidden, seed=seed)
    return LoadedModel("tiny-llama", "test", "memory", model, tiny_tokenizer(), "float32", "cpu", 0.0, False)


@pytest.fixture(scope="session")
def real_model():
    """The bundled SmolLM2-135M-Instruct, loaded once per session (dequantized once)."""
    from alphaprune.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def real_analysis(real_model):
    from alphaprune.analysis import analyze

    return analyze(real_model.model, "smollm2-135m", use_cache=False)


REAL_MODEL_FIXTURES = {"real_model", "real_analysis"}
# The longest files (about 1.5-6 min each), to be started first: `make test`'s two workers take one
# file at a time, and a long file drawn near the end leaves the other worker idle meanwhile.
LONGEST_FIRST = ("test_faults.py", "test_bad_inputs.py", "test_stream.py", "test_pipeline.py", "test_e2e.py",
                 "test_concurrency.py", "test_registry.py", "test_degenerate_spectra.py", "test_app_model_prune.py",
                 "test_sweep_ray.py", "test_zeroshot.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """Hygiene: a test that loads the real default model through a fixture must be marked slow.
    Then the longest files first (LONGEST_FIRST), the others in their order."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
    unmarked = [
        item.nodeid
        for item in items
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"tests loading the real model must be @pytest.mark.slow: {', '.join(unmarked)}")
