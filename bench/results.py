"""Regenerate docs/results.md: perplexity of the default model pruned every way, on one protocol.

Protocol (issues 3 and 11): calibration = ../shared/data/calib_python_docs.txt, 32 random
windows of 1024 tokens, seed 0; evaluation = ../shared/data/wikitext2_test.raw, first 32 windows
of 1024 tokens. Grid, most important first:
- every rule with Wanda at 70% at its spec's defaults, and with DSnoT on top (uniform and
  AlphaPruning; uniform also with 5, 10 and 20 of DSnoT's 50 cycles);
- every rule with Wanda at 70% with its parameters searched ("auto": AlphaPruning's epsilon and
  ceiling, FARMS' epsilon, OWL's lambda, ATP's beta, DLP's alpha; each candidate scored on the
  held-out tail of the calibration text, never the evaluation text), and AlphaPruning's and
  ATP's at 80%;
- every rule (uniform, OWL, AlphaPruning, FARMS, ATP, DLP at their specs' defaults, and "auto":
  AlphaPruning with epsilon and ceiling searched) x {Wanda, SparseGPT, RIA} x {60, 70, 80}%;
- DSnoT on top of Wanda (uniform and AlphaPruning) at 70 and 80%;
- issue 3's grid: {uniform, AlphaPruning eps 0.3, OWL} x {magnitude, Wanda, SparseGPT} x
  {50..80}%, an epsilon sweep at 70% (Wanda and magnitude 0.1..0.5, SparseGPT 0.2 and 0.3), at
  70% per pruner the reference's own unclipped eps-0.3 ratios with any ratio above 1 taken as 1
  (a block pruned whole) and our allocation with the ceiling at 1.0, and magnitude with epsilon
  auto.

Every run goes into a run history (default bench/results.sqlite, committed) and is
reused when a run with the same settings and weights is already there, so the script
resumes where it stopped (configurations never run first, in grid order, then those whose stored
run is stale); docs/results.md (and its figure docs/results.png) is rewritten after every run.
On this 2-core machine a magnitude run takes ~1-2 min, Wanda / SparseGPT / RIA ~3-5 min, an
auto run ~10 prunes (its search budget) more.

    .venv/bin/python bench/results.py [--db bench/results.sqlite] [--only 0.7] [--data ../shared/data]
    .venv/bin/python bench/results.py --limit 3           # at most 3 new runs, then the report
    .venv/bin/python bench/results.py --only 0.8 --pruner wanda   # only Wanda's runs at 80% (searches too)
    .venv/bin/python bench/results.py --only 0.7 --pruner wanda --rule atp   # ATP's Wanda runs at 70%
    .venv/bin/python bench/results.py --plan             # what is left to run, in order
    .venv/bin/python bench/results.py --report-only      # rewrite docs/results.md from the database
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, no install needed

from alphaprune import registry, tune  # noqa: E402
from alphaprune.analysis import analyze  # noqa: E402
from alphaprune.models import DEFAULT_MODEL, load_model  # noqa: E402
from alphaprune.pipeline import PruneConfig, fingerprint, run_prune  # noqa: E402
from alphaprune.runs import RunStore, with_legacy  # noqa: E402
from alphaprune.tune import Trial, prune_runs  # noqa: E402

LEGACY_PRUNERS = ("magnitude", "wanda", "sparsegpt")  # issue 3's grid
LEGACY_RULES = ("uniform", "alphapruning", "owl")
PRUNERS = ("wanda", "sparsegpt", "ria")  # issue 11's grid
GRID_SPARSITIES = (0.6, 0.7, 0.8)  # issue 11's grid
RULES = ("uniform", "owl", "alphapruning", "farms", "atp", "dlp")  # at their specs' defaults
SPARSITIES = (0.7, 0.5, 0.6, 0.8)  # 70% first: the acceptance numbers
SWEEP_EPSILONS = (0.1, 0.2, 0.3, 0.4, 0.5)
# per pruner, the epsilons of the 70% sweep; SparseGPT at 0.2, the largest epsilon at which
# the reference's ratios stay below 1 (its code runs, so its numbers can be compared), and 0.3
SWEEP = {"wanda": SWEEP_EPSILONS, "magnitude": SWEEP_EPSILONS, "sparsegpt": (0.2, 0.3)}
# each rule with its parameters searched on held-out calibration text (alphaprune/tune.py)
TUNED = {
    "alphapruning": {"epsilon": "auto", "ceiling": "auto"},
    "atp": {"beta": "auto"},
    "farms": {"epsilon": "auto"},
    "dlp": {"dlp_alpha": "auto"},
    "owl": {"owl_lambda": "auto"},
}
AUTO_ROW = {"allocation": "alphapruning", **TUNED["alphapruning"]}  # the tables' "auto" rule
DSNOT_RULES = ("uniform", "alphapruning")
# DSnoT's 50 cycles swap up to 50 weights per row: 4% of a 4096-wide row's kept weights at 70%
# (the paper's LLaMA-7B), 29% of this model's 576-wide rows; fewer cycles, with uniform at 70%
DSNOT_CYCLES = (5, 10, 20)
COMMON_FIELDS = ("sparsity", "pruner", "allocation", "mapping", "pattern", "refine", "ceiling")
COMMON_FIELDS += ("calib_samples", "seqlen", "seed", "eval_windows")


def protocol(data: Path, **kw) -> PruneConfig:
    base = dict(
        calib=str(data / "calib_python_docs.txt"),
        calib_samples=32,
        seqlen=1024,
        seed=0,
        eval=str(data / "wikitext2_test.raw"),
        eval_windows=32,
        epsilon=0.3,
    )
    return PruneConfig(**{**base, **kw})


def as_whole_block(cfg: PruneConfig, analysis) -> PruneConfig:
    """What the reference code does with an AlphaPruning config: its unclipped block ratios,
    any ratio >= 1 taken as 1 (its Wanda prunes such a block whole; its magnitude and
    SparseGPT crash), as our allocation 'list' with the ceiling at 1."""
    import dataclasses

    from alphaprune import allocation as alloc

    raw = alloc.alphapruning(analysis.prunable, cfg.sparsity, cfg.epsilon, cfg.metric, cfg.mapping, 1.0)
    ratios = tuple(round(min(r, 1.0), 12) for r in raw.raw_block_ratios)  # stable digits: part of the run's key
    return dataclasses.replace(cfg, allocation="list", block_list=ratios, ceiling=1.0)


def whole_block(data: Path, analysis, pruner: str) -> PruneConfig:
    """The reference's eps-0.3 ratios at 70% with the block above 1 pruned whole."""
    return as_whole_block(protocol(data, sparsity=0.7, pruner=pruner, allocation="alphapruning"), analysis)


