"""Faults: the CLI killed (SIGKILL, then Ctrl-C) in the middle of its work leaves nothing half written.

Each case starts the real CLI (`python -m alphaprune ...`) as a subprocess with its own
cache and data folders, waits until it is demonstrably inside the step (a progress bar on
stderr, or the step's temporary folder appearing), waits a random fraction of that step's
length (measured on an uninterrupted run) and kills it: first with SIGKILL, then the next
identical command with SIGINT (Ctrl-C: exit 130, the line "alphaprune: interrupted", no
traceback). After each kill: the run store passes SQLite's integrity check and holds only
complete runs, every cache entry loads, the dequantized model and the --save folder are
whole or absent, and after Ctrl-C no temporary is left. Then the identical command runs to
completion, gives what the uninterrupted run gave, and the killed runs' temporaries are gone.

    .venv/bin/python -m pytest tests/test_faults.py -q                 # real model: slow
    FAULT_SEED=7 .venv/bin/python -m pytest tests/test_faults.py -q    # replay the kill points
    .venv/bin/python -m pytest tests/test_faults.py -q -m "not slow"   # atomic.py alone, ~10 s

The fast tests kill a small writer process inside alphaprune.atomic's file and folder
writes, including between the two renames that replace an existing folder.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("FAULT_SEED", random.SystemRandom().randrange(10**6)))
TIMEOUT = 1800  # s; only guards against a hang (the shared test machine can be very slow)
TEMPORARY = re.compile(r"\.tmp(\.|$)")  # any temporary name, alphaprune.atomic's or older ones

# The children here get Ctrl-C as a user's terminal sends it. A suite started in the background
# by a shell without job control (`cmd &` in a script, `nohup make test &`) inherits SIGINT
# ignored, and an ignored signal stays ignored across exec: every child would then shrug the
# signal off and finish (exit 0). A handler of this process's own is reset to the default at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Small settings: python-docs text, 4 windows of 128 tokens, magnitude pruning (no calibration).
PRUNE = ["prune", "--pruner", "magnitude", "--sparsity", "0.5", "--seqlen", "128", "--eval-windows", "4"]
EVAL = ["eval", "--seqlen", "128", "--eval-windows", "4"]


# ---------------------------------------------------------------- a CLI subprocess


class Cli:
    """`python -m alphaprune ARGS` with its own cache/data folders; stderr read as it comes."""

    def __init__(self, home: Path, args: list[str]):
        env = {**os.environ, "ALPHAPRUNE_CACHE": str(home / "cache"), "ALPHAPRUNE_DATA": str(home / "data")}
        env["PYTHONPATH"] = str(ROOT)
        self.args = args
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alphaprune", *args],
            cwd=home,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.err, self.out = bytearray(), bytearray()
        self._readers = [self._reader(self.proc.stderr, self.err), self._reader(self.proc.stdout, self.out)]

    @staticmethod
    def _reader(stream, into: bytearray) -> threading.Thread:
        def pump():
            while chunk := os.read(stream.fileno(), 65536):
                into.extend(chunk)

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        return thread

    @property
    def stderr(self) -> str:
        return self.err.decode(errors="replace")

    def wait_for(self, condition, what: str) -> float:
        """Seconds since start when `condition()` first held; fails if the process ends first."""
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"{self.args} ended (exit {self.proc.returncode}) before {what}:\n{self.stderr[-2000:]}")
            if time.monotonic() - self.start > TIMEOUT:
                pytest.fail(f"{self.args}: no {what} after {TIMEOUT} s")
            time.sleep(0.02)
        return time.monotonic() - self.start

    def finish(self) -> int:
        code = self.proc.wait(timeout=TIMEOUT)
        for thread in self._readers:
            thread.join(timeout=10)
        return code

    def seconds(self) -> float:
        return time.monotonic() - self.start


def _on_stderr(cli: Cli, text: str):
    return lambda: text in cli.stderr


def _temporary_in(folder: Path):
    """A condition: a temporary (file or folder) that was not there before appears in `folder`
    (a killed run's leftovers do not count)."""

    def names() -> set[str]:
        return {p.name for p in folder.iterdir() if TEMPORARY.search(p.name)} if folder.is_dir() else set()

    before = names()
    return lambda: bool(names() - before)


def _run(home: Path, args: list[str]) -> Cli:
    cli = Cli(home, args)
    code = cli.finish()
    assert code == 0, f"{args} failed (exit {code}):\n{cli.stderr[-3000:]}"
    return cli


# ---------------------------------------------------------------- what must hold after a kill


def _temporaries(*folders: Path) -> list[Path]:
    found = []
    for folder in folders:
        for parent, dirs, files in os.walk(folder):
            found += [Path(parent) / n for n in dirs + files if TEMPORARY.search(n)]
    return found


def _check_store(home: Path, kind: str | None) -> int:
    """The run store passes SQLite's integrity check and holds only whole runs of `kind`
    (None: no run at all); returns how many."""
    path = home / "data" / "runs.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT kind, model, settings, ppl_after FROM runs").fetchall()
    assert kind is not None or not rows, rows
    for row in rows:
        row_kind, model, settings, ppl = row
        assert row_kind == kind and model and json.loads(settings) and ppl is not None and float(ppl) > 1, row
    return len(rows)


