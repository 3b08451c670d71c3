"""The CLI's bad-input catalogue (issue 9): every case a real `python -m alphaprune` subprocess.

Each case asserts four things: exit code 2; one line saying what is wrong and what to do
(`alphaprune: error: ...`, or argparse's usage block plus its error line); no traceback;
nothing already stored changed: the run store (seeded with a real run), the caches and the
user's files are byte-identical afterwards (every file under the case's folders is hashed).

    .venv/bin/python -m pytest tests/test_bad_inputs.py -q
    .venv/bin/python tests/test_bad_inputs.py > docs/reliability.md   # the catalogue, measured

docs/reliability.md lists every case (a test checks it). Cases that need no model fail
before torch is imported (a fraction of a second); a few load a tiny model folder; one
(marked slow) the real default model. The cases run WORKERS at a time (fixture `outcomes`,
each in its own folders, hashed right before and after its own subprocess); each still
passes or fails by name in test_bad_input.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
CORPUS = "It was the best of times, it was the worst of times. " * 60
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
TIMEOUT_S = 600  # a guard against hangs only
WORKERS = (os.cpu_count() or 1) + 1  # cases run at once: a case's start-up is CPU, plus a little disk
ERROR_LINE = re.compile(r"^alphaprune( [a-z]+)?: error: ")
UNREACHABLE_HUB = "http://127.0.0.1:9"  # the discard port: refused at once on any machine


@dataclass(frozen=True)
class Ctx:
    """Where one case runs: the user's folder, the data and cache folders, shared fixtures."""

    work: Path
    data: Path
    cache: Path
    tiny: Path
    corpus: Path
    hub: str

    def fill(self, text: str) -> str:
        return text.format(W=self.work, D=self.data, T=self.tiny, C=self.corpus, HUB=self.hub)


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # {W} user folder, {T} tiny model folder, {C} a corpus, {D} data folder
    expect: str  # a fragment of the error line
    setup: Callable[[Ctx], None] | None = None
    env: dict = field(default_factory=dict)  # {W}/{HUB} filled in; None unsets a variable
    group: str = ""
    slow: bool = False  # loads the real default model, from a cache that already holds it
    root_skips: bool = False  # chmod does not stop root


# --------------------------------------------------------------------------- set-ups


def _write(name: str, data: bytes | str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        path = ctx.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def _truncated_gguf(ctx: Ctx) -> None:
    from alphaprune.models import bundled_gguf

    with bundled_gguf("smollm2-135m").open("rb") as f:
        (ctx.work / "cut.gguf").write_bytes(f.read(2 << 20))  # the header and a little data


def _model_folder(config: dict, weights: bool = True) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        folder = ctx.work / "model"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        if weights:
            shutil.copy(ctx.tiny / "model.safetensors", folder)

    return setup


def _broken_config(ctx: Ctx) -> None:
    folder = ctx.work / "model"
    shutil.copytree(ctx.tiny, folder)
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": ')  # cut short


def _encoder_only(ctx: Ctx) -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(ctx.work / "bert")


class _Evil:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_only(ctx: Ctx) -> None:
    import pickle

    folder = ctx.work / "pickled"
    folder.mkdir()
    shutil.copy(ctx.tiny / "config.json", folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ctx.tiny / name, folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Evil(ctx.work / "PWNED")))


def _garbage_store(ctx: Ctx) -> None:
    (ctx.data / "runs.sqlite").write_bytes(b"\x00\x13my precious notes, not a database\n" * 200)


def _foreign_store(ctx: Ctx) -> None:
    (ctx.data / "runs.sqlite").unlink()
    with sqlite3.connect(ctx.data / "runs.sqlite") as conn:
        conn.execute("CREATE TABLE things (x)")
        conn.execute("INSERT INTO things VALUES (42)")
    conn.close()


def _newer_store(ctx: Ctx) -> None:
    conn = sqlite3.connect(ctx.data / "runs.sqlite")
    conn.execute("PRAGMA user_version = 99")
    conn.close()


def _read_only(name: str) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        folder = ctx.work / name
        folder.mkdir()
        folder.chmod(0o500)

    return setup


def _foreign_folder(ctx: Ctx) -> None:
    (ctx.work / "mine").mkdir()
    (ctx.work / "mine" / "notes.txt").write_text("keep me")


# --------------------------------------------------------------------------- the catalogue

