"""Tuning any rule's parameters on held-out calibration text (alphaprune/tune.py): the grids come
from the specs, the budget thins them, the search picks the lowest held-out perplexity (the
one-standard-error rule is kept for comparison), and the curve is stored with the run.

    .venv/bin/python -m pytest tests/test_tune.py -q
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from alphaprune import registry, tune
from alphaprune.config import PruneConfig
from alphaprune.errors import UserError
from alphaprune.pipeline import run_prune
from alphaprune.rules.atp import max_beta
from tests.conftest import tiny_loaded

CORPUS = "The quick brown fox jumps over the lazy dog. " * 40 + "Pack my box with five dozen liquor jugs.\n" * 40


@pytest.fixture
def texts(tmp_path):
    calib, evaluation = tmp_path / "calib.txt", tmp_path / "eval.txt"
    calib.write_text(CORPUS * 2)
    evaluation.write_text(CORPUS[::-1])  # another text: the search never reads the evaluation's
    return str(calib), str(evaluation)


def _config(texts, **kw):
    base = dict(calib=texts[0], eval=texts[1], calib_samples=4, seqlen=32, eval_windows=4, sparsity=0.6)
    return PruneConfig(**{**base, **kw})


def test_every_auto_parameter_has_a_grid_inside_its_own_range():
    autos = [p for p in registry.params().values() if p.auto]
    assert {"epsilon", "beta", "dlp_alpha", "owl_lambda"} <= {p.name for p in autos}
    for p in autos:
        values = tune.grid(p, 0.7, 30)
        assert len(values) >= 3 and list(values) == sorted(values), p.name


def test_atp_grid_follows_the_target_and_depth():
    values = tune.grid(registry.param("beta"), 0.7, 30)
    assert values[-1] <= max_beta(0.7, 30) < values[-1] + 0.002  # the paper's steps of 0.002, up to the largest
    assert values == pytest.approx([0.002 * k for k in range(1, 11)])
    deep = tune.grid(registry.param("beta"), 0.7, 80)  # largest beta 0.0076: quarter steps of it instead
    assert len(deep) == 4 and deep[-1] == pytest.approx(max_beta(0.7, 80), abs=1e-6)
    assert tune.grid(registry.param("beta"), 0.9, 30)[-1] <= max_beta(0.9, 30)


def test_the_budget_thins_the_candidates_evenly(texts):
    config = _config(texts, allocation="alphapruning", epsilon="auto")
    assert [c["epsilon"] for c in tune.candidates(config, 4)] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert [c["epsilon"] for c in tune.candidates(config, 4, budget=3)] == [0.1, 0.3, 0.5]
    with pytest.raises(UserError, match="at least 1"):
        tune.candidates(config, 4, budget=0)


def test_search_picks_the_lowest_score_and_keeps_the_curve():
    plan = [{"beta": 0.0}, {"beta": 0.01}, {"beta": 0.02}]
    best, trials = tune.search(plan, lambda v: (v["beta"] - 0.011) ** 2)
    assert best == {"beta": 0.01} and [t.values for t in trials] == plan


@pytest.mark.parametrize("rule,name", [("atp", "beta"), ("dlp", "dlp_alpha"), ("owl", "owl_lambda")])
def test_auto_on_a_rule_runs_its_search_and_stores_it(texts, rule, name):
    loaded = tiny_loaded(layers=3)
    result = run_prune(loaded, _config(texts, allocation=rule, pruner="wanda", search_budget=3, **{name: "auto"}))
    trials = result.search
    assert len(trials) == 3 and all(set(t.values) == {name} for t in trials)
    best = tune.choose(trials)
    assert result.config.param(name) == best.values[name]  # the run used the winner
    assert all(len(t.heldout_nlls) == 8 and t.spread is not None for t in trials)
    stored = result.record().settings
    assert stored[name] == best.values[name] and len(stored["search"]) == 3
    assert result.seconds["search"] > 0


def test_auto_is_refused_where_no_prune_runs_are_made(texts):
    from alphaprune.cli import main

    args = ["allocate", "--model", "x", "--allocation", "atp", "--beta", "auto"]
    assert main(args) == 2


def test_a_beta_too_large_for_this_depth_is_refused_before_any_work(texts, monkeypatch):
    from alphaprune import pipeline

    def no_work(*args, **kwargs):
        raise AssertionError("the dense perplexity ran before the settings were checked")

    monkeypatch.setattr(pipeline, "dense_perplexity", no_work)
    config = _config(texts, allocation="atp", beta=0.08, sparsity=0.95)  # in the spec's range [0, 0.1]
    config.validate()  # the depth is not known yet: 3 blocks at 95% allow at most 0.05
    with pytest.raises(UserError, match="beta must be in"):
        run_prune(tiny_loaded(layers=3), config)


def test_the_ceiling_may_be_searched_with_a_rules_parameters(texts):
    config = _config(texts, allocation="alphapruning", epsilon="auto", ceiling="auto")
    config.validate()
    assert config.auto_params() == ("epsilon", "ceiling")
    plan = tune.candidates(config, 4)
    assert len(plan) == 10 and {c["ceiling"] for c in plan} == {0.99, 1.0}
    assert {c["epsilon"] for c in plan} == {0.1, 0.2, 0.3, 0.4, 0.5}
    with pytest.raises(UserError, match="above the per-matrix ceiling 0.99"):  # auto may still choose 0.99
        _config(texts, allocation="atp", ceiling="auto", sparsity=0.995).validate()


def test_auto_ceiling_runs_and_the_run_keeps_its_pick(texts):
    loaded = tiny_loaded(layers=3)
    config = _config(texts, allocation="alphapruning", epsilon=0.3, ceiling="auto", pruner="magnitude")
    result = run_prune(loaded, config)
    assert [t.values for t in result.search] == [{"ceiling": 0.99}, {"ceiling": 1.0}]
    best = tune.choose(result.search)
    assert result.config.ceiling == best.values["ceiling"] == result.allocation.ceiling
    assert result.record().settings["ceiling"] == best.values["ceiling"]


def test_the_cli_takes_max_sparsity_auto(texts, capsys):
    from alphaprune.cli import _build_parser as build_parser

    args = build_parser().parse_args(["prune", "--model", "x", "--max-sparsity", "auto"])
    assert args.max_sparsity == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--model", "x", "--max-sparsity", "high"])
    assert "--max-sparsity takes (0, 1] or auto, got 'high'" in capsys.readouterr().err


def test_candidates_of_equal_ratios_share_one_prune_run():
    """AlphaPruning's ceiling changes nothing where no block reaches it: one prune, two trials."""
    calls = []
    plan = [{"epsilon": 0.1, "ceiling": 0.99}, {"epsilon": 0.1, "ceiling": 1.0}, {"epsilon": 0.3, "ceiling": 1.0}]

    def score(values):
        calls.append(values)
        return 10.0 * values["epsilon"]

    best, trials = tune.search(plan, score, key=lambda v: v["epsilon"] if v["epsilon"] < 0.2 else tuple(v.items()))
    assert calls == [plan[0], plan[2]]
    assert [t.pruned for t in trials] == [True, False, True] and trials[1].heldout_ppl == trials[0].heldout_ppl
    assert tune.prune_runs(trials) == 2 == tune.prune_runs([t.to_dict() for t in trials])
    assert tune.prune_runs([{"values": {}, "heldout_ppl": 1.0}]) == 1  # a search stored before the field


