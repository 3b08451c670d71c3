"""`alphaprune allocate | prune | eval | sweep | runs` on a tiny saved model and the real one."""

from __future__ import annotations

import json

import pytest

from alphaprune.cli import main
from alphaprune.runs import RunStore
from tests.conftest import tiny_llama, tiny_tokenizer

CORPUS = "It was the best of times, it was the worst of times. " * 60


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny_llama(layers=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return str(path)


@pytest.fixture()
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAPRUNE_DATA", str(tmp_path / "data"))
    return RunStore()


def _data(corpus):
    return ["--calib", corpus, "--eval", corpus, "--calib-samples", "4", "--seqlen", "32", "--eval-windows", "4"]


def test_allocate_writes_json_csv_and_recipe(tiny_folder, tmp_path, capsys):
    for suffix in ("json", "csv", "yaml"):
        out = tmp_path / f"ratios.{suffix}"
        args = ["allocate", "--model", tiny_folder, "--allocation", "alphapruning", "--sparsity", "0.6"]
        assert main(args + ["--out", str(out)]) == 0
        assert out.stat().st_size > 0
    doc = json.loads((tmp_path / "ratios.json").read_text())
    assert doc["mean"] == pytest.approx(0.6) and len(doc["block_ratios"]) == 2
    assert "WandaPruningModifier" in (tmp_path / "ratios.yaml").read_text()
    assert "block  sparsity" in capsys.readouterr().out
    # a pruner with no llm-compressor modifier: the ratios still come as a live one-shot stage
    assert main(args + ["--pruner", "magnitude", "--out", str(tmp_path / "magnitude.yaml")]) == 0
    live = [line for line in (tmp_path / "magnitude.yaml").read_text().splitlines() if not line.startswith("#")]
    assert "WandaPruningModifier:" in "\n".join(live) and "ConstantPruningModifier" not in "\n".join(live)


def test_prune_eval_runs_roundtrip(tiny_folder, corpus, tmp_path, store, capsys):
    out, saved = tmp_path / "result.json", tmp_path / "pruned"
    args = ["prune", "--model", tiny_folder, "--pruner", "wanda", "--allocation", "alphapruning", "--sparsity", "0.5"]
    assert main(args + _data(corpus) + ["--out", str(out), "--save", str(saved), "--prompt", "It was"]) == 0
    printed = capsys.readouterr().out
    assert "dense : It was" in printed and "pruned: It was" in printed
    doc = json.loads(out.read_text())
    for field in ("ppl_before", "ppl_after", "actual_sparsity", "ratios", "block_ratios", "seconds"):
        assert field in doc
    assert doc["actual_sparsity"] == pytest.approx(0.5, abs=0.01)
    # the saved folder evaluates to the same perplexity
    assert main(["eval", "--model", str(saved), "--eval", corpus, "--seqlen", "32", "--eval-windows", "4"]) == 0
    assert f"perplexity {doc['ppl_after']:.4f}" in capsys.readouterr().out
    assert [r.kind for r in store.list()] == ["prune", "eval"]
    assert main(["runs"]) == 0
    assert "wanda" in capsys.readouterr().out
    assert main(["runs", "--export", str(tmp_path / "runs.csv")]) == 0
    assert (tmp_path / "runs.csv").read_text().count("\n") == 3
    assert main(["runs", "--delete", str(store.list()[1].id)]) == 0
    assert len(store.list()) == 1


def test_sweep_stores_one_run_per_point(tiny_folder, corpus, tmp_path, store, capsys):
    args = ["sweep", "--model", tiny_folder, "--pruner", "magnitude", "--allocation", "alphapruning"]
    args += ["--epsilons", "0.1,0.3", "--sparsities", "0.4,0.6", "--out", str(tmp_path / "sweep.json")]
    assert main(args + _data(corpus)) == 0
    runs = store.list()
    assert len(runs) == 4 and len({r.sweep for r in runs}) == 1
    assert sorted((r.settings["sparsity"], r.settings["epsilon"]) for r in runs) == [
        (0.4, 0.1),
        (0.4, 0.3),
        (0.6, 0.1),
        (0.6, 0.3),
    ]
    assert len(json.loads((tmp_path / "sweep.json").read_text())) == 4


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--sparsity", "1.5"], "sparsity must be inside (0, 1)"),
        (["--sparsity", "0"], "sparsity must be inside (0, 1)"),
        (["--epsilon", "-0.2", "--allocation", "alphapruning"], "epsilon must be a number in [0, 1] or auto"),
        (["--pattern", "32:64", "--sparsity", "0.5"], "does not divide"),
        (["--pattern", "1:3", "--sparsity", "0.3333333333333333"], "must divide 128"),
        (["--batch-size", "0"], "batch size"),
        (["--allocation", "alphapruning", "--metric", "shape"], "unknown metric"),
        (["--allocation", "alphapruning", "--epsilon", "inf"], "epsilon must be a number"),
        (["--calib", "/no/such/file.txt"], "neither python-docs"),
        (["--seqlen", "100000"], "context"),
        (["--eval", "wikitext2"], "wikitext2"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_stored(tiny_folder, corpus, store, capsys, extra, match, monkeypatch):
    from alphaprune import text

    monkeypatch.setattr(text, "_hub_reachable", lambda *a, **k: False)  # wikitext2 offline even on a networked CI
    store.add(_a_record())
    args = ["prune", "--model", tiny_folder, "--pruner", "wanda"] + _data(corpus)
    assert main(args + extra) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in lines)
    err = lines[-1]
    assert err.startswith("alphaprune: error:") and match in err
    assert len(store.list()) == 1  # what was stored before is untouched


@pytest.mark.parametrize(
    "args,match",
    [
        (["allocate", "--allocation", "alphapruning", "--epsilon", "auto"], "use it with `prune`"),
        (["sweep", "--epsilons", "0.1,0.2"], "applies to rules with an epsilon"),
        (["eval", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_command_input_one_line_exit_2(tiny_folder, corpus, store, capsys, args, match):
    store.add(_a_record())
    assert main(args[:1] + ["--model", tiny_folder] + args[1:]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in lines)
    err = lines[-1]
    assert err.startswith("alphaprune: error:") and match in err
    assert len(store.list()) == 1


def test_save_into_a_foreign_folder_is_refused_before_the_run(tiny_folder, corpus, store, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    args = ["prune", "--model", tiny_folder, "--pruner", "magnitude", "--save", str(foreign)] + _data(corpus)
    assert main(args) == 2
    assert "not written by alphaprune" in capsys.readouterr().err
    assert store.list() == [] and (foreign / "notes.txt").read_text() == "keep me"


def _a_record():
    from alphaprune.runs import RunRecord

    return RunRecord(kind="eval", model="x", ppl_after=1.0)


@pytest.mark.slow
def test_real_model_allocate_flags_the_clipped_block(capsys):
    assert main(["allocate", "--sparsity", "0.7", "--allocation", "alphapruning", "--epsilon", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "held at a bound" in out and "weighted mean 0.700000" in out
