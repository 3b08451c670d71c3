"""RIA and DSnoT against plain-loop implementations, InputStats' moments, and both on a tiny LLaMA.

The loops below are written from the formulas (method.md section 8 and the authors' code
as read for alphaprune/ria.py and alphaprune/dsnot.py), row by row in Python floats.
"""

from __future__ import annotations

import math

import pytest
import torch

from alphaprune import calibrate
from alphaprune.dsnot import dsnot
from alphaprune.errors import UserError
from alphaprune.perplexity import perplexity
from alphaprune.prune import matrices_by_block
from alphaprune.pruners import wanda_mask
from alphaprune.ria import ria_mask, ria_score
from tests.conftest import tiny_llama


def _data(rows=24, cols=64, tokens=256, seed=0, tie=(5, 9)):
    """w (rows, cols), inputs x (tokens, cols) with uneven scales and nonzero means; columns
    tie[0] and tie[1] are equal in w and in x, so their scores tie exactly in every row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    x = torch.randn(tokens, cols, generator=g) * torch.linspace(0.2, 2.0, cols) + torch.randn(cols, generator=g)
    w[:, tie[1]] = w[:, tie[0]]
    x[:, tie[1]] = x[:, tie[0]]
    return w, x


def _stats(x):
    """(mean, population var, col_sq = sum of squares) of x (tokens, cols), float32."""
    return x.mean(0), x.var(0, unbiased=False), (x.double() ** 2).sum(0).float()


# ---------------------------------------------------------------- RIA


def _ria_loop(w, col_sq, sparsity, nm, a):
    """Removed positions by RIA's formula, one row (or group) at a time."""
    W, cs = w.tolist(), col_sq.tolist()
    rows, cols = len(W), len(W[0])
    col_sum = [sum(abs(W[i][j]) for i in range(rows)) for j in range(cols)]
    removed = [[False] * cols for _ in range(rows)]
    for i in range(rows):
        row_sum = sum(abs(v) for v in W[i])
        score = [(abs(W[i][j]) / col_sum[j] + abs(W[i][j]) / row_sum) * math.sqrt(cs[j]) ** a for j in range(cols)]
        groups = [range(cols)] if nm is None else [range(k, k + nm[1]) for k in range(0, cols, nm[1])]
        for group in groups:
            count = int(cols * sparsity) if nm is None else nm[0]
            for j in sorted(group, key=lambda j: (score[j], j))[:count]:  # lowest, ties: lower column first
                removed[i][j] = True
    return torch.tensor(removed)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("a", [0.5, 1.0])
def test_ria_matches_the_loop_unstructured(sparsity, a):
    w, x = _data()
    col_sq = _stats(x)[2]
    mask = ria_mask(w, col_sq, sparsity, a=a, per_row=True)
    assert torch.equal(mask, _ria_loop(w, col_sq, sparsity, None, a))
    assert (mask.sum(1) == int(w.shape[1] * sparsity)).all()


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_ria_matches_the_loop_nm(nm):
    w, x = _data()
    col_sq = _stats(x)[2]
    mask = ria_mask(w, col_sq, 0.0, nm=nm)
    assert torch.equal(mask, _ria_loop(w, col_sq, 0.0, nm, 0.5))
    assert (mask.reshape(w.shape[0], -1, nm[1]).sum(-1) == nm[0]).all()


def test_ria_ties_and_scale():
    w, x = _data()
    col_sq = _stats(x)[2]
    w[3] = 1.0  # a row of equal weights: only the column shares and the activations differ
    mask = ria_mask(w, col_sq, 0.5, per_row=True)
    assert torch.equal(mask, _ria_loop(w, col_sq, 0.5, None, 0.5))
    # the tied columns 5 and 9: where exactly one of them goes, it is the lower column
    one = mask[:, 5] ^ mask[:, 9]
    assert one.any() and mask[one, 5].all()
    # col_sq at another scale (InputStats divides by the windows): the same mask
    assert torch.equal(ria_mask(w, col_sq / 7.0, 0.5, per_row=True), mask)


