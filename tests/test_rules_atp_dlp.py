"""ATP and DLP allocation rules against plain loops of their formulas, their bounds and edge cases,
and DLP's block unimportance against scores computed by hand from hooks on a tiny LLaMA."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from alphaprune import allocation as alloc
from alphaprune.arch import MatrixRef, find_blocks, prunable_matrices
from alphaprune.calibrate import capture_block_inputs, feed
from alphaprune.errors import UserError
from alphaprune.prune import matrices_by_block
from alphaprune.rules.atp import atp, max_beta
from alphaprune.rules.dlp import block_unimportance, dlp, dlp_unimportance
from tests.conftest import tiny_llama

KINDS = (("q", 100), ("k", 25), ("v", 25), ("o", 100), ("gate", 300), ("up", 300), ("down", 300))


@dataclass(frozen=True)
class Mat:
    name: str
    block: int
    params: int


def mats(blocks: int = 6, scale: dict[int, int] | None = None) -> list[Mat]:
    """LLaMA-like blocks of 7 matrices; `scale` multiplies the parameter counts of some blocks."""
    scale = scale or {}
    return [Mat(f"b{b}.{k}", b, p * scale.get(b, 1)) for b in range(blocks) for k, p in KINDS]


def block_of(ms, a: alloc.Allocation) -> dict[int, float]:
    """The one ratio every matrix of a block has (asserting they agree)."""
    out: dict[int, float] = {}
    for m, s in zip(ms, a.sparsities, strict=True):
        assert out.setdefault(m.block, s) == s
    return out


def block_params(ms) -> dict[int, int]:
    out: dict[int, int] = {}
    for m in ms:
        out[m.block] = out.get(m.block, 0) + m.params
    return out


def check_invariants(a: alloc.Allocation, target: float, ceiling: float = alloc.DEFAULT_CEILING) -> None:
    assert abs(a.mean - target) <= 1e-12
    assert min(a.sparsities) >= 0.0 and max(a.sparsities) <= ceiling
    at_bound = {n for n, s in zip(a.names, a.sparsities, strict=True) if s in (0.0, ceiling)}
    outside = {n for n, r in zip(a.names, a.raw, strict=True) if not 0.0 <= r <= ceiling}
    assert outside <= set(a.clipped) <= at_bound


# ---- plain loops of the papers' formulas ------------------------------------------------------


def atp_loop(blocks: list[int], target: float, beta: float) -> dict[int, float]:
    """ATP as the paper writes it: s_l = S - beta (L - 1) / 2 + l beta."""
    n = len(blocks)
    return {b: target - beta * (n - 1) / 2 + i * beta for i, b in enumerate(blocks)}


def atp_weighted_loop(ms, target: float, beta: float) -> dict[int, float]:
    """ATP centred on the parameter-weighted mean block position."""
    sizes = block_params(ms)
    blocks = sorted(sizes)
    centre = sum(i * sizes[b] for i, b in enumerate(blocks)) / sum(sizes.values())
    return {b: target + beta * (i - centre) for i, b in enumerate(blocks)}


def dlp_loop(u: list[float], target: float, alpha: float, weights: list[float] | None = None) -> list[float]:
    """DLP as the released code computes it (mean(d) arithmetic over blocks, or weighted)."""
    total = sum(u)
    imp = [1 - x / total for x in u]
    lo, hi = min(imp), max(imp)
    d = [(i - lo) / (hi - lo) * 2 * alpha for i in imp]
    weights = weights or [1.0] * len(u)
    mean_d = sum(w * x for w, x in zip(weights, d, strict=True)) / sum(weights)
    return [target + mean_d - x for x in d]


# ---- ATP -------------------------------------------------------------------------------------


def test_max_beta():
    assert max_beta(0.7, 31) == pytest.approx(0.6 / 30)
    assert max_beta(0.3, 31) == pytest.approx(0.6 / 30)
    assert max_beta(0.5, 3) == pytest.approx(0.5)
    assert max_beta(0.7, 1) == 0.0


@pytest.mark.parametrize("target,share", [(0.5, 0.5), (0.7, 0.6), (0.3, 1.0), (0.6, 0.0)])
def test_atp_equals_paper_formula_on_equal_blocks(target, share):
    ms = mats(6)
    beta = share * max_beta(target, 6)
    a = atp(ms, target, beta)
    ref = atp_loop(list(range(6)), target, beta)
    for b, s in block_of(ms, a).items():
        assert s == pytest.approx(ref[b], abs=1e-15)
    check_invariants(a, target)
    assert a.clipped == () and a.settings == {"beta": beta}


def test_atp_on_tiny_llama():
    refs = prunable_matrices(tiny_llama(layers=4))
    beta = 0.8 * max_beta(0.7, 4)
    a = atp(refs, 0.7, beta)
    ref = atp_loop([0, 1, 2, 3], 0.7, beta)
    for r, s in zip(refs, a.sparsities, strict=True):
        assert s == pytest.approx(ref[r.block], abs=1e-15)
    assert a.block_ratios == sorted(a.block_ratios)  # deeper, sparser
    check_invariants(a, 0.7)


def test_atp_beta_zero_is_uniform():
    ms = mats(5, scale={1: 3})
    assert atp(ms, 0.6, 0.0).sparsities == alloc.uniform(ms, 0.6).sparsities


def test_atp_one_block():
    ms = mats(1)
    assert max_beta(0.7, 1) == 0.0
    assert set(atp(ms, 0.7, 0.0).sparsities) == {0.7}
    with pytest.raises(UserError, match="beta must be in \\[0, 0\\]"):
        atp(ms, 0.7, 0.01)


@pytest.mark.parametrize("blocks,target", [(5, 0.3), (8, 0.45), (12, 0.1)])
def test_atp_at_max_beta_low_target_reaches_zero_unclipped(blocks, target):
    """The first block lands on 0 exactly, not a rounding error below it that would count as clipped."""
    ms = mats(blocks)
    a = atp(ms, target, max_beta(target, blocks))
    ratios = block_of(ms, a)
    assert ratios[0] == 0.0 and ratios[blocks - 1] == pytest.approx(2 * target)
    assert a.clipped == ()
    check_invariants(a, target)


def test_atp_at_max_beta_high_target_clips_the_last_block():
    """At 70%, beta = max_beta puts the last block at 1 (the reference prunes it entirely)."""
    ms = mats(5)
    beta = max_beta(0.7, 5)
    a = atp(ms, 0.7, beta)
    ratios = block_of(ms, a)
    assert a.raw_block_ratios[4] == pytest.approx(1.0)
    assert ratios[4] == 0.99 and set(a.clipped) == {m.name for m in ms if m.block == 4}
    for b in range(3):  # a common shift keeps the step between unclipped blocks
        assert ratios[b + 1] - ratios[b] == pytest.approx(beta, abs=1e-12)
    check_invariants(a, 0.7)


def test_atp_clipped_at_ceiling():
    ms = mats(4)
    beta = max_beta(0.95, 4)  # raw 0.9, 0.933, 0.967, 1: the refit's shift lifts block 2 above 0.97 too
    a = atp(ms, 0.95, beta, ceiling=0.97)
    ratios = block_of(ms, a)
    assert set(a.clipped) == {m.name for m in ms if m.block >= 2}
    assert ratios[2] == ratios[3] == 0.97 and ratios[1] - ratios[0] == pytest.approx(beta, abs=1e-12)
    assert ratios[0] == pytest.approx(0.9 + 0.04 / 3, abs=1e-12)
    check_invariants(a, 0.95, 0.97)


def test_atp_unequal_blocks_weighted_centre():
    ms = mats(5, scale={0: 4, 3: 2})
    beta = 0.5 * max_beta(0.6, 5)
    a = atp(ms, 0.6, beta)
    ratios, paper = block_of(ms, a), atp_loop(list(range(5)), 0.6, beta)
    weighted = atp_weighted_loop(ms, 0.6, beta)
    shift = ratios[0] - paper[0]
    assert abs(shift) > 1e-3  # the paper's formula would miss the weighted target
    for b in range(5):
        assert ratios[b] == pytest.approx(weighted[b], abs=1e-15)
        assert ratios[b] - paper[b] == pytest.approx(shift, abs=1e-15)
    check_invariants(a, 0.6)


def test_atp_block_positions_not_indices():
    ms = [Mat(f"b{b}.w", b, 10) for b in (2, 5, 9)]
    a = atp(ms, 0.5, 0.1)
    assert a.sparsities == pytest.approx((0.4, 0.5, 0.6), abs=1e-15)


@pytest.mark.parametrize("beta", [-0.001, 0.21, float("nan")])
def test_atp_bad_beta(beta):
    with pytest.raises(UserError) as info:
        atp(mats(4), 0.7, beta)
    assert str(info.value).endswith("set --beta") and "**ATP step beta**" in info.value.render("app")


def test_atp_beta_message_and_shown_bound_is_legal():
    ms = [Mat(f"b{b}.w", b, 10) for b in range(30)]
    with pytest.raises(UserError) as info:
        atp(ms, 0.7, 0.05)
    assert str(info.value) == "ATP's beta must be in [0, 0.0206] for 70% over 30 blocks, got 0.05; set --beta"
    check_invariants(atp(ms, 0.7, 0.0206), 0.7)


# ---- DLP -------------------------------------------------------------------------------------


@pytest.mark.parametrize("target,alpha", [(0.7, 0.15), (0.5, 0.3), (0.3, 0.05)])
def test_dlp_equals_code_formula_on_equal_blocks(target, alpha):
    u = [0.8, 1.3, 0.5, 2.0, 1.1, 0.9]
    ms = mats(6)
    a = dlp(ms, target, u, alpha)
    ref = dlp_loop(u, target, alpha)
    for b, s in block_of(ms, a).items():
        assert s == pytest.approx(ref[b], abs=1e-15)
    assert max(ref) - min(ref) == pytest.approx(2 * alpha)
    check_invariants(a, target)
    assert a.clipped == () and a.settings["dlp_alpha"] == alpha


def test_dlp_on_tiny_llama():
    model = tiny_llama(layers=4)
    u = dlp_unimportance(model, _windows())
    refs = prunable_matrices(model)
    a = dlp(refs, 0.7, u)
    ref = dlp_loop(u, 0.7, 0.15)
    for r, s in zip(refs, a.sparsities, strict=True):
        assert s == pytest.approx(ref[r.block], abs=1e-15)
    assert int(np.argmax(a.block_ratios)) == int(np.argmax(u))  # least important, sparsest
    check_invariants(a, 0.7)


@pytest.mark.parametrize("u", [[1.5] * 5, [0.0] * 5])
def test_dlp_equal_unimportance_is_uniform(u):
    ms = mats(5, scale={2: 3})
    assert dlp(ms, 0.7, u, 0.2).sparsities == alloc.uniform(ms, 0.7).sparsities


def test_dlp_one_block_and_alpha_zero_are_uniform():
    assert set(dlp(mats(1), 0.6, [3.0]).sparsities) == {0.6}
    assert set(dlp(mats(4), 0.6, [1.0, 2.0, 3.0, 4.0], alpha=0.0).sparsities) == {0.6}


def test_dlp_unequal_blocks_weighted_mean():
    u = [0.8, 1.3, 0.5, 2.0, 1.1]
    ms = mats(5, scale={0: 4, 3: 2})
    a = dlp(ms, 0.6, u, 0.15)
    sizes = block_params(ms)
    ratios = block_of(ms, a)
    code = dlp_loop(u, 0.6, 0.15)
    weighted = dlp_loop(u, 0.6, 0.15, [float(sizes[b]) for b in range(5)])
    shift = ratios[0] - code[0]
    assert abs(shift) > 1e-3
    for b in range(5):
        assert ratios[b] == pytest.approx(weighted[b], abs=1e-15)
        assert ratios[b] - code[b] == pytest.approx(shift, abs=1e-15)
    check_invariants(a, 0.6)


def test_dlp_clipped_at_ceiling():
    ms = mats(4)
    u = [1.0, 1.0, 1.0, 3.0]  # block 3 least important: raw 0.95 + 0.3 (1 - 1/4)
    a = dlp(ms, 0.95, u, alpha=0.15, ceiling=0.97)
    assert a.raw_block_ratios[3] > 0.97
    assert set(a.clipped) == {m.name for m in ms if m.block == 3}
    assert all(s == 0.97 for m, s in zip(ms, a.sparsities, strict=True) if m.block == 3)
    check_invariants(a, 0.95, 0.97)


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf")])
def test_dlp_bad_alpha(alpha):
    with pytest.raises(UserError) as info:
        dlp(mats(3), 0.7, [1.0, 2.0, 3.0], alpha)
    assert str(info.value).endswith("set --dlp-alpha") and "**DLP range alpha**" in info.value.render("app")


def test_dlp_bad_unimportance():
    with pytest.raises(ValueError, match="3 unimportance values for 4 blocks"):
        dlp(mats(4), 0.7, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="finite"):
        dlp(mats(3), 0.7, [1.0, -2.0, 3.0])


# ---- DLP's block unimportance ----------------------------------------------------------------


def _windows(n: int = 4, seqlen: int = 16) -> torch.Tensor:
    return torch.randint(0, 300, (n, seqlen), generator=torch.Generator().manual_seed(0))


def plain_unimportance(model: nn.Module, windows: torch.Tensor, reduction: str) -> list[float]:
    """Every matrix's inputs caught by hooks in ordinary forward passes, then the Wanda scores
    |W_ij| sqrt(sum_windows sum_tokens x_tj^2 / windows) and their mean / lower median, in loops."""
    refs = prunable_matrices(model)
    rows: dict[str, list[list[float]]] = {r.name: [] for r in refs}  # token rows (in,) per matrix
    handles = [
        r.module.register_forward_hook(
            lambda m, a, o, n=r.name: rows[n].extend(a[0].reshape(-1, a[0].shape[-1]).tolist())
        )
        for r in refs
    ]
    with torch.no_grad():
        for w in windows:
            model(w[None], use_cache=False)
    for h in handles:
        h.remove()
    out = []
    for block in matrices_by_block(model):
        scores = []
        for ref in block:
            weight = ref.weight().tolist()
            norms = [math.sqrt(sum(x[j] ** 2 for x in rows[ref.name]) / len(windows)) for j in range(ref.shape[1])]
            scores += [abs(w) * norms[j] for row in weight for j, w in enumerate(row)]
        if reduction == "mean":
            out.append(math.fsum(scores) / len(scores))
        else:
            out.append(sorted(scores)[(len(scores) - 1) // 2])
    return out


@pytest.mark.parametrize("reduction", ["mean", "median"])
def test_dlp_unimportance_equals_hooks_by_hand(reduction):
    model, windows = tiny_llama(layers=4), _windows()
    got = dlp_unimportance(model, windows, reduction)
    assert got == pytest.approx(plain_unimportance(model, windows, reduction), rel=1e-5)


def test_block_unimportance_one_block_at_a_time():
    """The streamed path's convention: `run()` feeds the captured inputs through one block."""
    model, windows = tiny_llama(layers=2), _windows()
    inputs, kwargs = capture_block_inputs(model, windows)
    block = find_blocks(model).modules[0]
    refs = matrices_by_block(model)[0]
    both = [block_unimportance(refs, lambda: feed(block, inputs, kwargs), red) for red in ("mean", "median")]
    assert both == pytest.approx([dlp_unimportance(model, windows, red)[0] for red in ("mean", "median")])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_unimportance_by_hand(dtype):
    """Input norms (2, 1) and |W| (1, 2 / 3, 4) give scores 2, 2, 6, 4: mean 3.5; the lower
    median 2 (torch.median's convention), not the midpoint 3."""
    lin = nn.Linear(2, 2, bias=False).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
    ref = MatrixRef("lin", 0, "lin", lin, False, True)

    def run():  # two windows of one token: col_sq = ((4 + 4) / 2, (0 + 2) / 2)
        lin(torch.tensor([[[2.0, 0.0]], [[2.0, math.sqrt(2.0)]]], dtype=torch.float32).to(dtype))

    tol = 1e-6 if dtype == torch.float32 else 1e-2  # bfloat16 rounds sqrt(2)
    assert block_unimportance([ref], run, "mean") == pytest.approx(3.5, rel=tol)
    assert block_unimportance([ref], run, "median") == pytest.approx(2.0, rel=tol)


def test_bad_reduction():
    with pytest.raises(UserError, match="'mean'.*'median'"):
        dlp_unimportance(tiny_llama(layers=1), _windows(), "max")