def tuned(data: Path, rule: str, sparsity: float = 0.7, pruner: str = "wanda") -> PruneConfig:
    return protocol(data, sparsity=sparsity, pruner=pruner, allocation=rule, **TUNED[rule])


def grid(data: Path, only: float | None, analysis) -> list[PruneConfig]:
    """Every configuration, most important first (see the module docstring)."""
    # each rule at its defaults with Wanda at 70% (one prune each: what a search should beat),
    # DSnoT there, then the searches (about 10 prunes each)
    first = [protocol(data, sparsity=0.7, allocation=r) for r in RULES]
    first += [protocol(data, sparsity=0.7, allocation=r, refine="dsnot") for r in DSNOT_RULES]
    first += [protocol(data, sparsity=0.7, refine="dsnot", dsnot_cycles=c) for c in DSNOT_CYCLES]
    first += [tuned(data, r) for r in ("alphapruning", "atp", "dlp", "farms", "owl")]
    first += [tuned(data, "alphapruning", 0.8), tuned(data, "atp", 0.8)]
    configs = [c for c in first if only is None or abs(c.sparsity - only) < 1e-9]
    for sparsity in (0.7, 0.8, 0.6):
        if only is None or abs(sparsity - only) < 1e-9:
            configs += _issue11_cells(data, sparsity)
    for sparsity in SPARSITIES:
        if only is None or abs(sparsity - only) < 1e-9:
            configs += _issue3_cells(data, sparsity, analysis)
    return configs


