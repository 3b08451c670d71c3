"""Allocation rules side by side: one prune run per rule, with the same pruner, calibration and
evaluation, stored in the run history under one compare id, resumable.

The id is a digest of the model and of every setting the runs share, so running the same
comparison again (or with more rules) finds its stored runs and does only the missing ones:
a stopped comparison resumes where it stopped.

    configs = rule_configs(base, ["uniform", "alphapruning", "owl", "atp", "dlp"])
    cid = compare_id("smollm2-135m", base)
    todo = pending(RunStore(), "smollm2-135m", configs, cid)   # the configs without a stored run
    rows = table(RunStore().list(sweep=cid))                    # rule, perplexities, ratio range, block ratios
    print(ratio_listing(rows))                                  # block x rule
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

from alphaprune import registry
from alphaprune.config import PruneConfig
from alphaprune.errors import UserError, setting

PREFIX = "compare-"


def rule_configs(base: PruneConfig, rules: list[str]) -> list[PruneConfig]:
    """One config per rule: `base` with its allocation replaced (each rule's parameters as
    given in `base`, else its spec's defaults); every one validated before any work."""
    if not rules:
        raise UserError(f"name at least one allocation rule to compare; set {setting('allocation')}")
    if len(set(rules)) != len(rules):
        raise UserError(f"a rule is named twice in {','.join(rules)}")
    configs = []
    for name in rules:
        rule = registry.rule(name)  # UserError naming the known rules
        if rule.sets_target:
            raise UserError(f"compare runs every rule at one target sparsity; {name} sets its own")
        config = dataclasses.replace(base, allocation=name)
        if base.mapping not in rule.granularities:
            config = dataclasses.replace(config, mapping="block")
        config.validate()
        configs.append(config)
    return configs


def compare_id(model_name: str, base: PruneConfig) -> str:
    """The comparison's id: its model and every setting its runs share (the pruner, texts,
    target, each parameter given), not the rules, so adding a rule later reuses the others."""
    neutral = dataclasses.replace(base, allocation=registry.BASELINE)  # which rule is first changes nothing
    shared = {k: v for k, v in neutral.identity().items() if k != "allocation"}  # defaults given or not: one id
    legacy = {name: base.param(name) for name, p in registry.params().items() if p.legacy is not None}
    doc = {"model": model_name, "settings": shared, "legacy": legacy}  # every rule's once-other values named
    digest = hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return PREFIX + digest


def pending(store, model_name: str, configs: list[PruneConfig], cid: str) -> list[PruneConfig]:
    """The configs of this comparison that have no stored run yet, in order."""
    done = {r.settings.get("allocation") for r in store.list(model=model_name, kind="prune", sweep=cid)}
    return [c for c in configs if c.allocation not in done]


def table(records) -> list[dict]:
    """One row per rule of a comparison's stored runs, best first: perplexities, the ratios'
    range and every block's ratio ("block_ratios", for the side-by-side chart and listing)."""
    rows = []
    for r in records:
        blocks = list(r.block_ratios or [])  # a record without ratios: none drawn, its range NaN
        rows.append({
            "rule": r.settings.get("allocation"), "run": r.id, "target": r.settings.get("sparsity"),
            "ppl_before": r.ppl_before, "ppl_after": r.ppl_after, "actual_sparsity": r.actual_sparsity,
            "lowest_block": min(blocks, default=math.nan), "highest_block": max(blocks, default=math.nan),
            "block_ratios": blocks,
        })  # fmt: skip
    return sorted(rows, key=lambda row: row["ppl_after"])


def ratio_listing(rows: list[dict]) -> str:
    """Every block's ratio under each compared rule, one line per block (the CLI's listing)."""
    head = "block " + " ".join(f"{row['rule']:>12s}" for row in rows)
    depth = max((len(row["block_ratios"]) for row in rows), default=0)
    lines = [head]
    for block in range(depth):
        cells = [row["block_ratios"][block] if block < len(row["block_ratios"]) else float("nan") for row in rows]
        lines.append(f"{block:5d} " + " ".join(f"{cell:12.4f}" for cell in cells))
    return "\n".join(lines)
