"""Every figure as PNG and CSV, and a run as a one-page HTML report (issue 12, item 5).

The CSV of a figure holds exactly the numbers its traces draw; the app draws each figure with
the PNG toolbar button and a CSV download beside it; `alphaprune runs --report ID` and the Runs
page write the same offline HTML page.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import numpy as np
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from alphaprune import plots
from alphaprune.cli import main
from alphaprune.figure_files import COLUMNS, figure_csv, figure_rows, png_config
from alphaprune.html_report import run_report
from alphaprune.runs import RunRecord, RunStore

ACCURACY = {"tasks": ["tiny"], "before": {"tiny": {"acc": 0.5}}, "after": {"tiny": {"acc": 0.25}}}
SEARCH = [
    {"values": {"epsilon": 0.1}, "heldout_ppl": 30.0, "pruned": True},
    {"values": {"epsilon": 0.3}, "heldout_ppl": 25.0, "pruned": True},
]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAPRUNE_DATA", str(tmp_path / "data"))
    return RunStore()


def _record(**settings) -> RunRecord:
    base = {"pruner": "wanda", "allocation": "alphapruning", "sparsity": 0.6, "epsilon": 0.3, "search": SEARCH}
    base["numerics"] = {"threads": "2", "attention": "sdpa"}
    return RunRecord(kind="prune", model="m", settings={**base, **settings}, ratios={"a": 0.5, "b": 0.7},
                     block_ratios=[0.5, 0.7], ppl_before=10.0, ppl_after=12.5, actual_sparsity=0.6,
                     seconds={"prune": 3.0}, versions={"torch": "2.13.0"},
                     accuracy=ACCURACY)  # fmt: skip


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_csv_holds_every_point_of_every_trace():
    fig = go.Figure([go.Scatter(x=[1, 2, 3], y=[4.5, 5.5, 6.5], name="line", text=["a", "b", "c"]),
                     go.Bar(y=np.array([0.1, 0.2]), name="bars")])  # fmt: skip
    rows = _rows(figure_csv(fig))
    assert list(rows[0]) == list(COLUMNS) and len(rows) == 5
    assert [(r["x"], r["y"], r["label"]) for r in rows[:3]] == [("1", "4.5", "a"), ("2", "5.5", "b"), ("3", "6.5", "c")]
    assert [(r["trace"], r["x"], r["y"]) for r in rows[3:]] == [("bars", "0", "0.1"), ("bars", "1", "0.2")]


def test_csv_of_a_heatmap_has_one_row_per_cell():
    z = np.arange(6.0).reshape(2, 3)  # (rows = y, columns = x)
    rows = figure_rows(go.Figure(go.Heatmap(z=z, x=["q", "k", "v"], y=[0, 1], name="alpha")))
    assert len(rows) == 6 and {(r["x"], r["y"], r["z"]) for r in rows} == {
        (x, y, z[y, j]) for y in (0, 1) for j, x in enumerate("qkv")
    }


def test_the_figures_of_a_stored_run_as_csv_and_png():
    fig = plots.record_ratios_figure([0.5, 0.7, 0.9], 0.7, "per block")
    assert [float(r["y"]) for r in _rows(figure_csv(fig))] == [0.5, 0.7, 0.9]
    assert fig.layout.shapes[0].y0 == 0.7  # the target
    assert png_config("alloc")["toImageButtonOptions"] == {"format": "png", "filename": "alloc", "scale": 2}


def test_html_report_is_one_offline_page_with_figures_settings_and_versions():
    page = run_report(dataclasses.replace(_record(), id=7))
    assert page.startswith("<!doctype html>") and page.count("Plotly.newPlot(") == 2  # ratios and search
    assert page.count("plotly.js v") == 1 and "<script src=" not in page  # inlined once: works offline
    assert '"toImageButtonOptions": {"format": "png", "filename": "run7_search"' in page  # the PNG button
    for needle in ("<th>perplexity after</th><td>12.5</td>", "<th>epsilon</th><td>0.3</td>", "<th>torch</th>",
                   "<th>attention</th><td>sdpa</td>", "<th>b</th><td>0.7</td>",
                   "<th>tiny acc after</th><td>0.25</td>"):  # fmt: skip
        assert needle in page, needle


def test_cli_writes_the_report_and_refuses_a_missing_run(store, tmp_path, capsys):
    run_id = store.add(_record())
    out = tmp_path / "r.html"
    assert main(["runs", "--report", str(run_id), "--report-out", str(out)]) == 0
    assert out.read_text() == run_report(store.get(run_id))
    assert main(["runs", "--report", "999", "--report-out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("alphaprune: error: no run with id 999")
    assert main(["runs", "--report", str(run_id), "--report-out", str(tmp_path / "r.txt")]) == 2


def test_cli_writes_each_figure_of_a_run_as_csv_and_chart(store, tmp_path, capsys):
    run_id = store.add(_record())
    tmp_path = tmp_path / "figures"
    tmp_path.mkdir()
    assert main(["runs", "--figures", str(run_id), "--figures-dir", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"run-{run_id}-{n}.{ext}" for n in ("block_ratios", "search") for ext in ("csv", "html")]
    ratios = _rows((tmp_path / f"run-{run_id}-block_ratios.csv").read_text())
    assert [float(r["y"]) for r in ratios] == [0.5, 0.7]  # the run's block ratios
    search = _rows((tmp_path / f"run-{run_id}-search.csv").read_text())
    assert {(r["x"], r["y"]) for r in search if r["trace"] == "candidates"} == {("0.1", "30.0"), ("0.3", "25.0")}
    page = (tmp_path / f"run-{run_id}-search.html").read_text()
    assert f'"filename": "run-{run_id}-search"' in page and "<script src=" not in page
    assert main(["runs", "--figures", str(run_id), "--figures-dir", str(tmp_path / "missing")]) == 2
    assert "not a writable folder" in capsys.readouterr().err
    assert main(["runs", "--figures-dir", str(tmp_path)]) == 2  # a folder for nothing
    assert main(["runs", "--figures", str(run_id), "--report", str(run_id)]) == 2
    err = capsys.readouterr().err
    assert "give --figures ID too" in err and "one of --report, --figures" in err


def test_runs_page_offers_csv_per_chart_and_the_html_report(store):
    run_id = store.add(_record())
    at = AppTest.from_file("../app.py", default_timeout=120).run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception and not at.error
    chart = next(c for c in at.get("plotly_chart") if "runs_sparsity_chart" in c.proto.id)
    assert json.loads(chart.proto.config)["toImageButtonOptions"]["filename"] == "runs_by_sparsity"
    keys = {b.proto.id.split("-")[-1] for b in at.download_button}
    assert any("runs_sparsity_chart_csv" in b.proto.id for b in at.download_button), keys
    report = [b for b in at.download_button if "runs_report" in b.proto.id]
    assert len(report) == 1 and at.selectbox(key="runs_report_id").value == run_id