def _issue11_cells(data: Path, sparsity: float) -> list[PruneConfig]:
    cells = [protocol(data, sparsity=sparsity, pruner=p, allocation=r) for r in RULES for p in PRUNERS]
    if sparsity in (0.7, 0.8):
        cells += [protocol(data, sparsity=sparsity, allocation=r, refine="dsnot") for r in DSNOT_RULES]
    return cells + [protocol(data, sparsity=sparsity, pruner=p, **AUTO_ROW) for p in PRUNERS]


def _issue3_cells(data: Path, sparsity: float, analysis) -> list[PruneConfig]:
    configs = [protocol(data, sparsity=sparsity, pruner=p, allocation=a) for a in LEGACY_RULES for p in LEGACY_PRUNERS]
    if sparsity == 0.7:
        configs += [
            protocol(data, sparsity=0.7, pruner=pruner, allocation="alphapruning", epsilon=e)
            for pruner, epsilons in SWEEP.items()
            for e in epsilons
        ]
        configs += [whole_block(data, analysis, p) for p in LEGACY_PRUNERS]
        configs += [
            protocol(data, sparsity=0.7, pruner=p, allocation="alphapruning", ceiling=1.0) for p in LEGACY_PRUNERS
        ]
        configs.append(protocol(data, sparsity=0.7, pruner="magnitude", allocation="alphapruning", epsilon=None))
    return configs


def key(settings: dict, fp: str) -> str:
    """What identifies a run: the settings that change its result, and the weights. A
    parameter no spec of the run owns is left out; a searched one is "auto" (the stored run
    keeps its pick), so a config and the record it produced have the same key."""
    picked = {k: settings.get(k) for k in COMMON_FIELDS}
    picked["refine"] = picked["refine"] or registry.NO_REFINER  # records older than DSnoT
    owned = {p.name for p in registry.params_of(settings["allocation"], settings["pruner"], picked["refine"])}
    settings = with_legacy(settings)  # records older than a parameter: what they ran with
    for name in sorted(owned):
        value = settings.get(name, registry.param(name).default)
        picked[name] = list(value) if isinstance(value, tuple) else value
    for name in set(searched(settings)) & (owned | {"ceiling"}):
        picked[name] = "auto"
    picked["calib"] = Path(str(settings.get("calib"))).name
    picked["eval"] = Path(str(settings.get("eval"))).name
    return json.dumps(picked, sort_keys=True) + fp[:16]


def searched(settings: dict) -> list[str]:
    """The settings an auto search chose (a config: those set to "auto"; a record: its search's)."""
    trials = settings.get("search") or []
    if trials:
        return sorted(trials[0]["values"])
    if settings.get("epsilon_search"):  # records older than the registry
        return ["epsilon"]
    return sorted(k for k, v in settings.items() if v == "auto")


def find(runs: dict, cfg: PruneConfig, fp: str):
    """The stored run of this configuration on these weights, or None."""
    return runs.get(key(cfg.to_dict(), fp))


def stored(store: RunStore, model: str) -> dict[str, object]:
    return {key(r.settings, r.fingerprint or ""): r for r in store.list(model=model, kind="prune")}


STALE: set[int] = set()  # ids of stored runs whose ratios today's analysis no longer gives (report())
STALE_NOTE = (
    "Marked \u2020: a stored run that today's code would run otherwise, kept until the next "
    "bench/results.py run prunes it again: its block ratios come from an older analysis (the "
    "spectra's float32 numerics changed since, moving AlphaPruning's ratios by ~0.002), or its "
    "search predates shared prune runs for candidates of equal ratios and the refinement around the best, "
    "or each held-out window's score (the standard errors of docs/tuning.md and the search figure)."
)