TINY = ("--model", "{T}")
DATA = ("--calib", "{C}", "--eval", "{C}", "--calib-samples", "2", "--seqlen", "32", "--eval-windows", "2")
PRUNE = ("prune", *TINY, "--pruner", "magnitude", *DATA)
# An empty hub cache (not watched), and no proxy: the hub cases talk to 127.0.0.1 directly.
PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
HUB_LOCAL = {"HF_HOME": "{W}/../hf", "HF_HUB_OFFLINE": None, "HF_TOKEN": None, **dict.fromkeys(PROXIES)}


def _cases() -> list[Case]:
    c = []

    def add(group: str, id: str, argv: tuple, expect: str, **kw) -> None:
        c.append(Case(id, tuple(argv), expect, group=group, **kw))

    # --- models
    m = "models"
    add(m, "model-unknown", ("analyze", "--model", "no-such-model"), "unknown model 'no-such-model'")
    add(m, "gguf-missing", ("analyze", "--model", "{W}/missing.gguf"), "no such GGUF file")
    add(
        m,
        "gguf-empty",
        ("analyze", "--model", "{W}/empty.gguf"),
        "is empty, not a GGUF model",
        setup=_write("empty.gguf", b""),
    )
    add(
        m,
        "gguf-garbage",
        ("analyze", "--model", "{W}/junk.gguf"),
        "is not a GGUF file",
        setup=_write("junk.gguf", os.urandom(4096)),
    )
    add(m, "gguf-truncated", ("analyze", "--model", "{W}/cut.gguf"), "damaged or truncated", setup=_truncated_gguf)
    add(
        m,
        "folder-without-config",
        ("analyze", "--model", "{W}"),
        "folder without config.json",
        setup=_write("notes.txt", "mine"),
    )
    add(m, "config-broken", ("analyze", "--model", "{W}/model"), "config.json is broken", setup=_broken_config)
    add(
        m,
        "config-unknown-type",
        ("analyze", "--model", "{W}/model"),
        "the folder is incomplete or broken",
        setup=_model_folder({"model_type": "no-such-architecture"}),
    )
    add(
        m,
        "weights-missing",
        ("analyze", "--model", "{W}/model"),
        "has no weights (*.safetensors)",
        setup=_model_folder({"model_type": "llama"}, weights=False),
    )
    add(m, "encoder-only", ("analyze", "--model", "{W}/bert"), "not a causal language model", setup=_encoder_only)
    add(m, "pickle-only", ("analyze", "--model", "{W}/pickled"), "never unpickles", setup=_pickle_only)
    add(
        m,
        "hub-unreachable",
        ("analyze", "--model", "someorg/some-model"),
        "the Hugging Face hub cannot be reached",
        env={**HUB_LOCAL, "HF_ENDPOINT": UNREACHABLE_HUB},
    )
    add(
        m,
        "hub-offline-not-cached",
        ("analyze", "--model", "someorg/some-model"),
        "HF_HUB_OFFLINE is set",
        env={**HUB_LOCAL, "HF_HUB_OFFLINE": "1"},
    )
    add(
        m,
        "hub-gated",
        ("analyze", "--model", "someorg/gated-model"),
        "is gated: accept its terms",
        env={**HUB_LOCAL, "HF_ENDPOINT": "{HUB}"},
    )
    add(
        m,
        "hub-private-or-missing",
        ("analyze", "--model", "someorg/private-model"),
        "or it is private",
        env={**HUB_LOCAL, "HF_ENDPOINT": "{HUB}"},
    )
    add(m, "dtype-unknown", ("analyze", *TINY, "--dtype", "int3"), "argument --dtype: invalid choice")
    # --- devices
    d = "devices"
    add(
        d,
        "cuda-without-cuda",
        ("analyze", *TINY, "--device", "cuda"),
        "CUDA is not available",
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    add(
        d,
        "cuda-without-cuda-prune",
        (*PRUNE, "--device", "cuda"),
        "CUDA is not available",
        env={"CUDA_VISIBLE_DEVICES": ""},
    )
    add(d, "device-unknown", ("analyze", *TINY, "--device", "tpu"), "argument --device: invalid choice")
    # --- numbers
    n = "numbers"
    for id, argv, expect in [
        ("sparsity-above-1", ("--sparsity", "1.5"), "sparsity must be inside (0, 1), got 1.5; set --sparsity"),
        ("sparsity-zero", ("--sparsity", "0"), "sparsity must be inside (0, 1)"),
        ("sparsity-nan", ("--sparsity", "nan"), "sparsity must be a number, not nan"),
        ("sparsity-inf", ("--sparsity", "inf"), "sparsity must be a number, not inf"),
        ("sparsity-not-a-number", ("--sparsity", "half"), "argument --sparsity: invalid float value"),
        (
            "epsilon-negative",
            ("--allocation", "alphapruning", "--epsilon", "-0.1"),
            "Allocation range epsilon must be a number in [0, 1] or auto, got -0.1; set --epsilon",
        ),
        (
            "epsilon-nan",
            ("--allocation", "alphapruning", "--epsilon", "nan"),
            "Allocation range epsilon must be a number in [0, 1] or auto, got nan",
        ),
        (
            "epsilon-inf",
            ("--allocation", "alphapruning", "--epsilon", "inf"),
            "Allocation range epsilon must be a number in [0, 1] or auto, got inf",
        ),
        (
            "epsilon-not-a-number",
            ("--epsilon", "lots"),
            "argument --epsilon: --epsilon takes [0, 1] or auto, got 'lots'",
        ),
        ("ceiling-above-1", ("--max-sparsity", "1.5"), "ceiling must be inside (0, 1], got 1.5; set --max-sparsity"),
        ("ceiling-nan", ("--max-sparsity", "nan"), "ceiling must be a number, not nan"),
        ("ceiling-below-target", ("--sparsity", "0.8", "--max-sparsity", "0.5"), "above the per-matrix ceiling"),
        ("ceiling-not-a-number", ("--max-sparsity", "high"), "--max-sparsity takes (0, 1] or auto, got 'high'"),
        (
            "owl-m-negative",
            ("--allocation", "owl", "--owl-m", "-1"),
            "Outlier threshold M must be a number in [1, 20], got -1.0; set --owl-m",
        ),
        (
            "owl-m-inf",
            ("--allocation", "owl", "--owl-m", "inf"),
            "Outlier threshold M must be a number in [1, 20], got inf",
        ),
        (
            "owl-lambda-negative",
            ("--allocation", "owl", "--owl-lambda", "-0.5"),
            "Spread lambda must be a number in [0, 0.5] or auto, got -0.5; set --owl-lambda",
        ),
        (
            "owl-lambda-nan",
            ("--allocation", "owl", "--owl-lambda", "nan"),
            "Spread lambda must be a number in [0, 0.5] or auto, got nan",
        ),
        (
            "owl-lambda-not-a-number",
            ("--owl-lambda", "wide"),
            "argument --owl-lambda: --owl-lambda takes [0, 0.5] or auto, got 'wide'",
        ),
        ("seqlen-one", ("--seqlen", "1"), "sequence length must be a whole number >= 2, got 1; set --seqlen"),
        ("seqlen-negative", ("--seqlen", "-64"), "sequence length must be a whole number >= 2"),
        ("seqlen-not-a-number", ("--seqlen", "2k"), "argument --seqlen: invalid int value"),
        ("samples-zero", ("--calib-samples", "0"), "calibration samples must be a whole number >= 1"),
        ("samples-fraction", ("--calib-samples", "1.5"), "argument --calib-samples: invalid int value"),
        ("windows-zero", ("--eval-windows", "0"), "evaluation windows must be a whole number >= 1"),
        ("batch-size-not-a-number", ("--batch-size", "many"), "argument --batch-size: invalid int value"),
        (
            "block-list-not-numbers",
            ("--allocation", "list", "--block-list", "0.5,x"),
            "--block-list takes comma-separated numbers in [0, 1]",
        ),
        (
            "block-list-nan",
            ("--allocation", "list", "--block-list", "0.5,nan"),
            "Sparsity per block must be a number in [0, 1], got nan",
        ),
        (
            "block-list-missing",
            ("--allocation", "list"),
            "Sparsity per block needs at least one number; set --block-list",
        ),
    ]:
        add(n, id, (*PRUNE, *argv), expect)
    add(
        n,
        "block-list-length",
        (*PRUNE, "--allocation", "list", "--block-list", "0.5,0.5,0.5"),
        "the list has 3 sparsities but the model has 2 blocks",
    )
    add(
        n,
        "eval-windows-negative",
        ("eval", *TINY, "--eval", "{C}", "--eval-windows", "-3"),
        "evaluation windows must be a whole number >= 1, got -3; set --eval-windows",
    )
    add(
        n,
        "eval-batch-size-zero",
        ("eval", *TINY, "--eval", "{C}", "--batch-size", "0"),
        "batch size must be a whole number >= 1, got 0; set --batch-size",
    )
    add(n, "sweep-sparsity-nan", ("sweep", *PRUNE[1:], "--sparsities", "0.5,nan"), "sparsity must be a number, not nan")
    add(
        n,
        "sweep-epsilons-without-alphapruning",
        ("sweep", *PRUNE[1:], "--epsilons", "0.1,0.2"),
        "--epsilons applies to rules with an epsilon, not --allocation uniform",
    )
    add(
        n,
        "allocate-epsilon-auto",
        ("allocate", *TINY, "--allocation", "alphapruning", "--epsilon", "auto"),
        "needs pruning runs to choose",
    )
    # --- choices
    ch = "choices"
    add(ch, "allocation-unknown", (*PRUNE, "--allocation", "magic"), "argument --allocation: invalid choice")
    add(ch, "metric-unknown", (*PRUNE, "--allocation", "alphapruning", "--metric", "beauty"), "unknown metric 'beauty'")
    add(ch, "pruner-unknown", (*PRUNE, "--pruner", "obs"), "pruner must be one of magnitude, wanda, sparsegpt")
    add(ch, "pattern-unknown", (*PRUNE, "--pattern", "diagonal"), "pattern must be 'unstructured' or N:M")
    add(ch, "pattern-n-above-m", (*PRUNE, "--pattern", "4:2"), "0 < N < M must hold")
    add(
        ch,
        "pattern-with-layer-wise",
        (*PRUNE, "--pattern", "2:4", "--allocation", "alphapruning"),
        "does not apply to N:M patterns; set --allocation uniform",
    )
    add(ch, "pattern-other-sparsity", (*PRUNE, "--pattern", "2:4", "--sparsity", "0.7"), "2:4 means sparsity 0.5")
    add(ch, "mapping-unknown", (*PRUNE, "--mapping", "layer"), "argument --mapping: invalid choice")
    add(ch, "precision-unknown", ("analyze", *TINY, "--precision", "float16"), "argument --precision: invalid choice")
    # --- texts
    t = "texts"
    prune_on = lambda *data: ("prune", *TINY, "--pruner", "wanda", "--seqlen", "32", "--calib-samples", "2", *data)  # noqa: E731
    add(
        t,
        "eval-text-missing",
        prune_on("--eval", "{W}/missing.txt", "--calib", "{C}"),
        "neither python-docs nor wikitext2 nor an existing file",
    )
    add(t, "calib-text-is-a-folder", prune_on("--calib", "{W}", "--eval", "{C}"), "nor an existing file")
    add(
        t,
        "eval-text-empty",
        prune_on("--eval", "{W}/empty.txt", "--calib", "{C}"),
        "is empty; give a file",
        setup=_write("empty.txt", ""),
    )
    add(
        t,
        "calib-text-blank",
        prune_on("--calib", "{W}/blank.txt", "--eval", "{C}"),
        "is empty; give a file",
        setup=_write("blank.txt", " \n\n\t\n"),
    )
    add(
        t,
        "eval-text-binary",
        prune_on("--eval", "{W}/weights.bin", "--calib", "{C}"),
        "is a binary file",
        setup=_write("weights.bin", (b"notes.txt" + bytes(91) + b"0000644\x00") * 8),
    )  # valid UTF-8, NULs
    add(
        t,
        "eval-text-not-utf8",
        prune_on("--eval", "{W}/latin1.txt", "--calib", "{C}"),
        "is not UTF-8 text",
        setup=_write("latin1.txt", "caf\u00e9 cr\u00e8me ".encode("latin-1") * 20),
    )
    add(
        t,
        "calib-text-too-short",
        prune_on("--calib", "{W}/short.txt", "--eval", "{C}"),
        "calibration text has 20 tokens, too short for a window of 32",
        setup=_write("short.txt", "x" * 20),
    )
    add(
        t,
        "eval-text-too-short",
        prune_on("--eval", "{W}/short.txt", "--calib", "{C}"),
        "evaluation text has 20 tokens, too short for a window of 32",
        setup=_write("short.txt", "x" * 20),
    )
    add(
        t,
        "wikitext2-offline",
        prune_on("--eval", "wikitext2", "--calib", "{C}"),
        "cannot reach the Hugging Face hub for wikitext2",
        env={"HF_ENDPOINT": UNREACHABLE_HUB, **HUB_LOCAL},
    )
    add(t, "seqlen-beyond-context", (*PRUNE, "--seqlen", "512"), "seqlen 512 exceeds the model's context of 256")
    add(
        t,
        "seqlen-beyond-context-eval",
        ("eval", *TINY, "--eval", "{C}", "--seqlen", "512"),
        "exceeds the model's context of 256 tokens; lower --seqlen",
    )
    add(
        t,
        "seqlen-beyond-context-real-model",
        ("eval", "--eval", "{C}", "--seqlen", "10000"),
        "seqlen 10000 exceeds the model's context of 8192",
        slow=True,
    )
    # --- the run store and output files
    r = "run store"
    add(r, "delete-unknown-id", ("runs", "--delete", "999999"), "no run with id 999999")
    add(r, "delete-some-unknown", ("runs", "--delete", "1,999999"), "no run with id 999999")
    add(r, "delete-not-an-id", ("runs", "--delete", "first"), "argument --delete: expected comma-separated run ids")
    add(r, "export-into-missing-folder", ("runs", "--export", "{W}/nope/runs.csv"), "the folder")
    add(r, "export-suffix", ("runs", "--export", "{W}/runs.txt"), "export file must end with .csv or .json")
    add(r, "store-corrupt", ("runs",), "as the run history", setup=_garbage_store)
    add(r, "store-corrupt-prune", PRUNE, "as the run history", setup=_garbage_store)
    add(r, "store-foreign-sqlite", ("runs",), "SQLite database of another program", setup=_foreign_store)
    add(r, "store-newer-schema", PRUNE, "written by a newer alphaprune", setup=_newer_store)
    add(r, "out-into-missing-folder", (*PRUNE, "--out", "{W}/nope/result.json"), "does not exist")
    add(r, "out-suffix", ("analyze", *TINY, "--out", "{W}/layers.txt"), "--out must end with .json or .csv")
    # --- folders
    f = "folders"
    add(
        f,
        "data-folder-is-a-file",
        ("runs",),
        "is a file: set ALPHAPRUNE_DATA",
        env={"ALPHAPRUNE_DATA": "{W}/notes"},
        setup=_write("notes", "mine"),
    )
    add(
        f,
        "data-folder-under-a-file",
        PRUNE,
        "lies under the file",
        env={"ALPHAPRUNE_DATA": "{W}/notes/data"},
        setup=_write("notes", "mine"),
    )
    add(
        f,
        "data-folder-unwritable",
        PRUNE,
        "permission denied",
        env={"ALPHAPRUNE_DATA": "{W}/ro/data"},
        setup=_read_only("ro"),
        root_skips=True,
    )
    add(
        f,
        "cache-folder-is-a-file",
        ("analyze", *TINY),
        "is a file: set ALPHAPRUNE_CACHE",
        env={"ALPHAPRUNE_CACHE": "{W}/notes"},
        setup=_write("notes", "mine"),
    )
    add(
        f,
        "cache-folder-under-a-file",
        PRUNE,
        "lies under the file",
        env={"ALPHAPRUNE_CACHE": "{W}/notes/cache"},
        setup=_write("notes", "mine"),
    )
    add(
        f,
        "cache-folder-unwritable",
        ("analyze", *TINY),
        "permission denied",
        env={"ALPHAPRUNE_CACHE": "{W}/ro"},
        setup=_read_only("ro"),
        root_skips=True,
    )
    add(
        f,
        "save-onto-a-file",
        (*PRUNE, "--save", "{W}/notes.txt"),
        "is a file: give a folder path",
        setup=_write("notes.txt", "mine"),
    )
    add(
        f,
        "save-into-a-foreign-folder",
        (*PRUNE, "--save", "{W}/mine"),
        "not written by alphaprune",
        setup=_foreign_folder,
    )
    return c


CASES = _cases()


# --------------------------------------------------------------------------- running a case


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under `roots` -> a hash of its bytes ("dir" for a folder)."""
    out = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))] if root.exists() else []:
            if path.is_dir():
                out[str(path)] = "dir"
            else:
                out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def run_cli(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "alphaprune", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=ROOT)


def _env(ctx: Ctx, case: Case) -> dict[str, str]:
    env = {**os.environ, "ALPHAPRUNE_DATA": str(ctx.data), "ALPHAPRUNE_CACHE": str(ctx.cache)}
    for name, value in case.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = ctx.fill(value)
    return env


def error_line(stderr: str) -> str:
    """The one error line, after checking nothing else was printed but argparse's usage."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if lines and lines[0].startswith("usage: "):  # argparse: usage (wrapped, indented) + error
        lines = lines[1:]
        while lines and lines[0].startswith(" "):
            lines = lines[1:]
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{stderr}"
    assert ERROR_LINE.match(lines[0]), stderr
    return lines[0]


@dataclass
class Outcome:
    """What one case's run left behind: its process and the watched files' hashes right before
    and right after it, or the exception that stopped it (re-raised by its test)."""

    ctx: Ctx
    proc: subprocess.CompletedProcess | None = None
    before: dict[str, str] = field(default_factory=dict)
    after: dict[str, str] = field(default_factory=dict)
    pwned: bool = False
    error: Exception | None = None


def _unlock(ctx: Ctx) -> None:
    for path in (ctx.work / "ro",):  # the read-only set-ups: let the folder be cleaned up
        if path.exists():
            path.chmod(0o700)


def prepare_case(case: Case, ctx: Ctx) -> Outcome | None:
    """Run the case's set-up (in the calling thread: set-ups import torch and transformers,
    which is not done from worker threads); an Outcome holding the error if it failed."""
    try:
        if case.setup is not None:
            case.setup(ctx)
    except Exception as exc:
        _unlock(ctx)
        return Outcome(ctx, error=exc)
    return None


def execute_case(case: Case, ctx: Ctx) -> Outcome:
    """Hash the watched folders, run the case's subprocess, hash them again (safe in a thread:
    every case has its own user, data and cache folders; the shared ones are only read)."""
    watched = (ctx.work, ctx.data, ctx.cache, ctx.tiny.parent)
    try:
        before = snapshot(*watched)
        proc = run_cli([ctx.fill(a) for a in case.argv], _env(ctx, case))
        return Outcome(ctx, proc, before, snapshot(*watched), (ctx.work / "PWNED").exists())
    except Exception as exc:
        return Outcome(ctx, error=exc)
    finally:
        _unlock(ctx)


def check_case(case: Case, outcome: Outcome) -> str:
    """Assert the four properties on a case's outcome; returns its error line."""
    if outcome.error is not None:
        raise outcome.error
    proc = outcome.proc
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}"
    line = error_line(proc.stderr)
    assert case.expect in line, line
    assert outcome.after == outcome.before, "a stored file, cache entry or user file changed"
    assert not outcome.pwned  # the malicious pickle was never unpickled
    return line