def test_the_budget_left_after_the_grid_refines_around_the_best(texts):
    config = _config(texts, allocation="alphapruning", epsilon="auto", ceiling="auto")
    assert tune.refinements(config, {"epsilon": 0.3, "ceiling": 1.0}, 4) == [
        {"epsilon": 0.25, "ceiling": 1.0},
        {"epsilon": 0.35, "ceiling": 1.0},
    ]  # the ceiling's two values have no midpoint worth a prune
    assert tune.refinements(config, {"epsilon": 0.5, "ceiling": 0.99}, 4) == [{"epsilon": 0.45, "ceiling": 0.99}]
    plan = [{"epsilon": e} for e in (0.1, 0.2, 0.3, 0.4, 0.5)]
    curve = lambda v: (v["epsilon"] - 0.27) ** 2  # noqa: E731
    refine = lambda best: tune.refinements(_config(texts, allocation="alphapruning", epsilon="auto"), best, 4)  # noqa: E731
    best, trials = tune.search(plan, curve, budget=7, refine=refine)
    assert [t.values["epsilon"] for t in trials] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.25, 0.35] and best == {"epsilon": 0.25}
    _, trials = tune.search(plan, curve, budget=6, refine=refine)
    assert len(trials) == 6  # at most `budget` prune runs, refinements included
    _, trials = tune.search(plan, curve, refine=refine)
    assert len(trials) == 5  # no budget given: the plan's own size


