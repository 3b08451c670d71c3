"""Tuning a rule's parameters on held-out calibration text, never on the evaluation text.

A parameter whose spec allows "auto" (AlphaPruning's and FARMS' epsilon, ATP's beta, DLP's
alpha, OWL's lambda, and any rule's ceiling: 0.99 or 1.0) and is set to "auto" is chosen by a
budgeted search: each candidate of its spec's grid (several auto parameters: their grids'
product, thinned evenly to at most `budget` candidates) is one prune of a copy, scored on the
held-out tail of the calibration text (text.split_heldout: each window's mean token NLL); the
calibration windows come from the rest. The search is a curve of trials (values, held-out
perplexity, the windows' NLLs, the allocation's spread from uniform) stored with the run.

The choice (`choose`) is the candidate of lowest held-out perplexity. The one-standard-error
rule (`one_se`: a candidate nearer uniform within one paired standard error of the lowest) was
the choice before; measured side by side (docs/tuning.md) it never chose better and once worse,
so it is kept for comparison only. Candidates that give the same ratios (AlphaPruning's
ceiling where no block reaches it) share one prune run (`key`). Where the budget has room after the
grid, the midpoints between the chosen value of each parameter with three or more grid values
and its grid neighbours are tried too (`refinements`), the other parameters held as chosen.

    plan = candidates(config, blocks=30)            # [{"epsilon": 0.1}, ...]; config.search_budget at most
    best, trials = search(plan, score, progress, key=ratios, budget=10, refine=lambda b: refinements(config, b, 30))
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from alphaprune import registry
from alphaprune.config import PruneConfig
from alphaprune.errors import UserError, setting

SE_RULE = 1.0  # candidates within this many standard errors of the best held-out score tie


@dataclass(frozen=True)
class Trial:
    """One candidate of a search and its score."""

    values: dict
    heldout_ppl: float
    pruned: bool = True  # False: an earlier candidate gave the same ratios, its score is reused
    heldout_nlls: tuple[float, ...] = ()  # mean token NLL of each held-out window (paired comparisons)
    spread: float | None = None  # its allocation's distance from uniform (Allocation.spread)

    def to_dict(self) -> dict:
        out = {"values": dict(self.values), "heldout_ppl": self.heldout_ppl, "pruned": self.pruned}
        if self.heldout_nlls:
            out["heldout_nlls"] = list(self.heldout_nlls)
        if self.spread is not None:
            out["spread"] = self.spread
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Trial:
        """A stored trial (older records lack the windows and the spread; the run store keeps
        inf and nan as strings, float() reads them back)."""
        nlls = tuple(float(x) for x in data.get("heldout_nlls", ()))
        spread = data.get("spread")
        return cls(data["values"], float(data["heldout_ppl"]), data.get("pruned", True), nlls,
                   None if spread is None else float(spread))  # fmt: skip


def gap(trial: Trial, best: Trial) -> tuple[float, float]:
    """(mean, standard error) over the held-out windows of trial's NLL minus best's, paired
    window by window, in nats per token; (inf, 0) when they were not scored on the same windows."""
    a, b = trial.heldout_nlls, best.heldout_nlls
    if len(a) != len(b) or len(a) < 2:
        return math.inf, 0.0
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs))


def choose(trials) -> Trial:
    """The candidate of lowest held-out perplexity (the first of equal ones: candidates of equal
    ratios share a prune run, hence its score). Measured on the protocol of docs/results.md with
    Wanda at 70% (docs/tuning.md): on an AMD EPYC it picks what a hand-picker looking at WikiText
    picks for ATP (beta 0.012: 412.93), where the one-standard-error rule (`one_se`) moved to
    beta 0.008 (439.59); for AlphaPruning both chose the same. On an Intel Xeon its held-out
    curve ranks otherwise (beta 0.008: 426.97), and the authors' search on WikiText itself
    picks beta 0.010 (395.24): near the optimum, rounding moves a final run by 5-8%."""
    return lowest(trials)


def one_se(trials) -> Trial:
    """The one-standard-error rule of model selection (the choice before, kept for comparison in
    bench/tuning_check.py): the lowest held-out perplexity, unless candidates nearer uniform (a
    smaller Allocation.spread) score within one paired standard error of it; then the nearest
    uniform of those."""
    trials = list(trials)
    best = lowest(trials)
    if best.spread is None:
        return best
    ties = [t for t in trials if math.isfinite(t.heldout_ppl) and t.spread is not None and _within(t, best)]
    return min(ties, key=lambda t: (round(t.spread, 9), t.heldout_ppl))


def lowest(trials) -> Trial:
    """The trial of lowest finite held-out perplexity (a nan never wins a comparison)."""
    trials = list(trials)
    if not trials:
        raise UserError("a search needs at least one candidate to choose from")
    finite = [t for t in trials if math.isfinite(t.heldout_ppl)]
    if not finite:  # every candidate broke the model (e.g. a block pruned whole at 80%)
        raise UserError("every candidate of the search gave a non-finite held-out perplexity; give the values by hand")
    return min(finite, key=lambda t: t.heldout_ppl)


def chosen_of(trials, settings: dict) -> Trial:
    """The trial a stored run chose: the one whose values are the run's settings (a rule changed
    since the run cannot change what it chose); `choose` where none matches."""
    for trial in trials:
        if all(settings.get(k) == v for k, v in trial.values.items()):
            return trial
    return choose(trials)


def _within(trial: Trial, best: Trial) -> bool:
    if trial is best or (trial.heldout_nlls and trial.heldout_nlls == best.heldout_nlls):
        return True
    mean, se = gap(trial, best)
    return mean <= SE_RULE * se


def prune_runs(trials) -> int:
    """How many prune runs a search cost (a stored search without the field: one per trial)."""
    return sum(1 for t in trials if (t.pruned if isinstance(t, Trial) else t.get("pruned", True)))


def grid(param: registry.Param, target: float, blocks: int) -> tuple:
    """The candidates of one auto parameter (its spec's grid, which may depend on the target
    and the number of blocks, e.g. ATP's largest beta)."""
    values = param.grid(target, blocks) if callable(param.grid) else tuple(param.grid)
    if not values:
        raise UserError(f"{param.label} has no candidates to search; give a number for {setting(param.name)}")
    return tuple(param.check(v) for v in values)


def candidates(config: PruneConfig, blocks: int, budget: int | None = None) -> list[dict]:
    """The settings to try: the product of every auto parameter's grid, at most `budget` of
    them (an even thinning of the product, first and last kept)."""
    budget = config.search_budget if budget is None else budget
    names = config.auto_params()
    grids = [grid(config.auto_spec(n), config.sparsity, blocks) for n in names]
    plan = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grids)]
    if budget < 1:
        raise UserError(f"the search budget must be at least 1 prune run, got {budget}")
    if len(plan) > budget:
        step = (len(plan) - 1) / max(1, budget - 1)
        plan = [plan[round(i * step)] for i in range(budget)]
    return plan


