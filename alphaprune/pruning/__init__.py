"""Pruners, one module each; every module defines `SPEC`, an alphaprune.registry.Pruner.

alphaprune/registry.py finds them by listing this package: adding a pruner is adding a
module here (and its test). The maths of the first three live in alphaprune/pruners.py;
alphaprune/prune.py applies any spec block by block.
"""