def _check_caches(home: Path) -> None:
    """Every analysis entry loads; the JSON caches parse; each model folder is whole."""
    cache = home / "cache"
    for entry in (cache / "analyses").glob("[!.]*.npz"):
        with np.load(entry, allow_pickle=False) as data:
            records = json.loads(str(data["__records__"]))
            assert all(np.isfinite(data[f"ev:{r['name']}"]).all() for r in records)
    for name in ("perplexity.json", "owl.json"):
        if (cache / name).exists():
            assert isinstance(json.loads((cache / name).read_text()), dict)
    for folder in (cache / "models").glob("[!.]*"):
        _check_model_folder(folder)


def _check_model_folder(folder: Path) -> None:
    """A model folder that loads with transformers, every weight finite."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    AutoTokenizer.from_pretrained(folder)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _check_out(path: Path) -> None:
    if path.exists():
        json.loads(path.read_text())


# ---------------------------------------------------------------- kill twice, then finish


def _kill(home: Path, args: list[str], sig: int, point, rng: random.Random, redo=lambda: None) -> Cli:
    """Start `args`; once `inside(cli)` holds, wait a random fraction of `span` s and send `sig`.

    Where the run finished its work before the signal landed (exit 0, or a Ctrl-C that found
    the interpreter shutting down: nothing was interrupted), it is tried again with a sooner
    kill point, `redo()` first."""
    inside, span = point
    for attempt in range(4):
        redo()
        cli = Cli(home, args)
        entered = cli.wait_for(inside(cli), "the step to start")
        delay = rng.uniform(0.05, 0.6) * span / 4**attempt
        time.sleep(delay)
        cli.where = f"{sig!r} {delay:.2f} s after the step began at {entered:.1f} s (seed {SEED}, try {attempt + 1})"
        if cli.proc.poll() is None:
            cli.proc.send_signal(sig)
        code = cli.finish()
        cli.finished_before = attempt  # the earlier tries ran to the end, each storing its run
        # Ctrl-C while the interpreter was already shutting down (its default SIGINT action is
        # back then): the work was done, as with exit 0
        late = sig == signal.SIGINT and code == -signal.SIGINT and "Traceback" not in cli.stderr
        if code != 0 and not late:
            break
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, f"exit {code}, {cli.where}"
    else:  # Ctrl-C: one line, no traceback
        assert code == 130, f"exit {code}, {cli.where}:\n{cli.stderr[-3000:]}"
        assert "alphaprune: interrupted" in cli.stderr, f"{cli.where}\n{cli.stderr[-2000:]}"
        assert "Traceback" not in cli.stderr, f"{cli.where}\n{cli.stderr}"
    return cli


def _fault_case(
    home: Path, args: list[str], kind: str | None, points: dict, extra=lambda: None, also=None, redo=lambda: None
):
    """SIGKILL, then SIGINT, then an uninterrupted run of `args`, the state checked after each.

    `points[sig]` = (inside, span): the kill comes a random fraction of `span` s after
    `inside(cli)` first holds. `extra()` checks more state; `also` is one more folder the
    command writes into (besides the cache and data folders). `redo()` runs before each kill
    and removes what a killed run may have finished and cached (checked whole just before),
    so that the next run does the step again instead of reading it."""
    rng = random.Random(f"{SEED}|{args}")
    folders = [home / "cache", home / "data"] + ([also] if also else [])
    rows = _check_store(home, kind)
    for sig in (signal.SIGKILL, signal.SIGINT):
        before = set(_temporaries(*folders))
        cli = _kill(home, args, sig, points[sig], rng, redo)
        try:
            now = _check_store(home, kind)
            # at most the killed run, whole, if it got that far, and the tries the signal came too late for
            assert rows <= now <= rows + cli.finished_before + 1
            rows = now
            _check_caches(home)
            extra()
            if sig == signal.SIGINT:  # Ctrl-C: the writer deletes its own temporaries
                assert not set(_temporaries(*folders)) - before
        except AssertionError as exc:
            raise AssertionError(f"after {cli.where}: {exc}") from exc
    final = _run(home, args)
    assert _check_store(home, kind) == rows + (kind is not None)
    _check_caches(home)
    extra()
    leftovers = _temporaries(*folders)
    assert not leftovers, f"the next run left the killed runs' temporaries (seed {SEED}): {leftovers}"
    return final


# ---------------------------------------------------------------- the uninterrupted runs


def _model_folder(home: Path) -> Path:
    return next((home / "cache" / "models").glob("[!.]*"))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, real_model):
    """Uninterrupted runs of every command in one cache, their results, and how long each
    step took (the kill points are fractions of that). The cache starts with the session's
    dequantized model (tests/conftest.py), so only test_kill_during_dequantization pays for
    dequantizing; its spans come from the session's own first load of the model."""
    home = tmp_path_factory.mktemp("baseline")
    source = next((Path(os.environ["ALPHAPRUNE_CACHE"]) / "models").glob("[!.]*"))
    shutil.copytree(source, home / "cache" / "models" / source.name)
    load = real_model.seconds_load if not real_model.from_cache else 40.0  # dequantize + write + read
    spans = {"dequantize": 0.7 * load, "write": 0.2 * load}
    cli = Cli(home, ["analyze", "--out", "analysis.json"])
    analysing = cli.wait_for(_on_stderr(cli, "analyze:"), "analysis")
    assert cli.finish() == 0, cli.stderr[-3000:]
    spans["analysis"] = cli.seconds() - analysing
    cli = Cli(home, [*EVAL, "--out", "eval.json"])
    measuring = cli.wait_for(_on_stderr(cli, "perplexity:"), "perplexity")
    assert cli.finish() == 0, cli.stderr[-3000:]
    spans["eval"] = cli.seconds() - measuring
    cli = Cli(home, [*PRUNE, "--save", "saved", "--out", "prune.json"])
    pruning = cli.wait_for(_on_stderr(cli, "magnitude 0.5:"), "pruning")
    saving = cli.wait_for(_temporary_in(home), "the save")
    saved = cli.wait_for(_on_stderr(cli, "saved the pruned model"), "saved")
    assert cli.finish() == 0, cli.stderr[-3000:]
    spans.update(prune=saving - pruning, save=saved - saving)
    results = {name: json.loads((home / f"{name}.json").read_text()) for name in ("analysis", "eval", "prune")}
    return {"home": home, "spans": spans, **results}