def test_auto_epsilon_and_ceiling_cost_only_distinct_prunes(texts):
    """On a tiny model: a candidate whose ratios an earlier one gave is scored without a prune
    (the same score), and the record keeps which trials pruned."""
    from dataclasses import replace

    from alphaprune.pipeline import make_allocation

    loaded = tiny_loaded(layers=3)
    config = _config(texts, allocation="alphapruning", epsilon="auto", ceiling="auto", pruner="magnitude")
    result = run_prune(loaded, config)
    scores: dict[tuple, set] = {}
    for t in result.search:
        ratios = make_allocation(loaded.model, replace(config, **t.values)).sparsities
        scores.setdefault(ratios, set()).add(t.heldout_ppl)
    assert all(len(s) == 1 for s in scores.values())  # equal ratios, equal score
    assert tune.prune_runs(result.search) == len(scores) <= config.search_budget
    assert len(result.search) > len(scores)  # on this model only epsilon 0.5 reaches the ceiling
    assert [t["pruned"] for t in result.record().settings["search"]] == [t.pruned for t in result.search]


def test_a_given_plan_is_scored_as_the_search_scores_its_grid(texts):
    """pipeline._search with `plan` (bench/tuning_check.py --candidates): exactly those values,
    off the grid too, none added around the choice, each scored as the grid's own candidate is."""
    from alphaprune import text
    from alphaprune.pipeline import _search

    loaded = tiny_loaded(layers=3)
    config = _config(texts, allocation="atp", beta="auto", pruner="magnitude", search_budget=2)
    calib_ids = text.tokenize(text.read_text(config.calib), loaded.tokenizer)
    plan = [{"beta": 0.011}, {"beta": 0.013}, {"beta": 0.02}]  # more than the budget, off the grid
    _, trials = _search(loaded.model, config, None, calib_ids, None, plan=plan)
    assert [t.values for t in trials] == plan
    _, alone = _search(loaded.model, config, None, calib_ids, None, plan=[{"beta": 0.02}])
    assert [t.values for t in alone] == [{"beta": 0.02}]  # on the grid, budget left: still no refinement
    _, grid_trials = _search(loaded.model, config, None, calib_ids, None)
    on_grid = {t.values["beta"]: t.heldout_ppl for t in grid_trials}
    _, again = _search(loaded.model, config, None, calib_ids, None, plan=[{"beta": b} for b in on_grid])
    assert {t.values["beta"]: t.heldout_ppl for t in again} == on_grid


def _trial(value, nlls, spread):
    return tune.Trial({"epsilon": value}, math.exp(sum(nlls) / len(nlls)), True, tuple(nlls), spread)


def test_gap_is_the_paired_mean_and_standard_error_of_the_window_differences():
    a, b = _trial(0.3, [5.0, 5.2, 4.9, 5.1], 0.07), _trial(0.35, [4.9, 5.0, 4.9, 5.0], 0.08)
    diffs = [0.1, 0.2, 0.0, 0.1]
    mean = sum(diffs) / 4
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3 / 4)
    assert tune.gap(a, b) == pytest.approx((mean, se), rel=1e-12)
    assert tune.gap(a, _trial(0.1, [5.0], 0.0)) == (math.inf, 0.0)  # other windows: never a tie


def test_one_se_keeps_the_lowest_unless_a_candidate_nearer_uniform_ties_within_one_se():
    lowest = _trial(0.35, [4.90, 5.00, 4.95, 5.05], 0.08)
    noisy_tie = _trial(0.3, [4.80, 5.20, 4.90, 5.15], 0.07)  # +0.0375 nats, SE 0.069: a tie
    clear_loss = _trial(0.2, [5.10, 5.20, 5.15, 5.25], 0.05)  # +0.2 nats every window: no tie
    farther = _trial(0.4, [4.96, 4.96, 4.98, 5.04], 0.10)  # +0.01, SE 0.022: ties, but farther from uniform
    assert tune.one_se([lowest, clear_loss]) is lowest
    assert tune.one_se([lowest, noisy_tie, clear_loss, farther]) is noisy_tie
    assert tune.one_se([lowest, farther]) is lowest
    bare = [tune.Trial({"epsilon": 0.1}, 20.0), tune.Trial({"epsilon": 0.2}, 19.0)]
    assert tune.one_se(bare) is bare[1]  # stored before the windows were kept: the lowest


def test_choose_keeps_the_lowest_even_where_one_se_would_not():
    lowest = _trial(0.35, [4.90, 5.00, 4.95, 5.05], 0.08)
    noisy_tie = _trial(0.3, [4.80, 5.20, 4.90, 5.15], 0.07)  # within one SE and nearer uniform
    assert tune.choose(iter([noisy_tie, lowest])) is lowest and tune.one_se(iter([noisy_tie, lowest])) is noisy_tie
    shared = dataclasses.replace(lowest, values={"epsilon": 0.35, "ceiling": 1.0}, pruned=False)
    assert tune.choose([lowest, shared, noisy_tie]) is lowest  # one prune run: the first of its candidates
    bare = [tune.Trial({"epsilon": 0.1}, 20.0), tune.Trial({"epsilon": 0.2}, 19.0)]
    assert tune.choose(bare) is bare[1]
    with pytest.raises(UserError, match="at least one candidate"):
        tune.choose([])


