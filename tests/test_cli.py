"""`python -m alphaprune analyze`: output files, exit codes, one-line errors.

.venv/bin/python -m pytest tests/test_cli.py -q
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

REQUIRED = {
    "name", "block", "kind", "shape", "params", "alpha_peak", "alpha_mid", "alpha_ks", "alpha_peak_fixed",
    "xmin_peak", "D_peak", "spectral_norm", "stable_rank", "alpha_hat", "entropy",
}  # fmt: skip


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alphaprune", *args], capture_output=True, text=True, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("alphaprune: error:")]
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "no-such-model"], "unknown model"),
        (["--model", "/nonexistent/x.gguf"], "no such GGUF file"),
        (["--out", "result.txt"], "--out must end with"),
        (["--out", "/nonexistent-dir/a.json"], "does not exist"),
    ],
)
def test_bad_input_one_line_exit_2(args, needle):
    assert_one_line_error(run_cli("analyze", *args), needle)


def test_non_causal_model_folder(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path)
    assert_one_line_error(run_cli("analyze", "--model", str(tmp_path)), "not a causal language model")


@pytest.mark.slow
def test_analyze_default_model_json_and_csv(tmp_path, real_model):
    out = tmp_path / "analysis.json"
    proc = run_cli("analyze", "--no-cache", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["model"] == "smollm2-135m" and doc["seconds_analysis"] > 0
    prunable = [r for r in doc["layers"] if r["prunable"]]
    assert len(prunable) == 210 and REQUIRED <= set(prunable[0])
    assert prunable[0]["name"] == "model.layers.0.self_attn.q_proj" and prunable[0]["kind"] == "q_proj"
    csv_out = tmp_path / "analysis.csv"
    proc = run_cli("analyze", "--out", str(csv_out))
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(csv_out.open()))
    assert len(rows) == len(doc["layers"]) and REQUIRED <= set(rows[0])
    by_name = {r["name"]: r for r in doc["layers"]}
    for row in rows[:20]:
        assert float(row["alpha_peak"]) == pytest.approx(by_name[row["name"]]["alpha_peak"], rel=1e-9)
