"""Allocation invariants: weighted mean, bounds, monotone in alpha, the reference formula, clipping."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from alphaprune import allocation as alloc
from alphaprune.errors import UserError


@dataclass(frozen=True)
class Layer:
    name: str
    block: int
    params: int
    alpha_peak: float


def layers(blocks: int = 6, seed: int = 0) -> list[Layer]:
    """LLaMA-like: per block 4 attention matrices of 1 unit and 3 MLP ones of 3 units."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(blocks):
        for kind, params in (("q", 100), ("k", 25), ("v", 25), ("o", 100), ("gate", 300), ("up", 300), ("down", 300)):
            out.append(Layer(f"blocks.{b}.{kind}", b, params, float(rng.uniform(2.0, 6.0))))
    return out


def weighted_mean(a: alloc.Allocation) -> float:
    p = np.asarray(a.params, dtype=float)
    return float(np.dot(p, a.sparsities) / p.sum())


def reference_ratios(ls: list[Layer], target: float, eps: float, block: bool) -> np.ndarray:
    """The AlphaPruning formula written out plainly (no clipping)."""
    metric = np.array([layer.alpha_peak for layer in ls])
    if block:
        per = 7
        metric = np.repeat([metric[i : i + per].mean() for i in range(0, len(metric), per)], per)
    r = (metric - metric.min()) / (metric.max() - metric.min()) * 2 * eps + (1 - eps)
    p = np.array([layer.params for layer in ls], dtype=float)
    return r * target * p.sum() / np.sum(p * r)


def test_uniform_is_target_everywhere():
    a = alloc.uniform(layers(), 0.6)
    assert set(a.sparsities) == {0.6} and a.clipped == ()
    assert a.mean == pytest.approx(0.6, abs=1e-12)


@pytest.mark.parametrize("mapping", ["block", "matrix"])
@pytest.mark.parametrize("target,eps", [(0.5, 0.3), (0.7, 0.2), (0.3, 0.5)])
def test_alphapruning_equals_reference_formula_when_inside_bounds(mapping, target, eps):
    ls = layers()
    a = alloc.alphapruning(ls, target, eps, mapping=mapping)
    ref = reference_ratios(ls, target, eps, mapping == "block")
    assert ref.max() <= 0.99  # inside bounds: no refit, the reference's numbers exactly
    np.testing.assert_allclose(a.sparsities, ref, rtol=0, atol=1e-12)
    assert a.clipped == ()
    assert weighted_mean(a) == pytest.approx(target, abs=1e-12)


def test_block_mapping_gives_one_ratio_per_block():
    a = alloc.alphapruning(layers(), 0.5, 0.3, mapping="block")
    for b in range(6):
        values = {s for s, blk in zip(a.sparsities, a.blocks, strict=True) if blk == b}
        assert len(values) == 1
    assert len(a.block_ratios) == 6


def test_monotone_in_alpha_per_matrix_mapping():
    ls = layers()
    a = alloc.alphapruning(ls, 0.6, 0.4, mapping="matrix")
    order = np.argsort([layer.alpha_peak for layer in ls])
    assert np.all(np.diff(np.asarray(a.sparsities)[order]) >= -1e-15)  # higher alpha, more sparsity


@pytest.mark.parametrize("target,eps", [(0.5, 0.2), (0.8, 0.5)])  # the second one clips
def test_monotone_in_block_mean_alpha_block_mapping(target, eps):
    ls = layers(blocks=8, seed=3)
    a = alloc.alphapruning(ls, target, eps, mapping="block")
    means = [np.mean([layer.alpha_peak for layer in ls if layer.block == b]) for b in range(8)]
    ratios = np.asarray(a.block_ratios)[np.argsort(means)]
    assert np.all(np.diff(ratios) >= -1e-12)  # a block of higher mean alpha is pruned more
    assert ratios[-1] > ratios[0]


def test_epsilon_zero_is_uniform():
    a = alloc.alphapruning(layers(), 0.55, 0.0)
    np.testing.assert_allclose(a.sparsities, 0.55, atol=1e-12)