def run_all(cases: list[Case], make_ctx: Callable[[Case], Ctx], before_slow=lambda: None) -> dict[str, Outcome]:
    """Run `cases`, WORKERS subprocesses at a time (each spends seconds importing torch); id -> Outcome.
    Folders and set-ups are made here, one case after another, while earlier cases run; the
    slow cases go last, once `before_slow()` (it dequantizes the real model) has returned."""
    futures, done = {}, {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for case in sorted(cases, key=lambda c: c.slow):  # stable: catalogue order otherwise
            if case.slow and before_slow is not None:
                before_slow()
                before_slow = None
            ctx = make_ctx(case)
            failed = prepare_case(case, ctx)
            if failed is not None:
                done[case.id] = failed
            else:
                futures[case.id] = pool.submit(execute_case, case, ctx)
        done.update({id: future.result() for id, future in futures.items()})
    return done


# --------------------------------------------------------------------------- fixtures


class _Hub(http.server.BaseHTTPRequestHandler):
    """Answers like the Hugging Face hub for a gated repo and for a private (or unknown) one."""

    def _answer(self) -> None:
        gated = "gated" in self.path
        self.send_response(403 if gated else 401)
        self.send_header("X-Error-Code", "GatedRepo" if gated else "RepoNotFound")
        self.send_header("X-Error-Message", "Access restricted" if gated else "Repository not found")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def hub():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def make_shared(folder: Path) -> tuple[Path, Path]:
    """(tiny model folder, corpus file): read by every case, never written."""
    from tests.conftest import tiny_llama, tiny_tokenizer

    tiny = folder / "tiny-model"
    tiny_llama(layers=2).save_pretrained(tiny)
    tiny_tokenizer().save_pretrained(tiny)
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS)
    return tiny, corpus