def refinements(config: PruneConfig, best: dict, blocks: int) -> list[dict]:
    """Midpoints between the chosen value of each auto parameter with 3+ grid values and its
    grid neighbours (the lower one first); the other parameters as in `best`."""
    out = []
    for name in config.auto_params():
        param = config.auto_spec(name)
        values = sorted(grid(param, config.sparsity, blocks))
        if param.kind != "float" or len(values) < 3 or best.get(name) not in values:
            continue
        i = values.index(best[name])
        for j in (i - 1, i + 1):
            if 0 <= j < len(values):
                out.append({**best, name: param.check(round((values[i] + values[j]) / 2, 6))})
    return out


@dataclass(frozen=True)
class Score:
    """What scoring one candidate measured: each held-out window's mean token NLL, and how far
    its allocation is from uniform (Allocation.spread)."""

    nlls: tuple[float, ...]
    spread: float | None = None


def as_trial(values: dict, score) -> Trial:
    """A Trial from a score function's answer: a Score, or a bare held-out perplexity."""
    if isinstance(score, Score):
        from alphaprune.perplexity import perplexity_of  # torch only where a model was scored

        return Trial(values, perplexity_of(list(score.nlls)), True, tuple(score.nlls), score.spread)
    return Trial(values, float(score))


def search(plan: list[dict], score: Callable[[dict], Score | float], progress=None, key=None, budget: int | None = None,
           refine: Callable[[dict], list[dict]] | None = None) -> tuple[dict, tuple[Trial, ...]]:  # fmt: skip
    """(the chosen candidate, every trial in order). `score(values)` gives a Score (the chosen
    one: `choose`) or a held-out perplexity. `key(values)` is what a
    prune depends on: candidates of one key share a prune run. With `refine`, its candidates
    around the grid's choice are tried while fewer than `budget` prunes were run."""
    key = key or (lambda values: tuple(sorted(values.items())))
    budget = len(plan) if budget is None else budget
    if budget < 1 or not plan:
        raise UserError(f"a search needs candidates and a budget of at least 1 prune run, got {budget}")
    scores: dict = {}
    trials: list[Trial] = []

    def run(values: dict) -> bool:
        k = key(values)
        fresh = k not in scores
        if fresh and len(scores) >= budget:
            return False
        if fresh:
            scores[k] = as_trial(values, score(values))
        trials.append(dataclasses.replace(scores[k], values=values, pruned=fresh))
        if progress is not None:
            words = ", ".join(f"{name} {v:g}" for name, v in values.items())
            progress(min(1.0, len(scores) / budget), f"{words}: held-out perplexity {scores[k].heldout_ppl:.2f}")
        return True

    for values in plan:
        run(values)
    best = choose(trials)  # refine around the choice
    for values in refine(dict(best.values)) if refine is not None else ():
        if all(t.values != values for t in trials) and not run(values):
            break
    best = choose(trials)
    if progress is not None:  # the budget may not be spent: the stage still ends at 1
        progress(1.0, f"chose {', '.join(f'{k} {v:g}' for k, v in best.values.items())} of {len(scores)} prune runs")
    return dict(best.values), tuple(trials)
