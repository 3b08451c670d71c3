"""A user's list: one sparsity per block, as given (the target is their weighted mean).

registry.rule("list").allocate(RuleInput(matrices, None, 0.99, {"block_list": (0.5, 0.6, ...)}))
"""

from __future__ import annotations

from alphaprune import allocation as alloc
from alphaprune.registry import WEIGHTS, Param, Rule, RuleInput

BLOCK_LIST = Param(
    "block_list", None, "one sparsity per decoder block, comma-separated",
    "Sparsity per block", kind="floats", low=0.0, high=1.0,
)  # fmt: skip


def allocate(given: RuleInput) -> alloc.Allocation:
    return alloc.from_list(given.matrices, given.params["block_list"], given.ceiling)


SPEC = Rule(
    name="list",
    summary="one sparsity per block, as you list them",
    needs=WEIGHTS,
    allocate=allocate,
    params=(BLOCK_LIST,),
    sets_target=True,
    order=90,
)