def seed_store(folder: Path, tiny: Path, corpus: Path) -> tuple[Path, Path]:
    """(data, cache) folders holding one real stored prune run and the caches it wrote."""
    data, cache = folder / "data", folder / "cache"
    env = {**os.environ, "ALPHAPRUNE_DATA": str(data), "ALPHAPRUNE_CACHE": str(cache)}
    argv = [a.format(T=tiny, C=corpus) for a in PRUNE]
    proc = run_cli(argv, env)
    assert proc.returncode == 0, proc.stderr
    with sqlite3.connect(data / "runs.sqlite") as conn:
        assert conn.execute("SELECT id FROM runs").fetchall() == [(1,)]
    conn.close()
    return data, cache


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    shared = tmp_path_factory.mktemp("shared")
    tiny, corpus = make_shared(shared)
    data, cache = seed_store(tmp_path_factory.mktemp("seed"), tiny, corpus)
    return tiny, corpus, data, cache


def _ctx(folder: Path, seeded, hub: str, model_cache: Path | None = None) -> Ctx:
    """A case's folders: the seeded store and caches copied, or `model_cache` (holding the
    dequantized default model: loading it then writes nothing) watched in place."""
    tiny, corpus, data, cache = seeded
    ctx = Ctx(folder / "work", folder / "data", model_cache or folder / "cache", tiny, corpus, hub)
    ctx.work.mkdir(parents=True)
    shutil.copytree(data, ctx.data)
    if model_cache is None:
        shutil.copytree(cache, ctx.cache)
    return ctx