def test_ria_differs_from_wanda_and_per_matrix_option():
    w, x = _data()
    col_sq = _stats(x)[2]
    w[0] *= 10.0  # a loud row: Wanda's per-row ranking is unchanged, RIA's row share is
    mask = ria_mask(w, col_sq, 0.5, per_row=True)
    assert not torch.equal(mask, wanda_mask(w, col_sq, 0.5))
    flat = ria_mask(w, col_sq, 0.5)  # the authors' default: one threshold
    score = ria_score(w, col_sq)
    assert torch.equal(flat, score <= torch.sort(score.flatten())[0][int(w.numel() * 0.5)])  # their lines
    assert not torch.equal(flat.sum(1), mask.sum(1))


def _ria_loop_matrix(w, col_sq, sparsity, a):
    """Removed positions with one threshold over the whole matrix (the authors' prune_ria): every
    score in Python floats, sorted, the value at int(numel * sparsity) the threshold, `<=` removed."""
    W, cs = w.tolist(), col_sq.tolist()
    rows, cols = len(W), len(W[0])
    col_sum = [sum(abs(W[i][j]) for i in range(rows)) for j in range(cols)]
    row_sum = [sum(abs(v) for v in W[i]) for i in range(rows)]
    score = [
        [(abs(W[i][j]) / col_sum[j] + abs(W[i][j]) / row_sum[i]) * math.sqrt(cs[j]) ** a for j in range(cols)]
        for i in range(rows)
    ]
    threshold = sorted(v for row in score for v in row)[int(rows * cols * sparsity)]
    return torch.tensor([[v <= threshold for v in row] for row in score])


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7, 0.99])
@pytest.mark.parametrize("a", [0.5, 1.0])
def test_ria_matrix_scope_matches_the_loop(sparsity, a):
    """The spec's default scope ("matrix") through the registry, against the loop."""
    from alphaprune import registry
    from alphaprune.calibrate import InputStats

    w, x = _data()
    stats = InputStats(w.shape[1], hessian=False, device=torch.device("cpu"))
    stats.add(x)
    params = {**registry.defaults(), "ria_a": a}
    mask = registry.pruner("ria").mask(w, stats, sparsity, None, params)
    assert torch.equal(mask, _ria_loop_matrix(w, stats.col_sq, sparsity, a))
    assert mask.sum() == int(w.numel() * sparsity) + 1  # `<=` the threshold: that one too (no ties here)
    assert not (mask.sum(1) == mask.sum(1)[0]).all()  # rows lose different counts: not Wanda's rows


def test_ria_zero_column_is_finite():
    w, x = _data()
    w[:, 7] = 0.0
    mask = ria_mask(w, _stats(x)[2], 0.5, per_row=True)
    assert mask[:, 7].all()  # zero weights score 0: the first to go, no NaN


# ---------------------------------------------------------------- DSnoT


def _sign(v):
    return (v > 0) - (v < 0)


def _dsnot_row(w, removed, mean, var, col_sq, cycles, threshold, nm, same_sign):
    """DSnoT on one row in Python floats: w, mean, var, col_sq lists; removed a set of columns."""
    cols = range(len(w))
    c = [w[j] * mean[j] for j in cols]
    grow_key = [c[j] / var[j] for j in cols]
    wanda = [abs(w[j]) * math.sqrt(col_sq[j]) for j in cols]
    start, removed = set(removed), set(removed)
    err = sum(c[j] for j in removed)
    sign0 = _sign(err)
    grow_up = sorted((j for j in start if grow_key[j] > 0), key=lambda j: (-grow_key[j], -j))
    grow_down = sorted((j for j in start if grow_key[j] < 0), key=lambda j: (grow_key[j], j))
    kept = [j for j in cols if j not in start]
    prune_up = sorted((j for j in kept if c[j] < 0), key=lambda j: (wanda[j], j))
    prune_down = sorted((j for j in kept if c[j] > 0), key=lambda j: (wanda[j], j))
    for _ in range(cycles):
        if abs(err) <= threshold:
            break
        grows = grow_up if err > 0 else grow_down
        if not grows:
            break
        g = grows[0]
        if nm is None:
            prunes = prune_up if err > 0 else prune_down
        else:  # the weight kept from the start, still kept, of lowest Wanda score in g's group
            first = g - g % nm[1]
            prunes = sorted((j for j in range(first, first + nm[1]) if j in kept and j not in removed),
                            key=lambda j: (wanda[j], j))  # fmt: skip
        if not prunes:
            break
        p = prunes[0]
        after = err + c[p] - c[g]
        if same_sign and _sign(after) != sign0:
            break
        removed.discard(g)
        removed.add(p)
        err = after
        grows.pop(0)
        if nm is None:
            prunes.pop(0)
    return removed, err


