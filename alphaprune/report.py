"""Tables and files of an analysis: a pandas frame, JSON and CSV.

frame = analysis_frame(result)        # one row per matrix
write_analysis(result, Path("a.json")) # or .csv
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from alphaprune.analysis import Analysis


def analysis_frame(result: Analysis) -> pd.DataFrame:
    """One row per matrix, columns as in LayerMetrics (shape as 'out x in')."""
    frame = pd.DataFrame([layer.to_dict() for layer in result.layers])
    frame["shape"] = [f"{s[0]}x{s[1]}" for s in frame["shape"]]
    return frame


def _json_safe(value):
    """NaN and inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_analysis(result: Analysis, path: Path) -> None:
    """JSON (the whole document) or CSV (the layer table), by the file's suffix."""
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(_json_safe(result.to_dict()), indent=1))
    else:
        analysis_frame(result).to_csv(path, index=False)