def stale(record, analysis) -> bool:
    """Whether today's code would run a stored run otherwise: a search of the older kind, or
    other block ratios from today's analysis for a rule that allocates from it alone (no
    search, no FARMS windows)."""
    from alphaprune.registry import RuleInput

    s = record.settings
    if searched(s):  # an epsilon_search of issue 3 has no "search" list: older too
        trials = s.get("search") or []  # older searches kept no held-out windows
        if not trials or any("pruned" not in trial or "heldout_nlls" not in trial for trial in trials):
            return True
        searched_ = [Trial.from_dict(t) for t in trials]  # chosen by another rule (the one-SE rule before)
        return tune.chosen_of(searched_, s).heldout_ppl != tune.choose(searched_).heldout_ppl
    rule = registry.rule(str(s.get("allocation")))
    if rule is None or rule.needs != registry.ANALYSIS or "sparsity" not in s or "ceiling" not in s:
        return False
    params = {p.name: s.get(p.name) if s.get(p.name) is not None else p.default for p in rule.params}
    if rule.analysis_options and rule.analysis_options(params):  # FARMS' windows: not in `analysis`
        return False
    given = RuleInput(tuple(analysis.prunable), s["sparsity"], s["ceiling"], params, s.get("mapping", "block"))
    now = rule.allocate(given).block_ratios
    if len(now) != len(record.block_ratios):
        return True
    return max(abs(a - b) for a, b in zip(now, record.block_ratios, strict=True)) > 1e-9


def _mark(record) -> str:
    return " \u2020" if record.id in STALE else ""


def cell(record) -> str:
    if record is None:
        return "not run yet"
    minutes = record.seconds.get("total", float("nan")) / 60
    return f"{record.ppl_after:.2f}{_mark(record)} (sparsity {record.actual_sparsity:.4f}, {minutes:.1f} min)"


LABELS = {
    "uniform": "uniform", "owl": "OWL", "alphapruning": "AlphaPruning", "farms": "FARMS", "atp": "ATP",
    "dlp": "DLP", "auto": "auto (AlphaPruning, epsilon and ceiling searched)",
}  # fmt: skip


def _rule_label(rule: str) -> str:
    """A row's label with the parameters its cells use (the specs' defaults)."""
    if rule == "auto":
        return LABELS[rule]
    words = ", ".join(f"{p.name} {p.default:g}" for p in registry.rule(rule).params if p.kind == "float")
    return f"{LABELS[rule]} ({words})" if words else LABELS[rule]


def _row_config(data: Path, rule: str, sparsity: float, pruner: str) -> PruneConfig:
    if rule == "auto":
        return protocol(data, sparsity=sparsity, pruner=pruner, **AUTO_ROW)
    return protocol(data, sparsity=sparsity, pruner=pruner, allocation=rule)