def _dsnot_loop(w, mask, mean, var, col_sq, cycles=50, threshold=0.1, nm=None, same_sign=None):
    same_sign = nm is not None if same_sign is None else same_sign
    out = torch.zeros_like(mask)
    errors = []
    args = (mean.tolist(), var.tolist(), col_sq.tolist(), cycles, threshold, nm, same_sign)
    for i in range(w.shape[0]):
        removed, err = _dsnot_row(w[i].tolist(), mask[i].nonzero()[:, 0].tolist(), *args)
        out[i, sorted(removed)] = True
        errors.append(err)
    return out, errors


def _row_errors(w, mask, mean):
    """DSnoT's reconstruction error of every row: sum over its removed weights of W_ij mean_j."""
    return (w.double() * mean.double() * mask).sum(1)


CASES = [  # sparsity, nm, threshold (on the scale of the means: ~1 here), same_sign, cycles
    (0.5, None, 0.1, None, 50),
    (0.7, None, 0.05, None, 50),
    (0.5, None, 0.0, True, 50),
    (0.7, None, 0.3, True, 8),
    (0.3, None, 0.0, False, 200),  # long enough to run out of candidates in some rows
    (0.0, (2, 4), 0.1, None, 50),
    (0.0, (4, 8), 0.0, False, 50),
]


@pytest.mark.parametrize("sparsity,nm,threshold,same_sign,cycles", CASES)
def test_dsnot_matches_the_loop(sparsity, nm, threshold, same_sign, cycles):
    w, x = _data()
    mean, var, col_sq = _stats(x)
    start = wanda_mask(w, col_sq, sparsity, nm)
    mask = dsnot(w, start, mean, var, col_sq, cycles=cycles, threshold=threshold, nm=nm, same_sign=same_sign)
    expected, _ = _dsnot_loop(w, start, mean, var, col_sq, cycles, threshold, nm, same_sign)
    assert torch.equal(mask, expected)
    assert (mask != start).any(1).float().mean() > 0.3  # many rows changed: the test can fail
    assert torch.equal(mask.sum(1), start.sum(1))  # every row keeps its count
    if nm is not None:
        assert (mask.reshape(w.shape[0], -1, nm[1]).sum(-1) == nm[0]).all()


def test_dsnot_in_chunks_and_on_any_start(monkeypatch):
    """Rows in several chunks give the same mask; a start with uneven row counts keeps them."""
    import alphaprune.dsnot as module

    w, x = _data(rows=40)
    mean, var, col_sq = _stats(x)
    start = torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) < 0.6  # uneven counts
    whole = dsnot(w, start, mean, var, col_sq, threshold=0.0)
    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 7 * w.shape[1])
    assert torch.equal(dsnot(w, start, mean, var, col_sq, threshold=0.0), whole)
    assert torch.equal(whole, _dsnot_loop(w, start, mean, var, col_sq, threshold=0.0)[0])
    assert torch.equal(whole.sum(1), start.sum(1))


