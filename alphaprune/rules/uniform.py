"""Uniform allocation: every prunable matrix at the target sparsity (the baseline of every chart).

registry.rule("uniform").allocate(RuleInput(matrices, target=0.7, ceiling=0.99, params={}))
"""

from __future__ import annotations

from alphaprune import allocation as alloc
from alphaprune.registry import WEIGHTS, Rule, RuleInput


def allocate(given: RuleInput) -> alloc.Allocation:
    return alloc.uniform(given.matrices, given.target, given.ceiling)


SPEC = Rule(
    name="uniform",
    summary="every matrix at the target sparsity",
    needs=WEIGHTS,
    allocate=allocate,
    granularities=("block", "matrix"),
    patterns=True,
    order=0,
)
