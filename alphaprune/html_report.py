"""A stored run as a one-page HTML report: its numbers, figures and every setting.

    alphaprune runs --report 12 [--report-out run-12.html]     # the CLI
    html = run_report(store.get(12))                           # the Runs page's download

The page stands alone and works offline: plotly.js is inlined once and every figure stays
interactive, its toolbar's camera button saving a PNG (alphaprune/figure_files.py). It holds
the run's perplexities, its block ratios (a figure), an auto search's curve (a figure), the
settings, the machine numerics and the library versions.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from alphaprune import atomic
from alphaprune.figure_files import figure_csv, png_config
from alphaprune.runs import RunRecord, accuracy_cells

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
    "text-align:left;font-size:14px}th{background:#f3f3f3}h1{font-size:24px}h2{font-size:19px}"
)


def run_figures(record: RunRecord) -> list[tuple[str, object]]:
    """(file name, Plotly figure) of every figure a stored run can show."""
    from alphaprune.plots import record_ratios_figure, search_figure
    from alphaprune.tune import Trial

    rule = record.settings.get("allocation", "")
    title = f"Sparsity per block ({rule})" if rule else "Sparsity per block"
    figures = [("block_ratios", record_ratios_figure(record.block_ratios, record.settings.get("sparsity"), title))]
    search = record.settings.get("search") or []
    if search:
        trials = [Trial.from_dict(t) for t in search]
        figures.append(("search", search_figure(trials, record.settings)))
    return figures


def run_report(record: RunRecord) -> str:
    """The HTML text of the report of `record`."""
    head = f"Run {record.id}: {record.kind} of {record.model}"
    parts = [f"<h1>{html.escape(head)}</h1>", f"<p>Created {html.escape(record.created)} by alphaprune.</p>"]
    parts += ["<h2>Results</h2>", _table(_results(record))]
    if record.accuracy:
        parts += ["<h2>Zero-shot accuracy (lm-eval)</h2>", _table(accuracy_cells(record.accuracy))]
    for index, (name, fig) in enumerate(run_figures(record)):
        inline = index == 0  # plotly.js once, in the first figure (offline: no CDN)
        div = fig.to_html(
            full_html=False,
            include_plotlyjs=inline,
            config=png_config(f"run{record.id}_{name}"),
            div_id=f"run{record.id}-{name}",
        )  # fixed ids: the same run, the same page
        parts.append(div)
    settings = {k: v for k, v in record.settings.items() if k not in ("search", "numerics")}
    parts += ["<h2>Settings</h2>", _table(settings)]
    parts += ["<h2>Numerics and versions</h2>", _table({**(record.settings.get("numerics") or {}), **record.versions})]
    if record.ratios:
        parts += ["<details><summary>Sparsity of every matrix</summary>", _table(record.ratios), "</details>"]
    body = "\n".join(parts)
    return f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(head)}</title>' \
           f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"  # fmt: skip


def write_run_report(record: RunRecord, path: str | Path) -> Path:
    """run_report into `path`, written atomically (alphaprune/atomic.py)."""
    return atomic.write_text(path, run_report(record))


def write_run_figures(record: RunRecord, folder: str | Path) -> list[Path]:
    """Each figure of `record` (run_figures) as run-ID-NAME.csv, its data (figure_files), beside
    run-ID-NAME.html, the chart alone (its toolbar's camera saves the PNG); written atomically."""
    folder, written = Path(folder), []
    for name, fig in run_figures(record):
        stem = folder / f"run-{record.id}-{name}"
        written.append(atomic.write_text(stem.with_suffix(".csv"), figure_csv(fig)))
        page = fig.to_html(include_plotlyjs=True, full_html=True, config=png_config(f"run-{record.id}-{name}"))
        written.append(atomic.write_text(stem.with_suffix(".html"), page))
    return written


def _results(record: RunRecord) -> dict:
    rows = {"perplexity before": record.ppl_before, "perplexity after": record.ppl_after}
    rows["measured sparsity"] = record.actual_sparsity
    rows.update({f"seconds, {stage}": value for stage, value in record.seconds.items()})
    return {k: v for k, v in rows.items() if v is not None}


def _table(rows: dict) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_text(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value if isinstance(value, str) else json.dumps(value)