@pytest.fixture
def home(tmp_path, baseline):
    """A fresh cache holding only the dequantized model (copied from the baseline)."""
    source = _model_folder(baseline["home"])
    shutil.copytree(source, tmp_path / "cache" / "models" / source.name)
    return tmp_path


def _same_analysis(got: dict, want: dict) -> None:
    assert [layer["name"] for layer in got["layers"]] == [layer["name"] for layer in want["layers"]]
    for a, b in zip(got["layers"], want["layers"], strict=True):
        for key in ("alpha_peak", "alpha_mid", "alpha_ks", "D_peak", "stable_rank", "spectral_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, nan_ok=True), (a["name"], key)


# ---------------------------------------------------------------- one test per case


def _both(inside, span: float) -> dict:
    return {signal.SIGKILL: (inside, span), signal.SIGINT: (inside, span)}


def _stderr_says(text: str):
    return lambda cli: _on_stderr(cli, text)


@pytest.mark.slow
def test_kill_during_dequantization(tmp_path, baseline):
    """An empty cache, so the GGUF is dequantized. SIGKILL while its float copy is written
    into the cache (the one part of this step that leaves files), Ctrl-C inside transformers'
    dequantization. The model folder is whole or absent; the next run dequantizes again,
    deletes the killed copy, and analyses the same."""
    spans, models = baseline["spans"], tmp_path / "cache" / "models"
    out = tmp_path / "analysis.json"
    points = {
        signal.SIGKILL: (lambda cli: _temporary_in(models), spans["write"]),
        signal.SIGINT: (_stderr_says("de-quantizing GGUF tensors"), spans["dequantize"]),
    }
    done = models / _model_folder(baseline["home"]).name

    def redo():
        if (done / "config.json").is_file():  # the killed run published it: dequantize again
            shutil.rmtree(done)

    _fault_case(tmp_path, ["analyze", "--out", "analysis.json"], None, points, lambda: _check_out(out), redo=redo)
    assert (done / "config.json").is_file()
    _same_analysis(json.loads(out.read_text()), baseline["analysis"])


@pytest.mark.slow
def test_kill_during_analysis(home, baseline):
    out = home / "analysis.json"
    points = _both(_stderr_says("analyze:"), baseline["spans"]["analysis"])

    def redo():  # an analysis the killed run finished and cached would be read, not redone
        for entry in (home / "cache" / "analyses").glob("[!.]*.npz"):
            entry.unlink()

    _fault_case(home, ["analyze", "--out", "analysis.json"], None, points, lambda: _check_out(out), redo=redo)
    assert list((home / "cache" / "analyses").glob("[!.]*.npz")), "the analysis was not cached"
    _same_analysis(json.loads(out.read_text()), baseline["analysis"])


@pytest.mark.slow
def test_kill_during_prune(home, baseline):
    out = home / "prune.json"
    points = _both(_stderr_says("magnitude 0.5:"), baseline["spans"]["prune"])
    _fault_case(home, [*PRUNE, "--out", "prune.json"], "prune", points, lambda: _check_out(out))
    got, want = json.loads(out.read_text()), baseline["prune"]
    for key in ("ppl_before", "ppl_after", "actual_sparsity"):
        assert got[key] == pytest.approx(want[key], rel=1e-6), key
    assert got["ratios"] == want["ratios"]


@pytest.mark.slow
def test_kill_during_save(home, baseline):
    """Killed while --save writes the pruned model: the folder is absent or a whole export."""
    from alphaprune.export import RATIOS_FILE, load_ratios

    saved = home / "saved"

    def check_saved():
        if saved.exists():
            assert (saved / RATIOS_FILE).is_file(), sorted(os.listdir(saved))
            _check_model_folder(saved)

    points = _both(lambda cli: _temporary_in(home), baseline["spans"]["save"])
    _fault_case(home, [*PRUNE, "--save", "saved"], "prune", points, check_saved, also=home)
    assert load_ratios(saved).measured == load_ratios(baseline["home"] / "saved").measured


@pytest.mark.slow
def test_kill_during_eval(home, baseline):
    out = home / "eval.json"
    points = _both(_stderr_says("perplexity:"), baseline["spans"]["eval"])
    cached = home / "cache" / "perplexity.json"  # a finished evaluation is read from here next time
    _fault_case(
        home,
        [*EVAL, "--out", "eval.json"],
        "eval",
        points,
        lambda: _check_out(out),
        redo=lambda: cached.unlink(missing_ok=True),
    )
    got = json.loads(out.read_text())["perplexity"]
    assert math.isfinite(got) and got == pytest.approx(baseline["eval"]["perplexity"], rel=1e-6)


# ---------------------------------------------------------------- alphaprune.atomic alone (fast)

_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from alphaprune import atomic
    kind, target = sys.argv[1], sys.argv[2]
    if kind == "file":
        with atomic.atomic_file(target, "wb") as f:
            for _ in range(10_000):
                f.write(b"x" * 4096); f.flush()
                print("writing", flush=True); time.sleep(0.001)
    elif kind == "folder":
        with atomic.atomic_folder(target) as tmp:
            for i in range(10_000):
                (tmp / f"part{i}").write_bytes(b"y" * 4096)
                print("writing", flush=True); time.sleep(0.001)
    else:  # die between the two renames that replace an existing folder
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if str(src) == target:
                os.kill(os.getpid(), 9)
        atomic.os.replace = replace
        with atomic.atomic_folder(target) as tmp:
            (tmp / "new").write_text("new")
    """
)


def _writer(tmp_path: Path, kind: str, target: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", _WRITER, kind, str(target)]
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_atomic_write_killed_midway(tmp_path, kind, sig):
    """A writer killed mid-write leaves the old content whole (SIGINT: and no temporary);
    the next write of the same name removes a SIGKILLed writer's temporary."""
    from alphaprune import atomic

    target = tmp_path / "target"
    if kind == "file":
        atomic.write_bytes(target, b"old")
    else:
        with atomic.atomic_folder(target) as tmp:
            (tmp / "old").write_text("old")
    proc = _writer(tmp_path, kind, target)
    rng = random.Random(f"{SEED}|{kind}|{sig}")
    for _ in range(rng.randrange(5, 200)):  # a random point of the write
        assert proc.stdout.readline() == "writing\n", proc.stderr.read()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    where = f"(seed {SEED}, {kind}, {sig!r})"
    if kind == "file":
        assert target.read_bytes() == b"old", where
    else:
        assert sorted(os.listdir(target)) == ["old"], where
    left = _temporaries(tmp_path)
    assert (len(left) == 1) if sig == signal.SIGKILL else not left, (where, left)
    if kind == "file":
        atomic.write_bytes(target, b"new")
        assert target.read_bytes() == b"new"
    else:
        with atomic.atomic_folder(target) as tmp:
            (tmp / "new").write_text("new")
        assert sorted(os.listdir(target)) == ["new"]
    assert not _temporaries(tmp_path), where


def test_kill_between_the_renames_keeps_the_old_folder(tmp_path):
    """Killed after the old folder was moved aside and before the new one came in: the next
    write puts the old folder back first (nothing stored is lost), then replaces it."""
    from alphaprune import atomic

    target = tmp_path / "export"
    with atomic.atomic_folder(target) as tmp:
        (tmp / "old").write_text("old")
    proc = _writer(tmp_path, "between", target)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read()
    assert not target.exists()
    assert any(p.name.endswith(".tmp.old") for p in tmp_path.iterdir())
    assert atomic.clean_stale(target)  # the new folder's temporary goes; the old one comes back
    assert sorted(os.listdir(target)) == ["old"]
    with atomic.atomic_folder(target) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(os.listdir(target)) == ["new"] and not _temporaries(tmp_path)
