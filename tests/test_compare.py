"""`alphaprune compare`: one stored prune run per allocation rule with the same pruner and texts,
side by side, resumable (alphaprune/compare.py).

    .venv/bin/python -m pytest tests/test_compare.py -q
"""

from __future__ import annotations

import pytest

from alphaprune import compare
from alphaprune.cli import main
from alphaprune.config import PruneConfig
from alphaprune.errors import UserError
from alphaprune.runs import RunStore
from tests.conftest import tiny_llama, tiny_tokenizer

CORPUS = "It was the best of times, it was the worst of times. " * 60


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ALPHAPRUNE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ALPHAPRUNE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    tiny_llama(layers=3).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    return str(folder), str(corpus)


def _compare(folder, corpus, rules, *extra):
    args = ["compare", "--model", folder, "--rules", rules, "--sparsity", "0.6", "--calib", corpus, "--eval", corpus]
    return main([*args, "--calib-samples", "4", "--seqlen", "32", "--eval-windows", "4", *extra])


def test_one_run_per_rule_side_by_side_and_a_rerun_resumes(env, capsys):
    folder, corpus = env
    assert _compare(folder, corpus, "uniform,atp,dlp", "--beta", "0.05") == 0
    runs = RunStore().list(kind="prune")
    assert sorted(r.settings["allocation"] for r in runs) == ["atp", "dlp", "uniform"]
    assert len({r.sweep for r in runs}) == 1 and runs[0].sweep.startswith(compare.PREFIX)
    assert len({r.ppl_before for r in runs}) == 1  # the same dense model and evaluation windows
    assert {r.settings["pruner"] for r in runs} == {"wanda"} and {r.settings["calib_samples"] for r in runs} == {4}
    printed = capsys.readouterr().out
    assert all(rule in printed for rule in ("uniform", "atp", "dlp"))
    assert _compare(folder, corpus, "uniform,atp,dlp,owl", "--beta", "0.05") == 0  # adds owl, redoes nothing
    again = RunStore().list(kind="prune")
    assert len(again) == 4 and again[-1].settings["allocation"] == "owl"
    assert "3 of 4 rules already measured" in capsys.readouterr().err
    assert _compare(folder, corpus, "uniform", "--beta", "0.05", "--seed", "1") == 0  # other settings: a new run
    assert len(RunStore().list(kind="prune")) == 5


def test_the_table_ranks_the_rules_by_perplexity(env):
    folder, corpus = env
    assert _compare(folder, corpus, "uniform,alphapruning") == 0
    rows = compare.table(RunStore().list(kind="prune"))
    assert [r["ppl_after"] for r in rows] == sorted(r["ppl_after"] for r in rows)
    uniform = next(r for r in rows if r["rule"] == "uniform")
    assert uniform["lowest_block"] == pytest.approx(uniform["highest_block"])  # uniform is flat
    for row, run in ((r, RunStore().get(r["run"])) for r in rows):  # every block's ratio, side by side
        assert row["block_ratios"] == run.block_ratios and row["target"] == 0.6
    listing = compare.ratio_listing(rows).splitlines()
    assert listing[0].split() == ["block", *(r["rule"] for r in rows)] and len(listing) == 1 + 3
    assert [float(x) for x in listing[1].split()[1:]] == pytest.approx([r["block_ratios"][0] for r in rows], abs=1e-4)
    from alphaprune.plots import compare_figure

    figure = compare_figure(rows)
    assert [t.name for t in figure.data] == [f"{r['rule']}: ppl {r['ppl_after']:.1f}" for r in rows]
    assert figure.layout.shapes[0].y0 == 0.6  # the common target


def test_a_record_without_block_ratios_shows_no_range_rather_than_zero():
    """Records stored before runs kept their block ratios: no line, and a NaN range, not 0.0."""
    from types import SimpleNamespace

    old = SimpleNamespace(settings={"allocation": "owl", "sparsity": 0.6}, id="r1", block_ratios=None,
                          ppl_before=10.0, ppl_after=20.0, actual_sparsity=0.6)  # fmt: skip
    (row,) = compare.table([old])
    assert row["block_ratios"] == [] and row["lowest_block"] != row["lowest_block"]  # NaN
    assert compare.ratio_listing([row]).splitlines() == ["block" + f" {'owl':>12s}"]


def test_a_stopped_comparison_resumes_where_it_stopped(env, capsys, monkeypatch):
    """Stopped during its second rule (Ctrl-C), a comparison keeps the first run; the same
    command then runs only the rules not stored."""
    from alphaprune import cli

    folder, corpus = env
    real, ran = cli._run_one, []

    def stop_at_atp(loaded, config, *args, **kwargs):
        ran.append(config.allocation)
        if config.allocation == "atp" and ran.count("atp") == 1 and len(ran) == 2:  # the first command only
            raise KeyboardInterrupt
        return real(loaded, config, *args, **kwargs)

    monkeypatch.setattr(cli, "_run_one", stop_at_atp)
    assert _compare(folder, corpus, "uniform,atp,dlp") == 130
    assert [r.settings["allocation"] for r in RunStore().list(kind="prune")] == ["uniform"]
    ran.clear()
    capsys.readouterr()
    assert _compare(folder, corpus, "uniform,atp,dlp") == 0
    assert ran == ["atp", "dlp"] and "1 of 3 rules already measured" in capsys.readouterr().err
    assert sorted(r.settings["allocation"] for r in RunStore().list(kind="prune")) == ["atp", "dlp", "uniform"]


@pytest.mark.parametrize(
    "rules,needle", [("", "at least one"), ("uniform,uniform", "twice"), ("list", "sets its own"), ("x", "one of")]
)
def test_bad_rule_lists_are_refused(rules, needle):
    with pytest.raises(UserError, match=needle):
        compare.rule_configs(PruneConfig(sparsity=0.6), [r for r in rules.split(",") if r])


def test_bad_rule_list_on_the_command_line_is_one_line(env, capsys):
    folder, corpus = env
    assert _compare(folder, corpus, "uniform,nope") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("alphaprune: error: allocation must be one of") and "Traceback" not in "".join(err)
    assert RunStore().list() == []
