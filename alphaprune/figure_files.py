"""Every figure as files a user can take away: its data as CSV, and PNG from the chart.

    csv_text = figure_csv(fig)            # one row per plotted point (heatmaps: per cell)
    config = png_config("allocation")     # st.plotly_chart(fig, config=config): the camera
                                          # button in the chart's toolbar saves allocation.png

PNG is made by Plotly in the browser (the toolbar's "Download plot as a png"), so the app and
the HTML report (alphaprune/html_report.py) need no server-side renderer; the CSV holds the
numbers behind every trace, so a figure can be redrawn in any tool.
"""

from __future__ import annotations

import csv
import io

import numpy as np

COLUMNS = ("trace", "type", "x", "y", "z", "label")


def png_config(name: str) -> dict:
    """Plotly config: the toolbar shown on hover, its camera button saving `name`.png at 2x."""
    return {
        "displaylogo": False,
        "toImageButtonOptions": {"format": "png", "filename": name, "scale": 2},
    }


def figure_rows(fig) -> list[dict]:
    """One dict per point of every trace (COLUMNS); a heatmap's z gives one row per cell."""
    rows: list[dict] = []
    for index, trace in enumerate(fig.data):
        name = trace.name if trace.name is not None else f"trace {index}"
        kind = trace.type
        if getattr(trace, "z", None) is not None:
            rows += _cells(name, kind, trace)
        elif getattr(trace, "x", None) is not None or getattr(trace, "y", None) is not None:
            rows += _points(name, kind, trace)
    return rows


def _points(name: str, kind: str, trace) -> list[dict]:
    x, y = _values(trace.x), _values(trace.y)
    count = max(len(x), len(y))
    x = x or list(range(count))  # a trace given only y is drawn against 0..n-1
    y = y or [None] * count
    labels = _labels(trace, count)
    return [{"trace": name, "type": kind, "x": x[i], "y": y[i], "z": None, "label": labels[i]} for i in range(count)]


def _cells(name: str, kind: str, trace) -> list[dict]:
    z = np.asarray(trace.z, dtype=object)  # (rows, columns)
    xs = _values(trace.x) or list(range(z.shape[1]))
    ys = _values(trace.y) or list(range(z.shape[0]))
    return [
        {"trace": name, "type": kind, "x": xs[j], "y": ys[i], "z": z[i, j], "label": None}
        for i in range(z.shape[0])
        for j in range(z.shape[1])
    ]


def _values(values) -> list:
    if values is None:
        return []
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(values, dtype=object).ravel()]


def _labels(trace, count: int) -> list:
    """Hover labels where the trace has them (text, else customdata), else blanks."""
    for field in ("text", "customdata"):
        values = getattr(trace, field, None)
        if values is not None and not isinstance(values, str) and len(values) == count:
            return [str(v) for v in values]
    return [None] * count


def figure_csv(fig) -> str:
    """figure_rows as CSV text (header: COLUMNS)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(figure_rows(fig))
    return out.getvalue()
