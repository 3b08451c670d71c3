"""A Plotly chart with its take-away files: PNG from the toolbar, the data as a CSV button.

    from alphaprune.ui.charts import chart
    chart(st, allocation_figure(...), key="allocation_chart", name="allocation")

Every page draws its figures through `chart`, so every figure can be saved as `name`.png
(the camera button in the chart's toolbar) and as `name`.csv (alphaprune/figure_files.py).
"""

from __future__ import annotations

from alphaprune.figure_files import figure_csv, png_config


def chart(container, fig, key: str, name: str) -> None:
    """Draw `fig` full width in `container` with the PNG toolbar button and a CSV download
    (made on click only: a slider's redraw does not pay for it)."""
    container.plotly_chart(fig, key=key, width="stretch", config=png_config(name))
    container.download_button(
        "Data (CSV)", lambda: figure_csv(fig), f"{name}.csv", "text/csv", key=f"{key}_csv", on_click="ignore",
        help=f"The numbers behind this chart; the camera button in its toolbar saves {name}.png",
    )  # fmt: skip