def test_dsnot_zero_cycles_and_error_not_worse():
    w, x = _data()
    mean, var, col_sq = _stats(x)
    start = wanda_mask(w, col_sq, 0.6)
    assert torch.equal(dsnot(w, start, mean, var, col_sq, cycles=0), start)
    before = _row_errors(w, start, mean).abs()
    strict = dsnot(w, start, mean, var, col_sq, threshold=0.0, same_sign=True)
    after = _row_errors(w, strict, mean).abs()
    assert (after <= before + 1e-5).all() and (after < before).float().mean() > 0.3
    # the released code's default (no sign check) may overshoot in a row, but not on average
    loose = _row_errors(w, dsnot(w, start, mean, var, col_sq), mean).abs()
    assert loose.mean() < before.mean()


def test_dsnot_constant_feature_and_bad_inputs():
    w, x = _data()
    x[:, 3] = 0.0  # a dead input: variance 0, mean 0; no NaN anywhere
    mean, var, col_sq = _stats(x)
    start = wanda_mask(w, col_sq, 0.5)
    mask = dsnot(w, start, mean, var, col_sq, threshold=0.0)
    assert torch.equal(mask.sum(1), start.sum(1))
    assert torch.equal(mask[:, 3], start[:, 3])  # never a candidate: it changes no error
    with pytest.raises(UserError, match="2 removed in every group of 4"):
        dsnot(w, wanda_mask(w, col_sq, 0.5), mean, var, col_sq, nm=(2, 4))
    with pytest.raises(UserError, match="cycles >= 0"):
        dsnot(w, start, mean, var, col_sq, cycles=-1)
    with pytest.raises(UserError, match="one value per input"):
        dsnot(w, start, mean[:-1], var, col_sq)


# ---------------------------------------------------------------- InputStats' moments


def test_input_stats_moments_against_captured_inputs():
    model = tiny_llama(layers=2, hidden=64)
    windows = torch.randint(0, 300, (3, 16), generator=torch.Generator().manual_seed(0))
    blocks = matrices_by_block(model)
    checked = []

    def on_block(index, block, run):
        captured = {ref.name: [] for ref in blocks[index]}
        hooks = [ref.module.register_forward_hook(lambda m, a, o, k=ref.name: captured[k].append(a[0].detach()))
                 for ref in blocks[index]]  # fmt: skip
        try:
            stats = calibrate.collect(blocks[index], run, moments=True)
        finally:
            for h in hooks:
                h.remove()
        plain = calibrate.collect(blocks[index], run)
        for ref in blocks[index]:
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in captured[ref.name]]).double()  # (tokens, in)
            s = stats[ref.name]
            assert s.tokens == x.shape[0] == 3 * 16 and s.samples == 3
            assert torch.allclose(s.mean.double(), x.mean(0), rtol=1e-5, atol=1e-6)
            assert torch.allclose(s.var.double(), x.var(0, unbiased=False), rtol=1e-5, atol=1e-7)
            assert torch.allclose(s.window_sum.double(), x.sum(0) / 3, rtol=1e-5, atol=1e-6)
            per_window = x.reshape(3, 16, -1).var(1, unbiased=False).mean(0)  # DSnoT's code: windows' own, averaged
            assert torch.allclose(s.window_var.double(), per_window, rtol=1e-5, atol=1e-7)
            assert not torch.allclose(s.window_var.double(), s.var.double(), rtol=1e-3)  # the spread of the means
            assert torch.equal(s.col_sq, plain[ref.name].col_sq)  # unchanged for Wanda's users
            checked.append(ref.name)
        with pytest.raises(ValueError, match="moments=True"):
            _ = plain[blocks[index][0].name].mean

    calibrate.sequential(model, windows, on_block)
    assert len(checked) == sum(len(b) for b in blocks)


