"""Tables and files of an analysis: a pandas frame, JSON and CSV.

frame = analysis_frame(result)        # one row per matrix
write_analysis(result, Path("a.json")) # or .csv
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from alphaprune import atomic
from alphaprune.analysis import Analysis


def analysis_frame(result: Analysis, tails: dict | None = None) -> pd.DataFrame:
    """One row per matrix, columns as in LayerMetrics (shape as 'out x in'); with `tails`
    (name -> tails.TailTest), each alternative's R and p and the verdict too."""
    frame = pd.DataFrame([layer.to_dict() for layer in result.layers])
    frame["shape"] = [f"{s[0]}x{s[1]}" for s in frame["shape"]]
    if tails:
        for column, value in _tail_columns(tails).items():
            frame[column] = [value(tails[n]) if n in tails else None for n in frame["name"]]
    return frame


def _tail_columns(tails: dict) -> dict:
    """column -> TailTest -> value: R_<alt>, p_<alt> of every alternative, and the verdict."""
    alternatives = next(iter(tails.values())).comparisons
    columns = {}
    for alt in alternatives:
        columns[f"R_{alt}"] = lambda t, alt=alt: t.comparisons[alt].R
        columns[f"p_{alt}"] = lambda t, alt=alt: t.comparisons[alt].p
    columns["tail_verdict"] = lambda t: t.verdict
    return columns


def _json_safe(value):
    """NaN and inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_analysis(result: Analysis, path: Path, tails: dict | None = None) -> None:
    """JSON (the whole document; with `tails`, their tests by matrix) or CSV (the layer table),
    by the file's suffix."""
    if path.suffix.lower() == ".json":
        doc = result.to_dict()
        if tails:
            doc["tails"] = {name: test.to_dict() for name, test in tails.items()}
        atomic.write_text(path, json.dumps(_json_safe(doc), indent=1))
    else:
        with atomic.atomic_file(path, "w", newline="") as handle:
            analysis_frame(result, tails).to_csv(handle, index=False)


def model_summary(loaded) -> dict:
    """Architecture, block layout, parameter counts and memory of a loaded model (for display)."""
    from alphaprune.arch import find_blocks, prunable_matrices

    model = loaded.model
    config = getattr(model, "config", None)
    blocks = find_blocks(model)
    refs = prunable_matrices(model)
    rows: dict[str, dict] = {}
    for ref in refs:  # one row per matrix kind
        row = rows.setdefault(ref.kind, {"kind": ref.kind, "shape (out x in)": f"{ref.shape[0]}x{ref.shape[1]}"})
        row["matrices"] = row.get("matrices", 0) + 1
        row["params"] = row.get("params", 0) + ref.params
    params = list(model.parameters())

    def cfg(*names):
        return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), "?")

    return {
        "architecture": type(model).__name__,
        "model_type": cfg("model_type"),
        "blocks": len(blocks.modules),
        "blocks_path": blocks.path,
        "hidden_size": cfg("hidden_size", "n_embd", "d_model"),
        "heads": cfg("num_attention_heads", "n_head"),
        "vocab_size": cfg("vocab_size"),
        "context": cfg("max_position_embeddings", "n_positions"),
        "params": sum(p.numel() for p in params),
        "prunable_params": sum(ref.params for ref in refs),
        "memory_bytes": sum(p.numel() * p.element_size() for p in params),
        "kinds": pd.DataFrame(list(rows.values())),
    }
