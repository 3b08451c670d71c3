"""Several users at once: browser sessions on one server, CLI prunes on one run store.

    .venv/bin/python -m pytest tests/test_concurrency.py -q

- The dense model is checked after every pruning run (pipeline._check_intact): a run
  during which something wrote to it is refused, not stored.
- Two `python -m alphaprune prune` processes at once on one ALPHAPRUNE_DATA: both runs
  are stored, complete, and the SQLite file passes its integrity check.
- Three browser sessions on one `streamlit run app.py` (tests/browser.py): two load and
  prune (different pruners and windows) while the third moves the allocation sliders.
  No page shows an exception, each session shows its own numbers, the run store holds
  exactly the two runs, and the shared dense model has the same fingerprint before and
  after, equal to the one computed here from a model loaded independently. Takes a few
  minutes on a busy machine (the first load dequantizes the model).
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from alphaprune.errors import UserError
from alphaprune.pipeline import PruneConfig, fingerprint, run_prune
from alphaprune.runs import RunStore
from tests.browser import (
    LONG_MS,
    NEEDS_BROWSER,
    ROOT,
    SHORT_MS,
    VIEWPORT,
    expect,
    fill_numbers,
    go,
    launch,
    load_default,
    metric,
    no_exception,
    open_app,
    serve,
    settle,
    wait_loaded,
)
from tests.conftest import tiny_llama, tiny_loaded, tiny_tokenizer

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # the browser test is skipped by NEEDS_BROWSER
    sync_playwright = None

CORPUS = "It was the best of times, it was the worst of times. " * 60
CLI_TIMEOUT_S = 600  # two interpreters importing torch at once on a busy machine


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return str(path)


def _tiny_config(corpus: str, **kw) -> PruneConfig:
    base = dict(calib=corpus, eval=corpus, calib_samples=4, seqlen=32, eval_windows=4)
    return PruneConfig(**{**base, **kw})


# --- the dense model stays intact ----------------------------------------------------------


def test_run_records_the_dense_fingerprint_after_pruning(corpus):
    loaded = tiny_loaded(layers=2)
    before = fingerprint(loaded.model)
    result = run_prune(loaded, _tiny_config(corpus, pruner="wanda", sparsity=0.5))
    assert result.fingerprint == before
    assert result.dense_fingerprint_after == before == fingerprint(loaded.model)
    assert result.record().settings["dense_fingerprint_after"] == before


def test_a_dense_model_written_to_while_pruning_is_refused(corpus):
    """Another user writing to the shared dense model mid-run (here: from the progress
    callback, i.e. between pruning steps) makes the run fail with one line, unstored."""
    loaded = tiny_loaded(layers=2)
    weight = loaded.model.model.layers[0].mlp.up_proj.weight

    def meddle(fraction: float, message: str) -> None:
        if message.startswith("wanda"):
            with torch.no_grad():
                weight[0, 0] += 1.0

    with pytest.raises(UserError, match=r"dense model's weights changed while pruning") as caught:
        run_prune(loaded, _tiny_config(corpus, pruner="wanda", sparsity=0.5), progress=meddle)
    assert "\n" not in str(caught.value)


# --- two CLI prunes on one run store -------------------------------------------------------


def test_two_cli_prunes_in_parallel_on_one_run_store(tmp_path, corpus):
    folder = tmp_path / "tiny-model"
    tiny_llama(layers=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    env = {**os.environ, "ALPHAPRUNE_DATA": str(tmp_path / "data")}
    data = ["--calib", corpus, "--eval", corpus, "--calib-samples", "4", "--seqlen", "32", "--eval-windows", "4"]
    jobs = {"wanda": "0.5", "magnitude": "0.6"}
    procs = {}
    for pruner, sparsity in jobs.items():  # both started before either is waited for
        command = [sys.executable, "-m", "alphaprune", "prune", "--model", str(folder), "--pruner", pruner]
        command += ["--allocation", "alphapruning", "--sparsity", sparsity, *data]
        procs[pruner] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for pruner, proc in procs.items():
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
        assert proc.returncode == 0, f"{pruner}: {err[-2000:]}"
        assert re.search(rf"^run \d+: {pruner} alphapruning", out, re.M), out

    db = tmp_path / "data" / "runs.sqlite"
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    runs = RunStore(db).list()
    assert len(runs) == 2 and len({r.id for r in runs}) == 2
    dense_fp = fingerprint(tiny_llama(layers=2))
    for run in runs:
        pruner = run.settings["pruner"]
        assert run.settings["sparsity"] == pytest.approx(float(jobs.pop(pruner)))
        assert run.actual_sparsity == pytest.approx(run.settings["sparsity"], abs=0.02)
        assert run.fingerprint == run.settings["dense_fingerprint_after"] == dense_fp
        assert 1.0 < run.ppl_before < float("inf") and 1.0 < run.ppl_after < float("inf")
        assert len(run.ratios) == 14 and len(run.block_ratios) == 2  # 7 matrices per block
        assert run.seconds["total"] > 0 and run.versions
    assert not jobs  # one run of each pruner


# --- three browser sessions on one server --------------------------------------------------

PRUNERS = {1: ("wanda", 2), 2: ("magnitude", 3)}  # session -> (pruner, evaluation windows)
SLIDER_ROUNDS = (4, 16)  # at least, at most: rounds go on until both prunes are done


def _prune(page, pruner: str, windows: int) -> None:
    """On the Prune & evaluate page: small settings, the pruner, then press the button."""
    go(page, "Prune & evaluate")
    fill_numbers(page, {"Calibration samples": 4, "Sequence length": 128, "Evaluation windows": windows})
    box = page.get_by_role("combobox", name="Pruner")
    box.click()
    page.get_by_role("option", name=pruner, exact=True).click()
    expect(box).to_have_value(pruner)
    page.get_by_role("button", name="Prune and evaluate").click()


def _done(page) -> bool:
    return metric(page, "Perplexity, pruned").count() > 0


def _move(page, label: str, key: str) -> float:
    """One step of a slider (sparsity down, epsilon up); its new value once the page reran."""
    thumb = page.get_by_test_id("stSlider").filter(has_text=label).get_by_role("slider")
    before = thumb.input_value()
    thumb.focus()
    thumb.press(key)
    expect(thumb).not_to_have_value(before, timeout=SHORT_MS)
    settle(page)
    return round(float(thumb.input_value()), 2)


def _slide_while_pruning(page, pruning: list) -> tuple[list[tuple[float, float, str, str, str]], int]:
    """Session 3 moves its sliders until both prunes are shown; ([(sparsity, epsilon, weighted
    mean, lowest block, highest block) as shown], rounds during which both still pruned)."""
    sparsity, epsilon, seen, overlapped = 0.7, 0.3, [], 0
    for i in range(SLIDER_ROUNDS[1]):
        both_running = not any(_done(p) for p in pruning)
        if i >= SLIDER_ROUNDS[0] and not any(not _done(p) for p in pruning):
            break
        if i % 2 == 0:
            sparsity = _move(page, "Target sparsity", "ArrowLeft")
        else:
            epsilon = _move(page, "Allocation range epsilon", "ArrowRight")
        expect(metric(page, "Weighted mean")).to_have_text(f"{sparsity:.4f}", timeout=SHORT_MS)
        expect(page.locator("[data-stale='true']")).to_have_count(0, timeout=SHORT_MS)
        shown = [metric(page, name).inner_text() for name in ("Weighted mean", "Lowest block", "Highest block")]
        seen.append((sparsity, epsilon, *shown))
        overlapped += both_running and not any(_done(p) for p in pruning)
        no_exception(page, f"session 3, slider round {i}")
    return seen, overlapped


def _shown_run(page) -> dict:
    """What a session's Prune & evaluate page shows about its run."""
    label = page.get_by_text(re.compile(r"^Done in \d+ s \(run \d+\)$")).first.inner_text()
    return {
        "id": int(re.search(r"\(run (\d+)\)", label).group(1)),
        "dense": metric(page, "Perplexity, dense").inner_text(),
        "pruned": metric(page, "Perplexity, pruned").inner_text(),
        "sparsity": metric(page, "Actual sparsity").inner_text(),
        "caption": page.get_by_text(re.compile(r"; calibration \d+ x \d+ tokens")).inner_text(),
    }