def _param(case: Case):
    marks = [pytest.mark.slow] if case.slow else []
    if case.root_skips and IS_ROOT:
        marks.append(pytest.mark.skip(reason="running as root: chmod does not stop root from writing"))
    return pytest.param(case, id=case.id, marks=marks)


# --------------------------------------------------------------------------- tests


def test_the_catalogue_is_large_and_ids_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 40


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, seeded, hub) -> dict[str, Outcome]:
    """Every selected (and not skipped) case of test_bad_input, run at once; id -> Outcome."""
    selected = {
        item.callspec.params["case"].id
        for item in request.session.items
        if item.path == Path(__file__)
        and getattr(item, "originalname", "") == "test_bad_input"
        and item.get_closest_marker("skip") is None
    }
    cases = [case for case in CASES if case.id in selected]
    model_cache = lambda: Path(os.environ["ALPHAPRUNE_CACHE"])  # noqa: E731  (holds the real model)

    def make_ctx(case: Case) -> Ctx:
        folder = tmp_path_factory.mktemp(case.id)
        return _ctx(folder, seeded, hub, model_cache() if case.slow else None)

    load_real_model = lambda: request.getfixturevalue("real_model")  # noqa: E731  (dequantized once)
    return run_all(cases, make_ctx, load_real_model)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input(case: Case, outcomes):
    check_case(case, outcomes[case.id])


