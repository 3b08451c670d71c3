"""Tuning a rule's parameters on held-out calibration text, never on the evaluation text.

A parameter whose spec allows "auto" (AlphaPruning's and FARMS' epsilon, ATP's beta, DLP's
alpha, OWL's lambda, and any rule's ceiling: 0.99 or 1.0) and is set to "auto" is chosen by a
budgeted search: each candidate of its spec's grid (several auto parameters: their grids'
product, thinned evenly to at most `budget` candidates) is one prune of a copy, scored by
perplexity on the held-out tail of the calibration text (text.split_heldout); the calibration
windows come from the rest. The search is a curve of (values, held-out perplexity) stored with the run.

    plan = candidates(config, blocks=30)            # [{"epsilon": 0.1}, ...]; config.search_budget at most
    best, trials = search(plan, score, progress)    # score(values) -> held-out perplexity
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from alphaprune import registry
from alphaprune.config import PruneConfig
from alphaprune.errors import UserError, setting


@dataclass(frozen=True)
class Trial:
    """One candidate of a search and its score."""

    values: dict
    heldout_ppl: float

    def to_dict(self) -> dict:
        return {"values": dict(self.values), "heldout_ppl": self.heldout_ppl}


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


def search(plan: list[dict], score: Callable[[dict], float], progress=None) -> tuple[dict, tuple[Trial, ...]]:
    """(the candidate of lowest held-out perplexity, every trial in order)."""
    trials = []
    for i, values in enumerate(plan):
        trials.append(Trial(values, float(score(values))))
        if progress is not None:
            words = ", ".join(f"{k} {v:g}" for k, v in values.items())
            progress((i + 1) / len(plan), f"{words}: held-out perplexity {trials[-1].heldout_ppl:.2f}")
    best = min(trials, key=lambda t: t.heldout_ppl)
    return dict(best.values), tuple(trials)
