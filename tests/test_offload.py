"""Streamed runs (alphaprune/offload.py) against in-memory ones, and the CLI's --offload.

A tiny LLaMA saved in bf16 as a sharded folder: the same settings run in memory, streamed
from the files (--offload disk) and streamed from the model held in memory (--offload cpu)
must give the same perplexities, ratios and zeros; the run record and the CLI say which
path ran; a path that cannot fit is refused with the numbers.

    .venv/bin/python -m pytest tests/test_offload.py -q
"""

from __future__ import annotations

import json

import pytest
import torch

from alphaprune import preflight, registry
from alphaprune.cli import main
from alphaprune.runs import RunStore
from tests.conftest import tiny_llama, tiny_tokenizer

CORPUS = "It was the best of times, it was the worst of times. " * 60


@pytest.fixture(scope="module")
def bf16_folder(tmp_path_factory):
    """3 blocks, bf16, one shard per ~40 kB: a model folder as hubs ship them."""
    folder = tmp_path_factory.mktemp("bf16-model")
    tiny_llama(layers=3, tie=False).to(torch.bfloat16).save_pretrained(folder, max_shard_size="40KB")
    tiny_tokenizer().save_pretrained(folder)
    assert len(list(folder.glob("*.safetensors"))) > 1
    return str(folder)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAPRUNE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ALPHAPRUNE_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    return tmp_path, str(corpus)


def _prune(folder, corpus, offload, out, extra=()):
    args = ["prune", "--model", folder, "--pruner", "wanda", "--sparsity", "0.5", "--calib", corpus]
    args += ["--eval", corpus, "--calib-samples", "4", "--seqlen", "32", "--eval-windows", "4"]
    return main([*args, "--offload", offload, "--out", str(out), *extra])


@pytest.mark.parametrize("offload", ["disk", "cpu"])
def test_streamed_prune_equals_the_in_memory_run(bf16_folder, env, offload, capsys):
    home, corpus = env
    assert _prune(bf16_folder, corpus, "none", home / "memory.json") == 0
    saved = home / "saved"
    assert _prune(bf16_folder, corpus, offload, home / "streamed.json", ["--save", str(saved)]) == 0
    printed = capsys.readouterr()
    said = preflight.WHERE[offload]  # "streamed from the files" / "streamed from memory"
    assert said in printed.err and said in printed.out
    memory, streamed = (json.loads((home / f"{n}.json").read_text()) for n in ("memory", "streamed"))
    for key in ("ppl_before", "ppl_after", "actual_sparsity"):
        assert streamed[key] == pytest.approx(memory[key], rel=1e-6), key
    assert streamed["ratios"] == memory["ratios"]
    assert streamed["matrix_sparsity"] == memory["matrix_sparsity"]
    records = RunStore().frame(kind="prune").sort_values("id")
    assert list(records["offload"]) == ["none", offload]  # the record says which path ran


def test_the_streamed_save_loads_in_transformers_with_the_recorded_zeros(bf16_folder, env):
    from transformers import AutoModelForCausalLM

    from alphaprune.export import load_ratios

    home, corpus = env
    saved = home / "saved"
    assert _prune(bf16_folder, corpus, "disk", home / "r.json", ["--save", str(saved)]) == 0
    model = AutoModelForCausalLM.from_pretrained(saved)
    assert next(model.parameters()).dtype == torch.bfloat16  # the checkpoint's dtype is kept
    recorded = json.loads((home / "r.json").read_text())["matrix_sparsity"]
    params = dict(model.named_parameters())
    for name, share in recorded.items():
        weight = params[name + ".weight"]
        assert float((weight == 0).float().mean()) == pytest.approx(share, abs=0), name
    assert load_ratios(saved).ratios  # a whole alphaprune export: ratios and recipe


def test_streamed_eval_of_a_saved_folder_equals_the_in_memory_eval(bf16_folder, env, capsys):
    home, corpus = env
    args = ["eval", "--model", bf16_folder, "--eval", corpus, "--seqlen", "32", "--eval-windows", "4"]
    assert main([*args, "--offload", "none", "--out", str(home / "m.json")]) == 0
    assert main([*args, "--offload", "disk", "--out", str(home / "d.json")]) == 0
    memory, disk = (json.loads((home / n).read_text()) for n in ("m.json", "d.json"))
    assert disk["perplexity"] == pytest.approx(memory["perplexity"], rel=1e-6)
    assert (memory["offload"], disk["offload"]) == ("none", "disk")