def test_no_pickle_is_unpickled_even_past_the_folder_check(tmp_path, seeded, hub):
    """transformers itself is asked for safetensors only: the pickle is not read either way."""
    import torch

    from alphaprune.models import _from_pretrained

    ctx = _ctx(tmp_path, seeded, hub)
    _pickle_only(ctx)
    with pytest.raises(OSError):
        _from_pretrained(str(ctx.work / "pickled"), torch.float32, False)
    assert not (ctx.work / "PWNED").exists()


def test_trust_remote_code_warns_on_stderr(tmp_path, seeded, hub):
    ctx = _ctx(tmp_path, seeded, hub)
    proc = run_cli(["analyze", "--model", str(ctx.tiny), "--trust-remote-code"], _env(ctx, CASES[0]))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("alphaprune: warning:")]
    assert len(warnings) == 1 and "--trust-remote-code runs Python code" in warnings[0]
    proc = run_cli(["analyze", "--model", str(ctx.tiny)], _env(ctx, CASES[0]))
    assert proc.returncode == 0 and "warning" not in proc.stderr


def test_delete_removes_nothing_when_one_id_is_unknown(tmp_path, seeded, hub):
    ctx = _ctx(tmp_path, seeded, hub)
    env = _env(ctx, CASES[0])
    assert run_cli(["runs", "--delete", "1,999999"], env).returncode == 2
    assert run_cli(["runs", "--delete", "1"], env).returncode == 0
    assert run_cli(["runs", "--delete", "1"], env).returncode == 2  # gone now: said so, not "deleted 0"


