"""Placement across devices (issue 12, item 1): --device-map with accelerate.

On this CPU machine a map that spreads the blocks over "cpu" and "disk" (weights in an
offload folder, read in for each forward pass) gives the single-device perplexity to 1e-5
relative; pruning refuses a map with disk, and a bad map is a one-line error. Multi-GPU maps
are checked by bench/gpu_check.sh where GPUs exist.
"""

from __future__ import annotations

import json
import re

import pytest

from alphaprune.cli import main
from alphaprune.errors import UserError
from alphaprune.models import load_model
from alphaprune.placement import parse_device_map
from tests.conftest import tiny_llama, tiny_tokenizer

CORPUS = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 80


@pytest.fixture
def home(tmp_path, monkeypatch):
    for name in ("DATA", "CACHE"):
        monkeypatch.setenv(f"ALPHAPRUNE_{name}", str(tmp_path / name.lower()))
    folder = tmp_path / "model"
    tiny_llama(layers=4, hidden=64).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (tmp_path / "corpus.txt").write_text(CORPUS)
    return tmp_path


def _map(home, **devices) -> str:
    path = home / "map.json"
    path.write_text(json.dumps(devices))
    return str(path)


CPU_AND_DISK = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
                "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
                "lm_head": "cpu"}  # fmt: skip


def _eval(home, capsys, *extra) -> float:
    corpus = str(home / "corpus.txt")
    args = ["eval", "--model", str(home / "model"), "--eval", corpus, "--seqlen", "64", "--eval-windows", "4"]
    assert main([*args, *extra]) == 0
    return float(re.search(r"perplexity ([0-9.]+)", capsys.readouterr().out).group(1))


def test_cpu_and_disk_map_gives_the_single_device_perplexity(home, capsys, monkeypatch):
    single = _eval(home, capsys)
    from alphaprune import perplexity as ppl_module

    measured = []  # the placed model is measured, not read from the single-device run's cache entry
    real = ppl_module.perplexity
    monkeypatch.setattr("alphaprune.pipeline.perplexity", lambda m, *a, **k: measured.append(m) or real(m, *a, **k))
    placed = _eval(home, capsys, "--device-map", _map(home, **CPU_AND_DISK))
    assert abs(placed - single) / single < 1e-5
    assert len(measured) == 1 and measured[0].hf_device_map["model.layers.1"] == "disk"
    loaded = load_model(str(home / "model"), device_map=parse_device_map(_map(home, **CPU_AND_DISK)))
    assert loaded.model.hf_device_map["model.layers.1"] == "disk"  # really offloaded: no weight in memory
    assert loaded.model.model.layers[1].mlp.up_proj.weight.device.type == "meta"
    assert loaded.model.model.layers[0].mlp.up_proj.weight.device.type == "cpu"


def test_strategies_load_in_memory(home, capsys):
    assert abs(_eval(home, capsys, "--device-map", "sequential") / _eval(home, capsys) - 1) < 1e-5


def test_pruning_refuses_disk_and_bad_maps_are_one_line(home, capsys):
    corpus = str(home / "corpus.txt")
    args = ["prune", "--model", str(home / "model"), "--calib", corpus, "--eval", corpus, "--seqlen", "64"]
    assert main([*args, "--device-map", _map(home, **CPU_AND_DISK)]) == 2
    assert "pruning rewrites every weight in memory" in capsys.readouterr().err
    for bad, needle in (("nowhere", "auto, balanced, sequential"), (_map(home, **{"model": "tpu"}), "not a GPU index")):
        with pytest.raises(UserError, match=needle):
            parse_device_map(bad)


def test_a_cpu_map_prunes_as_the_default_path(home, capsys):
    """Blocks computed where the map says: the calibration activations follow them (here all cpu)."""
    corpus = str(home / "corpus.txt")
    args = ["prune", "--model", str(home / "model"), "--pruner", "wanda", "--calib", corpus, "--eval", corpus,
            "--seqlen", "64", "--calib-samples", "4", "--eval-windows", "4"]  # fmt: skip
    assert main(args) == 0
    plain = re.search(r"perplexity ([0-9.]+) -> ([0-9.]+)", capsys.readouterr().out).groups()
    assert main([*args, "--device-map", _map(home, **{k: "cpu" for k in CPU_AND_DISK})]) == 0
    placed = re.search(r"perplexity ([0-9.]+) -> ([0-9.]+)", capsys.readouterr().out).groups()
    assert placed == plain