def test_clipping_keeps_bounds_mean_and_order():
    ls = layers()
    ref = reference_ratios(ls, 0.9, 0.5, block=False)
    assert ref.max() > 0.99  # the reference code would exceed the ceiling here
    a = alloc.alphapruning(ls, 0.9, 0.5, mapping="matrix")
    s = np.asarray(a.sparsities)
    assert s.max() <= 0.99 + 1e-15 and s.min() >= 0.0
    assert weighted_mean(a) == pytest.approx(0.9, abs=1e-9)
    assert a.clipped and all(a.ratios[name] == pytest.approx(0.99) for name in a.clipped)
    np.testing.assert_allclose(a.raw, ref, atol=1e-12)  # the unclipped values are kept for display
    order = np.argsort([layer.alpha_peak for layer in ls])
    assert np.all(np.diff(s[order]) >= -1e-12)


def test_ceiling_is_a_setting():
    a = alloc.alphapruning(layers(), 0.7, 0.3, mapping="matrix", ceiling=0.75)
    assert max(a.sparsities) <= 0.75 + 1e-15 and a.ceiling == 0.75
    assert weighted_mean(a) == pytest.approx(0.7, abs=1e-9)


def test_owl_more_outliers_less_sparsity_and_mean():
    ls = layers(blocks=4)
    outliers = [1.0, 3.0, 2.0, 5.0]
    a = alloc.owl(ls, 0.7, outliers, lam=0.08)
    blocks = a.block_ratios
    assert np.argsort(blocks).tolist() == np.argsort(outliers)[::-1].tolist()
    assert max(blocks) - min(blocks) == pytest.approx(0.16)  # spread 2 lambda
    assert weighted_mean(a) == pytest.approx(0.7, abs=1e-12)


def test_owl_clips_at_zero_and_still_hits_target():
    a = alloc.owl(layers(blocks=4), 0.05, [0.0, 10.0, 0.0, 0.0], lam=0.2)
    assert min(a.sparsities) == 0.0 and a.clipped
    assert weighted_mean(a) == pytest.approx(0.05, abs=1e-9)


def test_list_allocation_and_its_errors():
    ls = layers(blocks=3)
    a = alloc.from_list(ls, [0.2, 0.5, 0.8])
    assert a.block_ratios == pytest.approx([0.2, 0.5, 0.8])
    assert a.target == pytest.approx(0.5)
    with pytest.raises(UserError, match="3 blocks"):
        alloc.from_list(ls, [0.5, 0.5])
    with pytest.raises(UserError, match="inside"):
        alloc.from_list(ls, [0.5, 1.2, 0.5])


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5])
def test_bad_sparsity_is_a_user_error(target):
    with pytest.raises(UserError, match="sparsity"):
        alloc.alphapruning(layers(), target)


def test_bad_epsilon_metric_mapping():
    with pytest.raises(UserError, match="epsilon"):
        alloc.alphapruning(layers(), 0.5, -0.1)
    with pytest.raises(UserError, match="unknown metric"):
        alloc.alphapruning(layers(), 0.5, metric="nope")
    with pytest.raises(UserError, match="mapping"):
        alloc.alphapruning(layers(), 0.5, mapping="rows")
    with pytest.raises(UserError, match="ceiling"):
        alloc.uniform(layers(), 0.995)


@pytest.mark.slow
def test_real_model_allocation_at_70(real_analysis):
    """Default model, 70%: eps 0.2 matches the reference exactly; eps 0.3 is refitted below 0.99."""
    prunable = real_analysis.prunable
    a02 = alloc.alphapruning(prunable, 0.7, 0.2)
    assert a02.clipped == () and max(a02.raw) < 1.0
    assert a02.mean == pytest.approx(0.7, abs=1e-12)
    a03 = alloc.alphapruning(prunable, 0.7, 0.3)
    assert max(a03.raw) > 0.99  # what the reference code would prune (a whole block)
    assert max(a03.sparsities) <= 0.99 + 1e-15 and a03.clipped
    assert a03.mean == pytest.approx(0.7, abs=1e-9)