def test_one_se_never_ties_trials_without_windows():
    best = tune.Trial({"epsilon": 0.3}, 50.0, True, (), 0.07)
    worse = tune.Trial({"epsilon": 0.1}, 100.0, True, (), 0.02)  # nearer uniform, no windows: no tie
    assert tune.one_se([best, worse]) is best


def test_a_trial_round_trips_through_its_record():
    t = _trial(0.3, [5.0, 5.1], 0.07)
    assert tune.Trial.from_dict(t.to_dict()) == t
    old = {"values": {"epsilon": 0.1}, "heldout_ppl": 20.0}  # a record stored before the fields
    assert tune.Trial.from_dict(old) == tune.Trial({"epsilon": 0.1}, 20.0)


def test_the_search_chooses_the_lowest_held_out_score():
    windows = {0.1: [5.3, 5.4, 5.2, 5.5], 0.3: [4.80, 5.20, 4.90, 5.15], 0.35: [4.90, 5.00, 4.95, 5.05]}
    spread = {0.1: 0.02, 0.3: 0.07, 0.35: 0.08}
    plan = [{"epsilon": e} for e in windows]
    best, trials = tune.search(plan, lambda v: tune.Score(tuple(windows[v["epsilon"]]), spread[v["epsilon"]]))
    assert best == {"epsilon": 0.35}  # 0.3 ties with it within one SE and is nearer uniform: one_se's pick
    assert tune.one_se(trials).values == {"epsilon": 0.3}


def test_a_stored_trial_with_non_finite_scores_reads_back_and_never_wins():
    """The run store keeps inf and nan as strings; a candidate that broke the model is never chosen."""
    from alphaprune.runs import _jsonable

    broken = tune.Trial({"epsilon": 0.5}, math.nan, True, (math.nan, math.nan), 0.2)
    fine = _trial(0.3, [5.0, 5.1], 0.07)
    stored = [tune.Trial.from_dict(d) for d in _jsonable([broken.to_dict(), fine.to_dict()])]
    assert math.isnan(stored[0].heldout_ppl) and stored[1] == fine
    assert tune.choose(stored) == fine and tune.choose([broken, fine]) is fine
    with pytest.raises(UserError, match="non-finite"):
        tune.choose([broken])


def test_the_chosen_trial_of_a_record_is_the_one_its_settings_name():
    trials = [_trial(0.3, [4.80, 5.20, 4.90, 5.15], 0.07), _trial(0.35, [4.90, 5.00, 4.95, 5.05], 0.08)]
    assert tune.chosen_of(trials, {"epsilon": 0.3}) is trials[0]  # what the run used (the rule before), not choose's
    assert tune.chosen_of(trials, {"epsilon": 0.9}) is tune.choose(trials) is trials[1]


def test_spread_is_zero_for_uniform_and_grows_with_epsilon(texts):
    from dataclasses import replace

    from alphaprune.pipeline import make_allocation

    model = tiny_loaded(layers=4).model
    config = _config(texts, allocation="alphapruning", ceiling=1.0)
    spreads = [make_allocation(model, replace(config, epsilon=e)).spread for e in (0.0, 0.1, 0.2, 0.3)]
    assert spreads[0] == pytest.approx(0.0, abs=1e-12)
    assert all(a < b for a, b in zip(spreads, spreads[1:], strict=False)), spreads
    uniform = make_allocation(model, _config(texts, allocation="uniform"))
    assert uniform.spread == pytest.approx(0.0, abs=1e-12)


def test_the_search_figure_stars_the_chosen_candidate():
    from alphaprune.plots import search_figure

    trials = [_trial(0.3, [4.80, 5.20, 4.90, 5.15], 0.07), _trial(0.35, [4.90, 5.00, 4.95, 5.05], 0.08)]
    star = lambda fig: [t for t in fig.data if t.name == "chosen"][0].x[0]  # noqa: E731
    assert star(search_figure(trials)) == 0.35  # the rule's choice: the lowest
    assert star(search_figure(trials, {"epsilon": 0.3})) == 0.3  # a stored run's own choice (the rule before)
    assert "SE) from the lowest" in search_figure(trials).data[0].customdata[0]
