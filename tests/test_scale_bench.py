"""bench/scale.py's own parts: the per-step peak RSS, the report section, the acceptance
verdicts. (The benchmark itself runs the CLI on big checkpoints: never in the suite.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import scale  # noqa: E402


@pytest.mark.skipif(not sys.platform.startswith(("linux", "darwin")), reason="ru_maxrss is POSIX")
def test_each_step_gets_its_own_peak_rss(tmp_path):
    big = [sys.executable, "-c", "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"]
    small = [sys.executable, "-c", "pass"]
    first = scale.measure(big, tmp_path, timeout=120)
    second = scale.measure(small, tmp_path, timeout=120)  # after the big one: a fresh wrapper
    assert first["rc"] == second["rc"] == 0
    assert first["peak_rss"] - second["peak_rss"] > 250 * 2**20
    assert second["peak_rss"] < 200 * 2**20 and second["wall"] < first["wall"] + 60


def _row(layers, path, step, rss, per=None, rc=0):
    return dict(
        preset="llama2-7b", layers=layers, path=path, step=step, rc=rc, peak_rss_gb=rss, s_per_matrix=per,
        checkpoint_gb=1.0, matrices=7 * layers, wall_s=1.0, work_s=1.0,
    )  # fmt: skip


def test_acceptance_verdicts_read_the_streamed_rows():
    rows = [
        _row(2, "disk", "analyze", 1.0, per=1.0),
        _row(2, "none", "analyze", 5.0, per=0.95),
        _row(8, "disk", "analyze", 1.3),
        _row(8, "auto", "analyze", 9.0),  # a forced streamed row comes before `auto`
        _row(8, "disk", "prune", 3.5),
        _row(8, "disk", "eval", 2.0, rc=1),  # a failed step measures nothing
    ]
    verdicts = "\n".join(scale.acceptance(rows))
    assert "L=8 <= 1.2 x L=2: NOT met (1.3 vs 1)" in verdicts
    assert "L=8 <= 1.5 GB: met" in verdicts
    assert "L=32 <= 2 GB: not measured" in verdicts
    assert "prune + save peak RSS, L=8 <= 3 GB: NOT met" in verdicts
    assert "saved folder, L=8 <= 3 GB: not measured" in verdicts
    assert "L=2 <= 1.1 x in-memory: met (1 vs 0.95)" in verdicts


def test_report_rewrites_only_its_section(tmp_path):
    doc = tmp_path / "scale.md"
    doc.write_text(f"# Kept\n\nintro\n\n{scale.BEGIN}\nold numbers\n{scale.END}\n\n## GPU\n\nkept too\n")
    rows = scale.merge(tmp_path / "none.json", [_row(2, "disk", "analyze", 1.0), _row(2, "none", "analyze", 4.0)])
    scale.write_doc(doc, rows, offload=True)
    text = doc.read_text()
    assert text.startswith("# Kept\n\nintro\n\n") and text.endswith("\n\n## GPU\n\nkept too\n")
    assert "old numbers" not in text and text.count(scale.BEGIN) == 1
    assert "| llama2-7b | 2 | 1.00 GiB | analyze | `disk` | 1.00 GiB |" in text and "| 0.25x |" in text
