"""Pruners on single matrices: requested sparsity, the right weights removed, N:M, SparseGPT."""

from __future__ import annotations

import pytest
import torch

from alphaprune import pruners
from alphaprune.errors import UserError


def _data(rows=48, cols=64, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    x = torch.randn(tokens, cols, generator=g) * torch.linspace(0.1, 3.0, cols)  # uneven feature scales
    return w, x


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.93])
def test_magnitude_count_and_smallest(sparsity):
    w, _ = _data()
    mask = pruners.magnitude_mask(w, sparsity)
    assert int(mask.sum()) == int(sparsity * w.numel()) + 1  # index int(s*n) and below; no ties here
    assert w[mask].abs().max() <= w[~mask].abs().min()


def test_magnitude_removes_every_tie_at_the_threshold_as_the_reference():
    w = torch.tensor([[1.0, 2.0, 1.0, 2.0, 1.0, 3.0]])
    assert pruners.magnitude_mask(w, 0.5).tolist() == [[True, True, True, True, True, False]]
    assert pruners.magnitude_mask(w, 2 / 6).tolist() == [[True, False, True, False, True, False]]
    thresh = torch.sort(w.abs().flatten())[0][int(w.numel() * 0.5)]  # the reference's lines
    assert torch.equal(pruners.magnitude_mask(w, 0.5), w.abs() <= thresh)
    assert not pruners.magnitude_mask(w, 0.0).any()


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_wanda_per_row_count_and_scores(sparsity):
    w, x = _data()
    col_sq = (x.double() ** 2).sum(0)
    mask = pruners.wanda_mask(w, col_sq, sparsity)
    per_row = int(w.shape[1] * sparsity)
    assert (mask.sum(1) == per_row).all()
    score = w.abs() * col_sq.float().sqrt()
    for r in range(w.shape[0]):  # every removed score is below every kept score in its row
        assert score[r][mask[r]].max() <= score[r][~mask[r]].min()


def test_wanda_differs_from_magnitude_when_features_differ():
    w, x = _data()
    col_sq = (x.double() ** 2).sum(0)
    assert not torch.equal(pruners.wanda_mask(w, col_sq, 0.5), pruners.magnitude_mask(w, 0.5))


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_patterns_every_group(pattern):
    n, m = pruners.parse_pattern(pattern)
    w, x = _data()
    col_sq = (x.double() ** 2).sum(0)
    hessian = x.T @ x / len(x)
    masks = {
        "magnitude": pruners.magnitude_mask(w, 0.0, (n, m)),
        "wanda": pruners.wanda_mask(w, col_sq, 0.0, (n, m)),
        "sparsegpt": pruners.sparsegpt(w, hessian, 0.0, (n, m)) == 0,
    }
    for name, mask in masks.items():
        groups = mask.reshape(w.shape[0], -1, m)
        assert (groups.sum(-1) == n).all(), name
    # magnitude: the N smallest of each group
    groups = w.abs().reshape(w.shape[0], -1, m)
    removed = masks["magnitude"].reshape(w.shape[0], -1, m)
    assert (groups.masked_fill(~removed, -1).amax(-1) <= groups.masked_fill(removed, 1e9).amin(-1)).all()


def test_pattern_errors():
    with pytest.raises(UserError, match="N:M"):
        pruners.parse_pattern("2-4")
    with pytest.raises(UserError, match="0 < N < M"):
        pruners.parse_pattern("4:2")
    with pytest.raises(UserError, match="does not divide"):
        pruners.check_pattern((2, 4), 30, "layer x")


def _sparsegpt_plain(w, hessian, sparsity, blocksize=128, percdamp=0.01):
    """SparseGPT column by column, written plainly from the paper's algorithm (unstructured),
    with the reference code's mask rule (scores <= the int(s * numel)-th smallest)."""
    w = w.clone()
    h = hessian.clone() + percdamp * torch.mean(torch.diag(hessian)) * torch.eye(len(hessian))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for i1 in range(0, w.shape[1], blocksize):
        i2 = min(i1 + blocksize, w.shape[1])
        w1, h1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, e1 = torch.zeros_like(w1), torch.zeros_like(w1)
        score = w1**2 / torch.diag(h1)[None, :] ** 2
        drop = score <= torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
        for i in range(i2 - i1):
            col = w1[:, i]
            q = torch.where(drop[:, i], torch.zeros_like(col), col)
            err = (col - q) / h1[i, i]
            w1[:, i:] -= err[:, None] * h1[i, i:][None, :]
            q1[:, i], e1[:, i] = q, err
        w[:, i1:i2] = q1
        w[:, i2:] -= e1 @ hinv[i1:i2, i2:]
    return w


def test_sparsegpt_matches_plain_algorithm_across_blocks():
    w, x = _data(rows=40, cols=200)  # two column blocks of 128 and 72
    hessian = x.T @ x / len(x)
    ours = pruners.sparsegpt(w, hessian, 0.6)
    plain = _sparsegpt_plain(w, hessian, 0.6)
    assert torch.equal(ours == 0, plain == 0)
    torch.testing.assert_close(ours, plain, atol=2e-5, rtol=1e-4)


def test_sparsegpt_reconstructs_better_than_masking():
    w, x = _data()
    hessian = x.T @ x / len(x)
    pruned = pruners.sparsegpt(w, hessian, 0.5)
    assert int((pruned == 0).sum()) == pytest.approx(0.5 * w.numel(), abs=2)
    col_sq = (x.double() ** 2).sum(0)
    wanda = w.masked_fill(pruners.wanda_mask(w, col_sq, 0.5), 0.0)
    magnitude = w.masked_fill(pruners.magnitude_mask(w, 0.5), 0.0)
    candidates = [("sgpt", pruned), ("wanda", wanda), ("mag", magnitude)]
    err = {name: torch.linalg.norm(x @ (w - v).T) for name, v in candidates}
    assert err["sgpt"] < err["wanda"] < err["mag"]


def test_sparsity_one_removes_every_weight():
    """A ratio of 1 (the ceiling at its top, a block pruned whole) is defined for every pruner."""
    w, x = _data()
    col_sq = (x.double() ** 2).sum(0)
    assert pruners.magnitude_mask(w, 1.0).all()
    assert pruners.wanda_mask(w, col_sq, 1.0).all()
    assert (pruners.sparsegpt(w, x.T @ x / len(x), 1.0) == 0).all()


def test_sparsegpt_dead_inputs_and_singular_hessian():
    w, x = _data(cols=32)
    x[:, 5] = 0.0  # an input that never fires
    x[:, 7] = x[:, 6]  # a rank-deficient Hessian
    hessian = x.T @ x / len(x)
    pruned = pruners.sparsegpt(w, hessian, 0.5)
    assert torch.isfinite(pruned).all()
    assert (pruned[:, 5] == 0).all()