def test_streamed_analysis_equals_the_in_memory_one(bf16_folder, env):
    home, _ = env
    for offload in ("none", "disk"):
        args = ["analyze", "--model", bf16_folder, "--no-cache", "--offload", offload]
        assert main([*args, "--out", str(home / f"{offload}.json")]) == 0
    memory, disk = (json.loads((home / f"{n}.json").read_text()) for n in ("none", "disk"))
    assert [m["alpha_peak"] for m in memory["layers"]] == [d["alpha_peak"] for d in disk["layers"]]


def test_auto_streams_when_memory_is_short_and_refuses_with_numbers(bf16_folder, env, monkeypatch, capsys):
    home, corpus = env
    plan = preflight.plan_step  # the real estimates, against a machine with little memory

    def tight(step, shape, work, offload="auto", **kw):
        disk = preflight.estimate(step, "disk", shape, work)
        return plan(step, shape, work, offload, **{**kw, "ram": int(disk / preflight.HEADROOM) + 1})

    monkeypatch.setattr(preflight, "plan_step", tight)
    assert _prune(bf16_folder, corpus, "auto", home / "auto.json") == 0
    assert "streamed from the files" in capsys.readouterr().out
    monkeypatch.setattr(preflight, "plan_step", lambda *a, **kw: plan(*a, **{**kw, "ram": 2**20}))
    assert _prune(bf16_folder, corpus, "auto", home / "refused.json") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GiB" in err and "is free" in err
    assert not (home / "refused.json").exists()


def _every_spec():
    """(allocation flags, pruner flags) covering every rule with Wanda and every pruner (and
    the refiner) with uniform: the registry's specs, through the CLI, both paths."""
    rules = [r for r in registry.rules() if r not in ("uniform", "list")]
    cases = [(["--allocation", r], ["--pruner", "wanda"]) for r in rules]
    cases += [(["--allocation", "alphapruning", "--epsilon", "0.2", "--mapping", "matrix"], ["--pruner", "wanda"])]
    cases += [(["--allocation", "atp", "--beta", "0.02"], ["--pruner", "wanda"])]
    cases += [([], ["--pruner", p]) for p in registry.pruners()]
    cases += [([], ["--pruner", "ria", "--ria-scope", "row"]), ([], ["--pruner", "wanda", "--refine", "dsnot"])]
    return cases


@pytest.mark.parametrize("allocation,pruner", _every_spec(), ids=lambda flags: " ".join(flags) or "uniform")
def test_every_rule_and_pruner_streams_as_it_runs_in_memory(bf16_folder, env, allocation, pruner):
    home, corpus = env
    flags = [*allocation, *pruner, "--farms-window", "16", "--farms-per-side", "2"]  # later flags win
    assert _prune(bf16_folder, corpus, "none", home / "memory.json", flags) == 0
    assert _prune(bf16_folder, corpus, "disk", home / "streamed.json", flags) == 0
    memory, streamed = (json.loads((home / f"{n}.json").read_text()) for n in ("memory", "streamed"))
    assert (
        memory["allocation"]["method"]
        == streamed["allocation"]["method"]
        == (allocation[1] if allocation else "uniform")
    )
    assert streamed["ratios"] == pytest.approx(memory["ratios"], rel=1e-9, abs=1e-12)
    assert streamed["matrix_sparsity"] == memory["matrix_sparsity"]
    # a pruner that updates weights (SparseGPT) has them rounded to the checkpoint's bf16 in the
    # streamed save, while the in-memory copy keeps float32: 7e-5 here; a mask pruner's are exact
    updates = registry.pruner(pruner[1]).update is not None
    assert streamed["ppl_after"] == pytest.approx(memory["ppl_after"], rel=1e-3 if updates else 1e-6)
    assert memory["actual_sparsity"] == pytest.approx(0.5, abs=0.02)
