"""Allocation rules, one module each; every module defines `SPEC`, an alphaprune.registry.Rule.

alphaprune/registry.py finds them by listing this package: adding a rule is adding a module
here (and its test). The rules' maths share alphaprune/allocation.py (the Allocation
result, the refit that keeps every ratio in [0, ceiling] with the weighted mean exact).
"""