def _check_allocations(seen, model) -> None:
    """Session 3's metrics are the library's allocation for its own slider values."""
    from alphaprune.analysis import analyze
    from alphaprune.pipeline import make_allocation

    analysis = analyze(model, "smollm2-135m")  # from the disk cache the server filled
    for sparsity, epsilon, mean, lowest, highest in seen:
        config = PruneConfig(sparsity=sparsity, allocation="alphapruning", epsilon=epsilon)
        allocation = make_allocation(model, config, analysis)
        expected = (f"{allocation.mean:.4f}", f"{min(allocation.block_ratios):.3f}")
        assert (mean, lowest) == expected, f"sparsity {sparsity}, epsilon {epsilon}"
        assert highest == f"{max(allocation.block_ratios):.3f}", f"sparsity {sparsity}, epsilon {epsilon}"


@pytest.mark.slow
@NEEDS_BROWSER
def test_three_browser_sessions_at_once(tmp_path):
    from alphaprune.models import load_model

    start = time.perf_counter()
    dense = load_model("smollm2-135m", dtype="float32")  # dequantizes into the cache the server reads
    dense_fp = fingerprint(dense.model)
    data = tmp_path / "server-data"
    env = {**os.environ, "ALPHAPRUNE_DATA": str(data)}
    with serve(tmp_path / "streamlit.log", env) as url, sync_playwright() as playwright:
        browser = launch(playwright)
        pages = {n: browser.new_context(viewport=VIEWPORT).new_page() for n in (1, 2, 3)}
        for page in pages.values():
            open_app(page, url)
        for page in pages.values():  # three loads at once: one shared model, three analyses
            load_default(page, wait=False)
        for n, page in pages.items():
            wait_loaded(page)
            no_exception(page, f"session {n}, Model")
        go(pages[3], "Allocation")
        for n, (pruner, windows) in PRUNERS.items():
            _prune(pages[n], pruner, windows)
        seen, overlapped = _slide_while_pruning(pages[3], [pages[1], pages[2]])
        shown = {}
        for n in PRUNERS:
            expect(metric(pages[n], "Perplexity, pruned")).to_be_visible(timeout=LONG_MS)
            settle(pages[n], LONG_MS)
            no_exception(pages[n], f"session {n}, Prune & evaluate")
            shown[n] = _shown_run(pages[n])
        # Nothing of sessions 1 and 2 leaks into session 3, nor session 3's sliders into them.
        go(pages[3], "Prune & evaluate")
        expect(pages[3].get_by_text("Set the options and press")).to_be_visible()
        assert metric(pages[3], "Perplexity, pruned").count() == 0
        for n in PRUNERS:
            go(pages[n], "Allocation")
            thumb = pages[n].get_by_test_id("stSlider").filter(has_text="Target sparsity").get_by_role("slider")
            assert float(thumb.input_value()) == pytest.approx(0.7)
            expect(metric(pages[n], "Weighted mean")).to_have_text("0.7000")
        for n, page in pages.items():
            no_exception(page, f"session {n}, at the end")
        browser.close()
    seconds = time.perf_counter() - start
    print(f"three-session test: {seconds:.0f} s, {len(seen)} slider rounds, {overlapped} while both pruned")

    assert overlapped >= 1, "session 3's sliders never moved while both prunes ran: not a concurrency test"
    for n, (pruner, windows) in PRUNERS.items():
        assert f"{pruner}, alphapruning at 0.7, unstructured;" in shown[n]["caption"]
        assert f"evaluation {windows} windows" in shown[n]["caption"]
    assert shown[1]["id"] != shown[2]["id"] and shown[1]["pruned"] != shown[2]["pruned"]

    with sqlite3.connect(data / "runs.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    runs = {run.id: run for run in RunStore(data / "runs.sqlite").list()}
    assert sorted(runs) == sorted(s["id"] for s in shown.values())
    for n, (pruner, windows) in PRUNERS.items():
        run = runs[shown[n]["id"]]
        assert (run.settings["pruner"], run.settings["eval_windows"]) == (pruner, windows)
        assert (run.settings["sparsity"], run.settings["epsilon"]) == (0.7, 0.3)  # not session 3's sliders
        assert (run.settings["calib_samples"], run.settings["seqlen"]) == (4, 128)
        assert f"{run.ppl_before:.2f}" == shown[n]["dense"] and f"{run.ppl_after:.2f}" == shown[n]["pruned"]
        assert f"{run.actual_sparsity:.4f}" == shown[n]["sparsity"]
        assert run.fingerprint == run.settings["dense_fingerprint_after"] == dense_fp

    _check_allocations(seen, dense.model)