def test_dsnot_refiner_orders_growth_by_the_windows_variance_as_the_code():
    # windows whose means differ: the all-token variance adds that spread, the code's does not
    from alphaprune import registry

    w, _ = _data(rows=32, cols=96)
    g = torch.Generator().manual_seed(1)
    windows = [torch.randn(1, 64, 96, generator=g) * 2 + torch.randn(96, generator=g) for _ in range(4)]
    stats = calibrate.InputStats(96, False, torch.device("cpu"), moments=True)
    for x in windows:
        stats.add(x)
    code_var = torch.stack([x[0].var(0, unbiased=False) for x in windows]).mean(0)  # equal token counts
    start = wanda_mask(w, stats.col_sq, 0.6, None)
    params = {**registry.defaults(), "dsnot_candidates": "strict"}  # the variance alone (the lists: below)
    assert params["dsnot_variance"] == "windows"
    refined = registry.refiner("dsnot").refine(w, start, stats, None, params)
    expected, _ = _dsnot_loop(w, start, stats.window_sum, code_var, stats.col_sq, threshold=0.1)
    assert torch.equal(refined, expected)
    tokens = registry.refiner("dsnot").refine(w, start, stats, None, {**params, "dsnot_variance": "tokens"})
    assert torch.equal(tokens, _dsnot_loop(w, start, stats.window_sum, stats.var, stats.col_sq, threshold=0.1)[0])
    assert not torch.equal(tokens, refined)  # the choice matters here: the test can fail


def _released_row(w, removed, mean, var, col_sq, cycles, threshold):
    """One row as the released code reads its lists (unstructured): the grow list is every
    column by c_j / var_j (kept ones at 0), read from the end while err > 0 and from the start
    otherwise; the prune list is the kept weights by rising Wanda score, those with c_j < 0 in
    that order, then those with c_j > 0 reversed, read from the start while err > 0 and from
    the end otherwise. Nothing checks what is read."""
    cols = range(len(w))
    c = [w[j] * mean[j] for j in cols]
    wanda = [abs(w[j]) * math.sqrt(col_sq[j]) for j in cols]
    start, removed = set(removed), set(removed)
    grow = sorted(cols, key=lambda j: (c[j] / var[j] if j in start else 0.0, j))
    kept = sorted((j for j in cols if j not in start), key=lambda j: (wanda[j], j))
    prune = [j for j in kept if c[j] < 0] + [j for j in kept if c[j] > 0][::-1]
    g_lo, g_hi, p_lo, p_hi = 0, len(grow) - 1, 0, len(prune) - 1
    err = sum(c[j] for j in start)
    for _ in range(cycles):
        if abs(err) <= threshold or g_lo > g_hi or p_lo > p_hi:
            break
        if err > 0:
            g, g_hi, p, p_lo = grow[g_hi], g_hi - 1, prune[p_lo], p_lo + 1
        else:
            g, g_lo, p, p_hi = grow[g_lo], g_lo + 1, prune[p_hi], p_hi - 1
        removed.add(p)
        removed.discard(g)  # the code's order: a column both pruned and grown stays
        err += c[p] - c[g]
    return removed


@pytest.mark.parametrize("sparsity,cycles", [(0.7, 28), (0.5, 45), (0.3, 60)])  # fewer than the kept weights
def test_dsnot_read_on_matches_the_released_lists(sparsity, cycles):
    from alphaprune import registry

    # weights mostly positive and inputs of positive mean: few kept weights take err down, so
    # rows run past them, as SmolLM2's rows do (a fifth of a row's kept weights, or fewer)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 96, generator=g) + 0.8
    x = torch.randn(256, 96, generator=g) * torch.linspace(0.2, 2.0, 96) + 1.5
    mean, var, col_sq = _stats(x)
    start = wanda_mask(w, col_sq, sparsity, None)
    got = dsnot(w, start, mean, var, col_sq, cycles=cycles, threshold=0.1, read_on=True)
    expected = torch.zeros_like(start)
    for i in range(w.shape[0]):
        removed = _released_row(w[i].tolist(), start[i].nonzero()[:, 0].tolist(), mean.tolist(), var.tolist(),
                                col_sq.tolist(), cycles, 0.1)  # fmt: skip
        expected[i, sorted(removed)] = True
    assert torch.equal(got, expected)
    strict = dsnot(w, start, mean, var, col_sq, cycles=cycles, threshold=0.1)
    assert not torch.equal(got, strict)  # rows ran past their opposite-sign candidates: the test can fail
    assert registry.param("dsnot_candidates").default == "released"