def test_the_doc_lists_every_case():
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", DOC.read_text(), flags=re.M))
    assert {case.id for case in CASES} <= listed, sorted({case.id for case in CASES} - listed)
    assert "## App" in DOC.read_text()


# --------------------------------------------------------------------------- the doc


def _markdown(lines: dict[str, str]) -> str:
    out = [
        "# Reliability: the bad-input catalogue",
        "",
        "Every row is a case of `tests/test_bad_inputs.py`: a real `python -m alphaprune` run that must",
        "exit with code 2, print one line (argparse's usage block may come before it), no traceback, and",
        "leave the run store, the caches and the user's files byte-identical. The message column is what",
        "the run printed (regenerate: `.venv/bin/python tests/test_bad_inputs.py` rewrites this CLI part).",
        "Paths: `W/` the user's folder, `T` a tiny model folder, `C` a text file.",
        "",
        "## CLI",
        "",
    ]
    for group in dict.fromkeys(case.group for case in CASES):
        out += [f"### {group.capitalize()}", "", "| case | input | message |", "|---|---|---|"]
        for case in (c for c in CASES if c.group == group):
            argv = " ".join(case.argv).replace("{W}", "W").replace("{T}", "T").replace("{C}", "C")
            argv = argv.replace(" ".join(DATA).replace("{C}", "C"), "DATA")
            env = " ".join(f"{k}={'(unset)' if v is None else v or chr(34) * 2}" for k, v in case.env.items())
            env = env.replace("{W}", "W").replace("{HUB}", "http://127.0.0.1:PORT")
            cell = f"`{env + ' ' if env else ''}alphaprune {argv}`".replace("|", "\\|")
            message = lines.get(case.id, case.expect).replace("|", "\\|")
            out.append(f"| `{case.id}` | {cell} | {message} |")
        out.append("")
    out += ["DATA = `" + " ".join(DATA).replace("{C}", "C") + "`; PORT: a local server answering as the hub does"]
    out += ["for a gated and for a private repository. Rows marked (root) were skipped where the catalogue ran"]
    out += ["as root, for whom chmod does not stop writes; their message is the one `alphaprune/paths.py` words.", ""]
    return "\n".join(out) + "\n" + _app_section()


