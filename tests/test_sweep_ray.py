"""Sweeps (issue 12, item 2): a grid of cells stored under one id that a rerun resumes, one
after another or fanned out as Ray tasks in a local cluster of two workers.

The Ray sweep stores the same four runs as the sequential one (the driver writes every record,
workers never touch the store); a driver killed midway leaves whole runs only, and the rerun
adds just the missing cells.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alphaprune.cli import main
from alphaprune.runs import RunStore
from tests.conftest import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
CORPUS = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 80


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep-model")
    tiny_llama(layers=4, hidden=128).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """This test's own run store and cache (the CLI, its subprocesses and Ray's workers read them)."""
    for name in ("DATA", "CACHE"):
        monkeypatch.setenv(f"ALPHAPRUNE_{name}", str(tmp_path / name.lower()))
    (tmp_path / "corpus.txt").write_text(CORPUS)
    return tmp_path


def _grid(folder: str, home: Path, pruner: str = "wanda") -> list[str]:
    corpus = str(home / "corpus.txt")
    return ["sweep", "--model", folder, "--pruner", pruner, "--allocation", "alphapruning", "--epsilons", "0.1,0.3",
            "--sparsities", "0.4,0.6", "--calib", corpus, "--eval", corpus, "--calib-samples", "8", "--seqlen", "64",
            "--eval-windows", "4"]  # fmt: skip


def _cli(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "alphaprune", *args], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # fmt: skip


def _cells(records) -> dict:
    return {r.settings["cell"]: (r.ppl_before, r.ppl_after, r.actual_sparsity, r.ratios) for r in records}


def test_a_sequential_sweep_resumes_with_only_the_missing_cells(tiny_folder, home, capsys, monkeypatch):
    from alphaprune import sweep

    stored, real = [], sweep._keep
    monkeypatch.setattr(sweep, "_keep", lambda *a, **k: stored.append(capsys.readouterr().out) or real(*a, **k))
    assert main(_grid(tiny_folder, home, "magnitude")) == 0
    assert [line.count("run ") for line in stored] == [0, 1, 1, 1]  # each cell printed as it lands, not at the end
    monkeypatch.setattr(sweep, "_keep", real)
    store = RunStore()
    first = store.list()
    assert len(first) == 4 and len({r.sweep for r in first}) == 1 and first[0].settings["sweep_cells"] == 4
    store.delete([first[2].id])
    assert main(_grid(tiny_folder, home, "magnitude")) == 0
    assert "3 already stored" in capsys.readouterr().err
    again = store.list()
    assert [r.id for r in again[:3]] == [first[0].id, first[1].id, first[3].id] and len(again) == 4
    assert _cells(again) == _cells(first)


def test_ray_local_sweep_equals_the_sequential_one_and_resumes_after_a_kill(tiny_folder, home, monkeypatch):
    pytest.importorskip("ray")
    assert main(_grid(tiny_folder, home)) == 0  # sequential, into a store of its own
    sequential = _cells(RunStore().list())
    monkeypatch.setenv("ALPHAPRUNE_DATA", str(home / "ray-data"))
    store = RunStore()
    driver = _cli([*_grid(tiny_folder, home), "--ray", "local", "--workers", "2"], start_new_session=True)
    deadline = time.monotonic() + 300
    while not store.path.exists() or not store.list():  # the first cell lands
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no cell stored in 300 s"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local cluster it started
    driver.wait()
    kept = store.list()
    assert 1 <= len(kept) <= 4
    if len(kept) == 4:  # the kill came after the last cell: take one away, so the rerun has one to add
        store.delete([kept[-1].id])
        kept = kept[:-1]
    rerun = _cli([*_grid(tiny_folder, home), "--ray", "local", "--workers", "2"])
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err[-2000:]
    assert f"{len(kept)} already stored" in err
    final = store.list()
    assert len(final) == 4 and [r.id for r in final[: len(kept)]] == [r.id for r in kept]
    assert _cells(final) == sequential  # the same four runs as one after another


def test_ray_missing_names_the_extra(tiny_folder, home, monkeypatch, capsys):
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda n, *a, **k: (_ for _ in ()).throw(ImportError(n))
                        if n == "ray" else real(n, *a, **k))  # fmt: skip
    assert main([*_grid(tiny_folder, home), "--ray", "local"]) == 2
    assert "alphaprune[ray]" in capsys.readouterr().err


def test_runs_page_shows_an_unfinished_sweeps_progress(home):
    from streamlit.testing.v1 import AppTest

    from alphaprune.runs import RunRecord

    store = RunStore()
    for cell in ("a", "b"):  # 2 of a 4-cell grid have landed
        settings = {"pruner": "wanda", "allocation": "uniform", "sparsity": 0.5, "cell": cell, "sweep_cells": 4}
        store.add(RunRecord(kind="prune", model="m", sweep="sweep-x", settings=settings, ppl_before=9, ppl_after=12))
    at = AppTest.from_file("../app.py", default_timeout=120).run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception and not at.error
    [bar] = at.get("progress")
    assert bar.proto.value == 50 and "sweep sweep-x: 2 of 4 cells stored" in bar.proto.text


def test_a_stored_auto_cell_is_not_pending_again(home):
    """An "auto" cell's run carries the values its search chose; the cell is still keyed by its own
    settings, so the same sweep run again finds it stored."""
    from alphaprune import sweep
    from alphaprune.config import PruneConfig
    from tests.conftest import tiny_loaded

    corpus = str(home / "corpus.txt")
    config = PruneConfig(sparsity=0.5, pruner="magnitude", allocation="atp", beta="auto", search_budget=2,
                         calib=corpus, eval=corpus, calib_samples=2, seqlen=64, eval_windows=2)  # fmt: skip
    loaded = tiny_loaded(layers=3)
    store, sid = RunStore(), sweep.sweep_id(loaded.name, [config])
    assert sweep.pending(store, loaded.name, [config], sid) == [config]
    sweep.run_sequential(loaded, [config], sid, 1, store)
    assert store.list()[0].settings["beta"] != "auto"  # the run records the chosen beta
    assert sweep.pending(store, loaded.name, [config], sid) == []


def test_grid_varies_each_rules_own_parameters():
    """--vary: a parameter over its values in the cells whose rule (or pruner) owns it, once elsewhere."""
    from alphaprune.config import PruneConfig
    from alphaprune.sweep import grid

    base = PruneConfig(sparsity=0.6, calib_samples=4, seqlen=32)
    cells = grid(base, sparsities=[0.5, 0.6], rules=["uniform", "atp", "owl"],
                 values={"beta": [0.005, 0.01], "owl_lambda": [0.04, 0.08, 0.12]})  # fmt: skip
    words = [(c.allocation, c.sparsity, c.beta if c.allocation == "atp" else c.owl_lambda) for c in cells]
    assert [w for w in words if w[0] == "atp"] == [("atp", s, b) for s in (0.5, 0.6) for b in (0.005, 0.01)]
    assert [w[2] for w in words if w[0] == "owl"] == [0.04, 0.08, 0.12] * 2
    assert len([c for c in cells if c.allocation == "uniform"]) == 2  # no parameter to vary: once per sparsity
    assert len(cells) == 2 + 4 + 6
    ria = grid(base, pruners=["wanda", "ria"], values={"ria_a": [0.5, 1.0]})
    assert [(c.pruner, c.param("ria_a")) for c in ria] == [("wanda", 0.5), ("ria", 0.5), ("ria", 1.0)]
    refined = grid(PruneConfig(refine="dsnot"), values={"dsnot_cycles": [5, 50]})  # a refiner's parameter too
    assert [c.dsnot_cycles for c in refined] == [5, 50]


@pytest.mark.parametrize(
    "vary,needle",
    [("beta=0.005", "no rule, pruner or refiner of this sweep has it"), ("nope=1", "NAME=V1,V2"),
     ("beta=1.5", "must be"), ("beta", "NAME=V1,V2")],
)  # fmt: skip
def test_bad_vary_is_one_line(tiny_folder, home, capsys, vary, needle):
    args = ["sweep", "--model", tiny_folder, "--allocation", "alphapruning", "--vary", vary]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse refuses a malformed value itself
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