# ---------------------------------------------------------------- on a tiny LLaMA


@pytest.mark.parametrize("method", ["ria", "wanda+dsnot"])
def test_prune_tiny_llama(method):
    torch.manual_seed(0)
    model = tiny_llama(layers=2, hidden=64)
    windows = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(1))
    blocks = matrices_by_block(model)
    sparsity = 0.5

    def on_block(index, block, run):
        stats = calibrate.collect(blocks[index], run, moments=method != "ria")
        for ref in blocks[index]:
            w, s = ref.weight(), stats[ref.name]
            if method == "ria":
                mask = ria_mask(w, s.col_sq, sparsity, per_row=True)
            else:
                mask = dsnot(w, wanda_mask(w, s.col_sq, sparsity), s.window_sum, s.var, s.col_sq)
            w[mask] = 0

    with torch.no_grad():
        calibrate.sequential(model, windows, on_block)
    for ref in (r for block in blocks for r in block):
        zeros = (ref.weight() == 0).sum(1)
        assert (zeros == int(ref.shape[1] * sparsity)).all(), ref.name
    evaluation = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(2))
    assert math.isfinite(perplexity(model, evaluation))


def _pruned(pruner: str, refine: str, ratio_of, nm=None, hidden: int = 64, layers: int = 2, **params):
    """A tiny LLaMA pruned in place by prune_model with the registry's defaults (and `params`)."""
    from alphaprune import registry
    from alphaprune.prune import prune_model

    model = tiny_llama(layers=layers, hidden=hidden)
    blocks = matrices_by_block(model)
    ratios = {ref.name: ratio_of(index) for index, block in enumerate(blocks) for ref in block}
    windows = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        prune_model(model, ratios, pruner, nm, windows, params={**registry.defaults(), **params}, refine=refine)
    evaluation = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(2))
    assert math.isfinite(perplexity(model, evaluation))
    return blocks


@pytest.mark.parametrize("pruner,refine", [("ria", "none"), ("wanda", "dsnot"), ("ria", "dsnot")])
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_patterns_through_prune_model(pruner, refine, nm):
    """RIA and DSnoT (both papers give N:M results) keep exactly N zeros in every group of M."""
    blocks = _pruned(pruner, refine, lambda _: nm[0] / nm[1], nm)
    for ref in (r for block in blocks for r in block):
        groups = (ref.weight() == 0).reshape(ref.shape[0], -1, nm[1]).sum(-1)
        assert (groups == nm[0]).all(), ref.name


@pytest.mark.parametrize("pruner,refine", [("ria", "none"), ("wanda", "dsnot")])
def test_ratios_at_the_ceiling_and_a_block_pruned_whole(pruner, refine):
    """Block 0 at 1.0 (a ceiling of 1 lets a rule prune a block whole), block 1 at 0.99, on
    the smallest matrices the tiny model has (hidden 16: k / v are 8 x 16)."""
    strict = {"dsnot_candidates": "strict"}  # the released reading may leave a row another count (dsnot.py)
    blocks = _pruned(pruner, refine, lambda index: 1.0 if index == 0 else 0.99, hidden=16, **strict)
    for ref in blocks[0]:
        assert (ref.weight() == 0).all(), ref.name
    for ref in blocks[1]:
        zeros = int((ref.weight() == 0).sum())
        rows, cols = ref.shape
        if pruner == "ria":  # one threshold over the matrix, `<=` it: at least that many, never all
            assert int(rows * cols * 0.99) <= zeros < rows * cols, ref.name
        else:  # Wanda's rows, and strict DSnoT swaps one for one
            assert zeros == rows * int(cols * 0.99), ref.name