def _app_section() -> str:
    """The app's rows (tests/test_app_bad_inputs.py, checked there), kept as the doc has them."""
    text = DOC.read_text() if DOC.exists() else ""
    return text[text.index("## App") :] if "## App" in text else "## App\n"


def _generic(line: str, ctx: Ctx) -> str:
    """A measured line with the case's own folders written as W, D and T."""
    for path, name in ((ctx.work, "W"), (ctx.data, "D"), (ctx.tiny, "T"), (ctx.corpus, "C")):
        line = line.replace(str(path), name)
    return line


def _measure_all() -> dict[str, str]:
    """Run every case outside pytest (root-skipped cases too, as far as they go); id -> line."""
    import tempfile

    import tests.conftest  # noqa: F401  (it points ALPHAPRUNE_* at its own folders: override after)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["ALPHAPRUNE_CACHE"] = str(tmp / "env-cache")
        os.environ["ALPHAPRUNE_DATA"] = str(tmp / "env-data")
        tiny, corpus = make_shared(tmp / "shared")
        seed = seed_store(tmp / "seed", tiny, corpus)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        from alphaprune.models import load_model

        load_model("smollm2-135m")  # dequantized into env-cache, for the slow cases
        url = f"http://127.0.0.1:{server.server_port}"
        folders = iter(range(len(CASES)))

        def make_ctx(case: Case) -> Ctx:
            model_cache = tmp / "env-cache" if case.slow else None
            return _ctx(tmp / f"case{next(folders)}", (tiny, corpus, *seed), url, model_cache)

        root_skipped = {case.id for case in CASES if case.root_skips and IS_ROOT}
        outcomes = run_all([case for case in CASES if case.id not in root_skipped], make_ctx)
        lines = {}
        for case in CASES:
            try:
                if case.id in root_skipped:
                    raise AssertionError("(root)")
                lines[case.id] = _generic(check_case(case, outcomes[case.id]), outcomes[case.id].ctx)
            except AssertionError as exc:
                lines[case.id] = f"(not measured here: {str(exc).splitlines()[0]}) {case.expect}"
            print(f"{case.id}: {lines[case.id]}", file=sys.stderr)
        server.shutdown()
    return lines


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    DOC.write_text(_markdown(_measure_all()))
    print(f"wrote {DOC}")