def _sparsity_table(data: Path, runs: dict, fp: str, sparsity: float) -> list[str]:
    """Rules x pruners at one sparsity; magnitude (issue 3's grid) for the older rules only."""
    rows = (*RULES, "auto") if sparsity != 0.5 else LEGACY_RULES
    columns = (*PRUNERS, "magnitude") if sparsity != 0.5 else LEGACY_PRUNERS
    lines = [f"### {sparsity:.0%} unstructured", "", "| allocation | " + " | ".join(columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for rule in rows:
        cells = []
        for pruner in columns:
            if pruner == "magnitude" and rule not in LEGACY_RULES:
                cells.append("")
                continue
            cells.append(cell(find(runs, _row_config(data, rule, sparsity, pruner), fp)))
        lines.append(f"| {_rule_label(rule)} | " + " | ".join(cells) + " |")
    lines.append("")
    if sparsity == 0.7:
        lines += _auto_line(data, runs, fp)
    return lines


def _picked(record) -> str:
    names = searched(record.settings)
    return ", ".join(f"{n} {record.settings[n]:g}" for n in names)


def _picked_heldout(record) -> float:
    """The held-out perplexity of the candidate the run chose (a run of the one-standard-error
    rule, the choice before, may have chosen one nearer uniform than the lowest)."""
    trials = [Trial.from_dict(t) for t in record.settings.get("search") or []]
    return tune.chosen_of(trials, record.settings).heldout_ppl


def _tuning_table(data: Path, runs: dict, fp: str) -> list[str]:
    """Each rule and pruner, its parameters searched on held-out calibration text."""
    lines = ["### Tuned on held-out calibration text", ""]
    head = ("rule", "pruner", "sparsity", "searched", "prune runs", "search min", "picked", "held-out ppl")
    lines += ["| " + " | ".join((*head, "perplexity", "WikiText / held-out", "at the defaults")) + " |"]
    lines += ["|" + "---|" * (len(head) + 3)]
    searches, better = list(_searches(data, runs, fp)), 0
    for sparsity, rule, pruner, record in searches:
        trials = record.settings.get("search") or []
        default = find(runs, protocol(data, sparsity=sparsity, pruner=pruner, allocation=rule), fp)
        heldout = _picked_heldout(record)
        better += default is not None and record.ppl_after < default.ppl_after
        lines.append(
            f"| {LABELS[rule]} | {pruner} | {sparsity:.0%} | {', '.join(sorted(TUNED[rule]))} | {prune_runs(trials)} | "
            f"{record.seconds.get('search', float('nan')) / 60:.1f} | {_picked(record)} | "
            f"{heldout:.2f} | **{record.ppl_after:.2f}**{_mark(record)} | {record.ppl_after / heldout:.1f} | "
            f"{f'{default.ppl_after:.2f}{_mark(default)}' if default else 'not run yet'} |"
        )
    lines += [
        "",
        "Wanda's AlphaPruning and ATP searches side by side with a hand-picker's choice on the evaluation "
        "text, and (AlphaPruning) the calibration draw's effect: docs/tuning.md (bench/tuning_check.py).",
        "",
        f"Searches whose pick scores below their rule's defaults on WikiText: {better} of {len(searches)}. The "
        "held-out tail is of the calibration text's own domain (Python documentation), not WikiText's: where "
        "the two domains rank the candidates differently, a search follows the calibration domain.",
        "",
        "Every candidate's held-out perplexity (the search's curve):",
        "",
    ]
    for sparsity, rule, pruner, record in searches:
        curve = "; ".join(
            ", ".join(f"{k} {v:g}" for k, v in t["values"].items()) + f": {t['heldout_ppl']:.1f}"
            for t in record.settings["search"]
        )
        lines.append(f"- {LABELS[rule]}, {pruner}, {sparsity:.0%}: {curve}")
    return lines + [""]


def _searches(data: Path, runs: dict, fp: str):
    """(sparsity, rule, pruner, record) of every stored search: Wanda's first (issue 11's tuning
    bar, bench/tuning_check.py), each pruner's by sparsity."""
    for pruner in PRUNERS:
        for sparsity in GRID_SPARSITIES:
            for rule in TUNED:
                record = find(runs, tuned(data, rule, sparsity, pruner), fp)
                if record is not None:
                    yield sparsity, rule, pruner, record


def _dsnot_table(data: Path, runs: dict, fp: str) -> list[str]:
    lines = ["### DSnoT on top of Wanda", "", "| allocation | sparsity | Wanda | Wanda + DSnoT |", "|---|---|---|---|"]
    for sparsity in (0.7, 0.8):
        for rule in DSNOT_RULES:
            plain = find(runs, protocol(data, sparsity=sparsity, allocation=rule), fp)
            refined = find(runs, protocol(data, sparsity=sparsity, allocation=rule, refine="dsnot"), fp)
            lines.append(f"| {_rule_label(rule)} | {sparsity:.0%} | {cell(plain)} | {cell(refined)} |")
    default = registry.param("dsnot_cycles").default
    lines += ["", f"DSnoT's cycles (most swaps per row; its default {default}) with uniform Wanda at 70%:", ""]
    lines += ["| cycles | perplexity |", "|---|---|"]
    lines.append(f"| 0 (Wanda alone) | {cell(find(runs, protocol(data, sparsity=0.7), fp))} |")
    for cycles in (*DSNOT_CYCLES, default):
        record = find(runs, protocol(data, sparsity=0.7, refine="dsnot", dsnot_cycles=cycles), fp)
        lines.append(f"| {cycles}{' (default)' if cycles == default else ''} | {cell(record)} |")
    lines += ["", "`bench/dsnot_check.py` measures how DSnoT moves each refined matrix's output error (the mean"]
    lines += ["part it targets, and the whole), per kind of matrix, on the dense model's activations.", ""]
    return lines


def _auto_line(data: Path, runs: dict, fp: str) -> list[str]:
    """AlphaPruning for magnitude with epsilon picked on held-out calibration text (never the eval text)."""
    cfg = protocol(data, sparsity=0.7, pruner="magnitude", allocation="alphapruning", epsilon=None)
    record = find(runs, cfg, fp)
    if record is None:
        return []
    tried = ", ".join(f"{e:g}: {p:.0f}" for e, p in record.settings["epsilon_search"])
    return [
        "Magnitude with `--epsilon auto` (each of 0.1..0.5 scored by perplexity on the held-out last",
        "10% of the calibration text, never the evaluation text):",
        f"picked eps {record.settings['epsilon']:g}, perplexity {cell(record)};",
        f"held-out perplexity per epsilon: {tried}.",
        "",
    ]


def _sweep_table(data: Path, runs: dict, fp: str, analysis) -> list[str]:
    lines = ["### Epsilon sweep at 70% (AlphaPruning, alpha_peak, block mapping)", ""]
    lines += ["| pruner | epsilon | perplexity | max unclipped block ratio | clipped matrices | actual sparsity |"]
    lines += ["|---|---|---|---|---|---|"]
    for pruner, epsilons in SWEEP.items():
        for eps in epsilons:
            cfg = protocol(data, sparsity=0.7, pruner=pruner, allocation="alphapruning", epsilon=eps)
            record = find(runs, cfg, fp)
            if record is None:
                lines.append(f"| {pruner} | {eps} | not run yet | | | |")
                continue
            raw = _raw_max(record, analysis)
            clipped = len(record.settings.get("clipped") or [])
            lines.append(
                f"| {pruner} | {eps} | {record.ppl_after:.2f} | {raw:.4f} | {clipped} | {record.actual_sparsity:.4f} |"
            )
    return lines + [""]


def _raw_max(record, analysis) -> float:
    """The largest block ratio of the unclipped AlphaPruning formula (what the reference uses)."""
    from alphaprune import allocation as alloc

    s = record.settings
    a = alloc.alphapruning(analysis.prunable, s["sparsity"], s["epsilon"], s["metric"], s["mapping"], s["ceiling"])
    return max(a.raw_block_ratios)


def _clipping_note(analysis) -> list[str]:
    """Where the unclipped formula leaves [0, 0.99] at 70% / eps 0.3, computed, not claimed."""
    from alphaprune import allocation as alloc

    a = alloc.alphapruning(analysis.prunable, 0.7, 0.3)
    raw = a.raw_block_ratios
    top = max(range(len(raw)), key=raw.__getitem__)
    return [
        "AlphaPruning ratios are kept inside [0, 0.99]. At 70% and eps 0.3 the unclipped formula (the",
        f"reference code's) gives block {top} a ratio of {raw[top]:.4f}, i.e. it would prune that block whole;",
        f"here it is held at {a.block_ratios[top]:.4f} and the other blocks are rescaled so that the",
        f"parameter-weighted mean stays {a.mean:.6f}.",
        "",
    ]


def _whole_block_table(data: Path, runs: dict, fp: str, analysis) -> list[str]:
    """Ours (clipped at 0.99) beside the reference's own ratios with the block pruned whole."""
    lines = ["### 70%, eps 0.3: clipped allocation vs the reference's block pruned whole", ""]
    lines += ["| pruner | uniform | AlphaPruning, ceiling 0.99 | ceiling 1.0 | reference ratios, block whole |"]
    lines += ["|---|---|---|---|---|"]
    for pruner in PRUNERS:
        cfgs = [protocol(data, sparsity=0.7, pruner=pruner, allocation=a) for a in ("uniform", "alphapruning")]
        cfgs.append(protocol(data, sparsity=0.7, pruner=pruner, allocation="alphapruning", ceiling=1.0))
        cfgs.append(whole_block(data, analysis, pruner))
        records = [find(runs, c, fp) for c in cfgs]
        cells = [f"{r.ppl_after:.2f} ({r.actual_sparsity:.4f})" if r else "not run yet" for r in records]
        lines.append(f"| {pruner} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells: perplexity (measured sparsity). Ceiling 1.0 (`--max-sparsity 1.0`): our allocation",
        "allowed to prune a block whole, the mean still exactly 0.7. Last column: the reference",
        "formula's ratio above 1 taken as 1, the others unchanged: the authors' Wanda does exactly",
        "this (its per-row count exceeds the row), while their magnitude and SparseGPT code index",
        "past the end of the sorted scores and stop; the column is what those would give if they",
        "did not. Its mean sparsity is below 0.7 by the excess that was dropped.",
        "",
    ]
    return lines


def _cpus(runs: dict) -> str:
    """Which CPUs the cells ran on (each run records it): the last bits of float32 sums differ between
    CPUs, and at 70-80% such bits move perplexity (docs/fidelity.md), so a reader can tell them apart."""
    counts: dict[str, list[str]] = {}
    for r in runs.values():
        cpu = ((r.settings.get("numerics") or {}).get("cpu")) or "not recorded"
        counts.setdefault(cpu, []).append(str(r.settings.get("allocation")))
    if len(counts) <= 1:
        return f"CPU: {next(iter(counts), 'not recorded')}."
    parts = []
    for cpu, rules in sorted(counts.items(), key=lambda kv: -len(kv[1])):
        which = ", ".join(sorted(set(rules)))
        parts.append(f"{cpu}: {len(rules)} runs ({which})")
    return "CPUs of the runs (the history spans machines): " + "; ".join(parts) + "."


def _eval_time(runs: dict) -> str:
    """What one evaluation costs: the median of the runs' after-pruning evaluations (same windows)."""
    times = sorted(r.seconds["eval_after"] for r in runs.values() if "eval_after" in r.seconds)
    if not times:
        return ""
    median = times[len(times) // 2]
    return f"(one evaluation, dense or pruned, 32 x 1024 tokens: median {median:.0f} s over {len(times)} runs)"


FIGURE = Path("results.png")  # beside docs/results.md


def figure(data: Path, runs: dict, fp: str, path: Path) -> None:
    """Perplexity against sparsity per rule, one panel per pruner (log scale), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PRUNERS), figsize=(4.2 * len(PRUNERS), 3.6), sharey=True)
    for ax, pruner in zip(axes, PRUNERS, strict=True):
        for rule in (*RULES, "auto"):
            points = [(s, find(runs, _row_config(data, rule, s, pruner), fp)) for s in GRID_SPARSITIES]
            points = [(s, r.ppl_after) for s, r in points if r is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=LABELS[rule].split(" (")[0])
        ax.set(title=pruner, xlabel="sparsity", yscale="log", xticks=GRID_SPARSITIES)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("WikiText-2 perplexity (32 x 1024)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    from alphaprune import atomic

    with atomic.atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def write(out: Path, data: Path, store: RunStore, fp: str, dense, model: str, analysis) -> None:
    """docs/results.md and its figure, from the run history."""
    from alphaprune import atomic

    atomic.write_text(out, report(data, store, fp, dense, model, analysis))
    figure(data, stored(store, model), fp, out.parent / FIGURE)


def report(data: Path, store: RunStore, fp: str, dense: float | None, model: str, analysis) -> str:
    runs = stored(store, model)
    STALE.clear()
    STALE.update(r.id for r in runs.values() if stale(r, analysis))
    any_run = next(iter(runs.values()), None)
    versions = ", ".join(f"{k} {v}" for k, v in (any_run.versions if any_run else {}).items())
    lines = [
        "# Results: SmolLM2-135M-Instruct pruned every way",
        "",
        "Regenerated by `bench/results.py` (resumable; every run is kept in its run history).",
        "Perplexity on WikiText-2 (raw test, `wikitext2_test.raw`), first 32 windows of 1024 tokens;",
        "calibration: `calib_python_docs.txt`, 32 random windows of 1024 tokens, seed 0.",
        "Cells: perplexity after pruning (measured sparsity of the prunable matrices, wall time of the",
        "whole run with the dense evaluation cached; runs that shared the 2 cores with other jobs took",
        "up to about twice as long).",
        f"Machine: {platform.machine()}, 2 CPU cores, float32. Versions: {versions}.",
        _cpus(runs),
        "",
        f"Dense perplexity: **{dense:.3f}**" if dense is not None else "Dense perplexity: not measured yet",
        _eval_time(runs),
        "",
    ]
    lines += [STALE_NOTE, ""] if STALE else []
    lines += _tuning_table(data, runs, fp)
    lines += [f"![perplexity against sparsity per rule]({FIGURE.name})", ""]
    for sparsity in sorted(SPARSITIES):
        lines += _sparsity_table(data, runs, fp, sparsity)
    lines += _dsnot_table(data, runs, fp)
    lines += _sweep_table(data, runs, fp, analysis)
    lines += _clipping_note(analysis)
    lines += _whole_block_table(data, runs, fp, analysis)
    return "\n".join(lines)


def describe(config: PruneConfig) -> str:
    """One line naming a run: pruner, rule, sparsity, the rule's parameters, ceiling and refiner."""
    from alphaprune.allocation import DEFAULT_CEILING

    rule_values = config.rule_params()
    words = [f"{n} ({len(v)} values)" if isinstance(v, list | tuple) else f"{n} {v}" for n, v in rule_values.items()]
    if config.ceiling != DEFAULT_CEILING:
        words.append(f"ceiling {config.ceiling}")
    refiner = registry.refiner(config.refine)
    if refiner is not None:
        refiner_values = ", ".join(f"{p.name} {config.param(p.name)}" for p in refiner.params)
        words.append(f"+ {config.refine} ({refiner_values})")
    return f"{config.pruner:9s} {config.allocation:12s} {config.sparsity:.0%} " + ", ".join(words)


def to_run(store: RunStore, model: str, configs: list[PruneConfig], fp: str, analysis) -> list[tuple]:
    """The grid's configurations without a current stored run, in grid order, each with
    whether it is a rerun: those never run first, then those whose stored run is stale (its
    cell already shows a number, marked)."""
    runs = stored(store, model)
    found = [(c, find(runs, c, fp)) for c in configs]
    missing = [(c, False) for c, record in found if record is None]
    again = [(c, True) for c, record in found if record is not None and stale(record, analysis)]
    unique = {key(c.to_dict(), fp): (c, rerun) for c, rerun in missing + again}  # a config listed twice runs once
    return list(unique.values())


def _selected(args, analysis) -> list[PruneConfig]:
    """The grid's configurations at --only's sparsity, with --pruner's pruner and --rule's
    allocation rule (the report always covers the whole database)."""
    configs = grid(args.data, args.only, analysis)
    return [c for c in configs if args.pruner in (None, c.pruner) and args.rule in (None, c.allocation)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=ROOT / "bench" / "results.sqlite")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--only", type=float, help="only this sparsity (e.g. 0.7)")
    parser.add_argument(
        "--pruner", choices=sorted({*PRUNERS, *LEGACY_PRUNERS}), help="only run this pruner's configurations"
    )
    parser.add_argument("--rule", choices=sorted(registry.rules()), help="only run this rule's configurations")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--limit", type=int, help="at most this many new runs, then the report")
    parser.add_argument("--plan", action="store_true", help="list the runs still to do, in order, and stop")
    args = parser.parse_args()
    store = RunStore(args.db)
    loaded = load_model(DEFAULT_MODEL)
    fp = fingerprint(loaded.model)
    analysis = analyze(loaded.model, loaded.name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dense, done_now = None, 0
    plan = [] if args.report_only else to_run(store, loaded.name, _selected(args, analysis), fp, analysis)
    if args.plan:
        for config, rerun in plan[: args.limit]:
            print(describe(config) + ("  (stale, rerun)" if rerun else ""))
        return 0
    for config, _ in plan:
        start = time.perf_counter()
        result = run_prune(loaded, config, analysis)
        store.add(result.record(sweep="results"))
        dense = result.ppl_before
        took = time.perf_counter() - start
        print(f"{describe(config)}: {result.ppl_before:.3f} -> {result.ppl_after:.3f} ({took:.0f} s)", flush=True)
        write(args.out, args.data, store, fp, dense, loaded.name, analysis)
        done_now += 1
        if args.limit is not None and done_now >= args.limit:
            break
    if dense is None:
        dense = next((r.ppl_before for r in stored(store, loaded.name).values()), None)
    write(args.out, args.data, store, fp, dense, loaded.name, analysis)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