def _saliency_loop(w, hessian, sparsity, percdamp=0.01):
    """SparseGPT's saliency w^2 / [H^-1]_jj^2 in float64 (H damped, the inverse's upper Cholesky
    factor's diagonal), then the lowest int(in * s) of each row: DSnoT's initial "sparsegpt" mask."""
    h = hessian.double().clone()
    h += percdamp * torch.mean(torch.diag(h)) * torch.eye(len(h), dtype=h.dtype)
    upper = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    d = torch.diag(upper).tolist()
    W = w.double().tolist()
    removed = []
    for row in W:
        score = [row[j] ** 2 / d[j] ** 2 for j in range(len(row))]
        lowest = set(sorted(range(len(row)), key=lambda j: (score[j], j))[: int(len(row) * sparsity)])
        removed.append([j in lowest for j in range(len(row))])
    return torch.tensor(removed)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_sparsegpt_saliency_mask_matches_the_loop(sparsity):
    from alphaprune.pruners import sparsegpt_saliency_mask

    w, x = _data(tie=(5, 5))
    hessian = x.t() @ x * (2 / x.shape[0])  # (in, in)
    assert torch.equal(sparsegpt_saliency_mask(w, hessian, sparsity), _saliency_loop(w, hessian, sparsity))
    nm = sparsegpt_saliency_mask(w, hessian, 0.5, (2, 4))
    assert (nm.reshape(w.shape[0], -1, 4).sum(-1) == 2).all()


def test_dsnot_after_sparsegpt_refines_its_saliency_mask_without_updates():
    """DSnoT's code's "sparsegpt" initial method: the saliency mask refined, the kept weights as
    they were; SparseGPT alone still updates them."""
    strict = {"dsnot_candidates": "strict", "dsnot_scope": "all"}
    dense = [ref.weight().clone() for block in matrices_by_block(tiny_llama(layers=2)) for ref in block]
    refined = _pruned("sparsegpt", "dsnot", lambda _: 0.5, **strict)
    alone = _pruned("sparsegpt", "none", lambda _: 0.5)
    start = _pruned("sparsegpt", "dsnot", lambda _: 0.5, dsnot_cycles=0, **strict)  # the saliency mask itself
    swapped = [not torch.equal(a.weight() == 0, b.weight() == 0) for a, b in
               zip((r for b in refined for r in b), (r for b in start for r in b), strict=True)]  # fmt: skip
    assert any(swapped)  # DSnoT moved some of the saliency mask's weights
    for before, ref, other in zip(dense, (r for b in refined for r in b), (r for b in alone for r in b), strict=True):
        w, kept = ref.weight(), ref.weight() != 0
        assert torch.equal(w[kept], before[kept]), ref.name  # no error spread onto the kept weights
        assert ((~kept).sum(1) == int(ref.shape[1] * 0.5)).all(), ref.name
        assert not torch.equal(other.weight()[other.weight() != 0], before[other.weight() != 0]), ref.name


def test_dsnot_after_sparsegpt_is_a_valid_setting_and_magnitude_too():
    from alphaprune.config import PruneConfig

    PruneConfig(pruner="sparsegpt", refine="dsnot").validate()
    PruneConfig(pruner="magnitude", refine="dsnot").validate()


def test_dsnot_after_sparsegpt_starts_from_the_saliency_and_leaves_the_mlp_to_sparsegpt():
    """The start mask is SparseGPT's saliency, not Wanda's; at the default scope (attention) the
    MLP matrices are pruned by SparseGPT alone, error updates and all."""
    start = {"dsnot_cycles": 0, "dsnot_scope": "all"}
    saliency = [r.weight() == 0 for b in _pruned("sparsegpt", "dsnot", lambda _: 0.5, **start) for r in b]
    wanda = [r.weight() == 0 for b in _pruned("wanda", "dsnot", lambda _: 0.5, **start) for r in b]
    assert any(not torch.equal(a, b) for a, b in zip(saliency, wanda, strict=True))
    dense = {r.name: r.weight().clone() for b in matrices_by_block(tiny_llama(layers=2)) for r in b}
    for ref in (r for b in _pruned("sparsegpt", "dsnot", lambda _: 0.5) for r in b):
        kept = ref.weight() != 0
        untouched = torch.equal(ref.weight()[kept], dense[ref.name][kept])
        assert untouched == ("self_attn" in ref.name), ref.name  # attention refined as it was; MLP updated
