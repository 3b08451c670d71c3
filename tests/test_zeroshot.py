"""Zero-shot accuracy with lm-evaluation-harness (issue 12, item 3).

On the real default model: `alphaprune prune --tasks` measures the dense and the pruned model
in memory on a local task shipped with the tests (tests/data/lmeval_tiny: JSONL + YAML), stores
both with the run, and its pruned numbers equal lm-eval's own CLI (`lm_eval --model hf`) on the
saved folder. Without the network a hub task gets a one-line message; without lm-eval, --tasks
names the extra to install.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from alphaprune import text, zeroshot
from alphaprune.cli import main
from alphaprune.errors import UserError
from alphaprune.runs import RunStore

TASKS = Path(__file__).parent / "data" / "lmeval_tiny"
LIMIT = 6  # samples of the 24: 18 loglikelihood requests per model keep the real-model test near a minute


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAPRUNE_DATA", str(tmp_path / "data"))
    return RunStore()


def test_task_names_and_the_papers_seven():
    assert zeroshot.parse_tasks("boolq, rte") == ["boolq", "rte"]
    assert zeroshot.parse_tasks("paper,alphaprune_tiny")[-1] == "alphaprune_tiny"
    assert len(zeroshot.parse_tasks("paper")) == 7
    with pytest.raises(UserError, match="at least one"):
        zeroshot.parse_tasks(" , ")


def test_unknown_task_and_missing_folder_are_one_line_errors():
    with pytest.raises(UserError, match="knows no task 'no_such_task'"):
        zeroshot.ZeroShot(("no_such_task",)).check()
    with pytest.raises(UserError, match="does not exist"):
        zeroshot.ZeroShot(("alphaprune_tiny",), include_path="/no/such/folder").check()
    with pytest.raises(UserError, match="at least 1"):
        zeroshot.ZeroShot(("alphaprune_tiny",), limit=0, include_path=str(TASKS)).check()


def test_a_hub_task_offline_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(text, "_hub_reachable", lambda *a, **k: False)  # offline even on a networked CI
    with pytest.raises(UserError, match="hub is unreachable") as err:
        zeroshot.load_tasks(["boolq"])
    assert "\n" not in str(err.value) and "--tasks-path" in str(err.value)


def test_without_lm_eval_tasks_name_the_extra(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    assert main(["eval", "--model", "smollm2-135m", "--tasks", "boolq"]) == 2  # before the model loads
    assert "alphaprune[lmeval]" in capsys.readouterr().err


def _lm_eval_cli(folder: Path, out: Path) -> dict:
    """lm-eval's own CLI on a saved folder; its results for the tiny task."""
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={folder},dtype=float32",
           "--tasks", "alphaprune_tiny", "--include_path", str(TASKS), "--device", "cpu", "--batch_size", "8",
           "--limit", str(LIMIT), "--output_path", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(next(out.rglob("results_*.json")).read_text())
    return result["results"]["alphaprune_tiny"]


@pytest.mark.slow
def test_prune_measures_accuracy_before_and_after_as_lm_evals_cli_does(store, tmp_path, capsys):
    saved = tmp_path / "pruned"
    args = ["prune", "--model", "smollm2-135m", "--pruner", "magnitude", "--sparsity", "0.4", "--seqlen", "128",
            "--calib-samples", "2", "--eval-windows", "2", "--save", str(saved), "--tasks", "alphaprune_tiny",
            "--tasks-path", str(TASKS), "--task-limit", str(LIMIT)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "zero-shot alphaprune_tiny: acc " in printed and " -> " in printed
    accuracy = store.list()[0].accuracy
    assert accuracy["tasks"] == ["alphaprune_tiny"] and accuracy["limit"] == LIMIT
    before, after = accuracy["before"]["alphaprune_tiny"], accuracy["after"]["alphaprune_tiny"]
    assert 0 <= after["acc"] <= 1 and "acc_norm" in before and "acc_stderr" in after
    theirs = _lm_eval_cli(saved, tmp_path / "lm_eval_out")
    assert theirs["acc,none"] == after["acc"] and theirs["acc_norm,none"] == after["acc_norm"]


def test_summary_of_a_task_without_acc_uses_its_own_metric():
    after = {"wikitext": {"word_perplexity": 45.0, "word_perplexity_stderr": 1.0}, "tiny": {}}
    before = {"wikitext": {"word_perplexity": 30.0}, "tiny": {}}
    accuracy = {"tasks": ["wikitext", "tiny"], "before": before, "after": after}
    assert zeroshot.summary(accuracy) == ["zero-shot wikitext: word_perplexity 30.0000 -> 45.0000"]
