"""Calibration passes, whole-model pruning and the run pipeline, on tiny models and the real one."""

from __future__ import annotations

import copy

import pytest
import torch

from alphaprune import pipeline, tune
from alphaprune.arch import find_blocks, prunable_matrices
from alphaprune.calibrate import collect, sequential
from alphaprune.errors import UserError
from alphaprune.pipeline import PruneConfig, run_prune
from alphaprune.prune import measured_sparsity, owl_outlier_ratios, prune_model
from alphaprune.pruners import magnitude_mask
from tests.conftest import tiny_llama, tiny_loaded

THREADS = torch.get_num_threads()

CORPUS = "The quick brown fox jumps over the lazy dog. " * 40 + "Pack my box with five dozen liquor jugs.\n" * 40


def _windows(n=6, seqlen=32, seed=0):
    return torch.randint(0, 300, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _block_outputs(model, windows, index):
    """Outputs of block `index` in an ordinary forward pass."""
    seen = []
    block = find_blocks(model).modules[index]
    handle = block.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        for w in windows:
            model(w[None], use_cache=False)
    handle.remove()
    return seen


def test_sequential_pass_reproduces_the_forward_pass():
    model = tiny_llama(layers=3)
    windows = _windows()
    last = []

    def visit(index, block, run):
        if index == 2:
            handle = block.register_forward_hook(lambda m, a, out: last.append(out))
            run()
            handle.remove()

    sequential(model, windows, visit)
    expected = _block_outputs(model, windows, 2)
    for got, want in zip(last, expected, strict=True):
        torch.testing.assert_close(got[0] if isinstance(got, tuple) else got, want)


def test_later_blocks_are_calibrated_on_pruned_earlier_blocks():
    model = tiny_llama(layers=2)
    windows = _windows()
    refs = prunable_matrices(model)
    q1 = next(r for r in refs if r.block == 1 and r.kind.endswith("q_proj"))
    seen = {}

    def visit(index, block, run):
        block_refs = [r for r in refs if r.block == index]
        stats = collect(block_refs, run)
        if index == 0:  # prune block 0 by magnitude before its outputs move on
            for r in block_refs:
                r.weight()[magnitude_mask(r.weight(), 0.8)] = 0
        else:
            seen["q1"] = stats[q1.name].col_sq.clone()

    dense = copy.deepcopy(model)
    sequential(model, windows, visit)
    # The same statistic from an ordinary forward pass of the block-0-pruned model ...
    pruned_stats = collect([q1], lambda: [model(w[None], use_cache=False) for w in windows])
    torch.testing.assert_close(seen["q1"], pruned_stats[q1.name].col_sq)
    # ... and not the dense model's.
    dense_q1 = next(r for r in prunable_matrices(dense) if r.name == q1.name)
    dense_stats = collect([dense_q1], lambda: [dense(w[None], use_cache=False) for w in windows])
    assert not torch.allclose(seen["q1"], dense_stats[q1.name].col_sq)


@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
def test_prune_model_reaches_every_ratio(pruner):
    model = tiny_llama(layers=2)
    refs = prunable_matrices(model)
    ratios = {r.name: 0.3 + 0.1 * (i % 5) for i, r in enumerate(refs)}
    prune_model(model, ratios, pruner, windows=_windows())
    _, per_matrix = measured_sparsity(model)
    for ref in refs:  # magnitude: int(s*n) + 1 (no ties in random weights); wanda: int(s*in) per row
        rows, cols = ref.shape
        expected = {"magnitude": int(ratios[ref.name] * rows * cols) + 1, "wanda": rows * int(ratios[ref.name] * cols)}
        zeros = round(per_matrix[ref.name] * rows * cols)
        if pruner in expected:
            assert zeros == expected[pruner], ref.name
        else:  # int(s * block numel) per 128-column block, plus ties at the threshold (none in float data)
            assert abs(zeros - ratios[ref.name] * rows * cols) <= cols // 128 + 1, ref.name


def test_owl_outlier_ratios_one_per_block():
    ratios = owl_outlier_ratios(tiny_llama(layers=3), _windows(), m=3.0)
    assert len(ratios) == 3 and all(0.0 <= r <= 100.0 for r in ratios)


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return str(path)


def _config(corpus, **kw):
    base = dict(calib=corpus, eval=corpus, calib_samples=4, seqlen=32, eval_windows=4, sparsity=0.5)
    return PruneConfig(**{**base, **kw})


@pytest.mark.parametrize("pruner", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("allocation", ["uniform", "alphapruning", "owl"])
def test_run_prune_tiny(corpus, pruner, allocation):
    loaded = tiny_loaded(layers=2)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    result = run_prune(loaded, _config(corpus, pruner=pruner, allocation=allocation, epsilon=0.2))
    assert result.actual_sparsity == pytest.approx(0.5, abs=0.01)
    assert result.allocation.mean == pytest.approx(0.5, abs=1e-9)
    assert result.ppl_after > 0 and result.ppl_before > 0
    for k, v in loaded.model.state_dict().items():  # the user's dense model is untouched
        assert torch.equal(v, before[k]), k
    doc = result.to_dict()
    assert set(doc) >= {"ppl_before", "ppl_after", "actual_sparsity", "ratios", "block_ratios", "seconds"}


def test_run_prune_nm_and_auto_epsilon(corpus):
    loaded = tiny_loaded(layers=2)
    nm = run_prune(loaded, _config(corpus, pruner="wanda", pattern="2:4"))
    assert nm.actual_sparsity == pytest.approx(0.5, abs=1e-9)
    auto = run_prune(loaded, _config(corpus, pruner="magnitude", allocation="alphapruning", epsilon=None))
    tried = dict(auto.epsilon_search)
    assert list(tried)[:5] == [0.1, 0.2, 0.3, 0.4, 0.5]  # the grid, then midpoints around its best
    assert len(tried) <= 10 and auto.config.epsilon == tune.choose(auto.search).values["epsilon"]


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(sparsity=1.0), "inside"),
        (dict(epsilon=-0.1), "epsilon"),
        (dict(pattern="2:4", allocation="alphapruning"), "N:M"),
        (dict(pattern="2:4", sparsity=0.7), "2:4 means sparsity 0.5"),
        (dict(pattern="32:64", sparsity=0.5), "does not divide"),  # the MLP's 160 inputs
        (dict(pattern="1:3", sparsity=1 / 3), "must divide 128"),
        (dict(epsilon=float("inf"), allocation="alphapruning"), "epsilon must be a number in"),
        (dict(metric="name", allocation="alphapruning"), "unknown metric"),
        (dict(batch_size=0), "batch size"),
        (dict(seqlen=4096), "context"),
        (dict(calib="no-such-source"), "neither"),
        (dict(pruner="obs"), "pruner"),
    ],
)
def test_bad_settings_are_user_errors(corpus, kw, match, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the dense perplexity ran before the settings were checked")

    monkeypatch.setattr(pipeline, "dense_perplexity", no_work)  # every check comes first
    with pytest.raises(UserError, match=match):
        run_prune(tiny_loaded(layers=1), _config(corpus, **kw))


def test_auto_epsilon_never_scores_on_evaluated_text(corpus, tmp_path):
    auto = dict(pruner="magnitude", allocation="alphapruning", epsilon=None)
    with pytest.raises(UserError, match="--eval-windows 96 or fewer"):  # 3440 tokens: held-out tail from 3096
        run_prune(tiny_loaded(layers=1), _config(corpus, eval_windows=None, **auto))
    short = tmp_path / "short.txt"
    short.write_text(CORPUS[:1000])  # a held-out tail of 100 tokens
    with pytest.raises(UserError, match="last 10% of the calibration text"):
        run_prune(tiny_loaded(layers=1), _config(corpus, calib=str(short), seqlen=128, **auto))


def test_more_windows_than_the_text_holds_are_recorded_as_measured(corpus):
    result = run_prune(tiny_loaded(layers=1), _config(corpus, pruner="magnitude", eval_windows=10**6))
    settings = result.record().settings
    assert settings["eval_windows"] == 10**6  # what was asked, so the same request finds this run again
    assert settings["eval_windows_measured"] == len(CORPUS) // 32


def test_a_run_records_what_moves_its_rounding(corpus):
    """Thread count, attention kernel and CPU: two runs can only be compared when these match."""
    torch.set_num_threads(1)
    try:
        numerics = run_prune(tiny_loaded(layers=1), _config(corpus, pruner="wanda")).record().settings["numerics"]
    finally:
        torch.set_num_threads(THREADS)
    assert numerics["threads"] == "1" and numerics["cpu"]
    assert numerics["attention"] == tiny_loaded(layers=1).model.config._attn_implementation


def test_list_allocation_is_checked_up_front(corpus, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the dense perplexity ran before the list was checked")

    monkeypatch.setattr(pipeline, "dense_perplexity", no_work)
    loaded = tiny_loaded(layers=2)
    for block_list, match in [((0.5,), "model has 2 blocks"), ((0.5, 1.0), "inside \\[0, 0.99\\]")]:
        with pytest.raises(UserError, match=match):
            run_prune(loaded, _config(corpus, allocation="list", block_list=block_list))
    with pytest.raises(UserError, match="ceiling must be inside"):
        run_prune(loaded, _config(corpus, allocation="list", block_list=(0.5, 0.5), ceiling=1.5))


def test_short_or_empty_text_is_a_user_error(corpus, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("only a few words")
    with pytest.raises(UserError, match="too short"):
        run_prune(tiny_loaded(layers=1), _config(corpus, calib=str(short), pruner="wanda"))
    with pytest.raises(UserError, match="too short"):
        run_prune(tiny_loaded(layers=1), _config(corpus, eval=str(short)))


@pytest.mark.slow
def test_real_model_small_prune(real_model, real_analysis):
    """The default model: Wanda + AlphaPruning at 50% on a little python-docs text."""
    config = PruneConfig(
        sparsity=0.5, pruner="wanda", allocation="alphapruning", calib_samples=4, seqlen=128, eval_windows=4
    )
    before = real_model.model.model.layers[3].mlp.up_proj.weight.clone()
    result = run_prune(real_model, config, analysis=real_analysis)
    assert result.actual_sparsity == pytest.approx(0.5, abs=1e-3)
    assert 1.0 < result.ppl_before < result.ppl_after < 10 * result.ppl_before
    assert torch.equal(real_model.model.model.layers[3].mlp.up_proj.weight, before)
    assert len(result.allocation.block_ratios) == 30


@pytest.mark.slow
def test_real_model_auto_epsilon_keeps_each_heldout_window(real_model, real_analysis):
    """The default model, magnitude with epsilon auto (two candidates, small texts): the search
    keeps each held-out window's score and each candidate's spread, and the run uses its choice."""
    config = PruneConfig(sparsity=0.6, pruner="magnitude", allocation="alphapruning", epsilon="auto", calib_samples=1,
                         seqlen=64, eval_windows=1, search_budget=2)  # fmt: skip
    auto = run_prune(real_model, config, analysis=real_analysis)
    assert [t.values["epsilon"] for t in auto.search] == [0.1, 0.5]  # the grid thinned to the budget
    assert all(len(t.heldout_nlls) == pipeline.HELDOUT_WINDOWS for t in auto.search)
    assert 0 < auto.search[0].spread < auto.search[1].spread  # epsilon 0.5 is farther from uniform
    assert auto.config.epsilon == tune.choose(auto.search).values["epsilon"]


def test_an_auto_run_is_its_choice_set_by_hand(corpus):
    """An auto run's final prune is exactly the run of its chosen values set by hand (the same
    calibration windows, drawn from the whole text): a stored auto run can be reproduced."""
    import dataclasses

    loaded = tiny_loaded(layers=2)
    config = _config(corpus, pruner="wanda", allocation="alphapruning", epsilon="auto", search_budget=3)
    auto = run_prune(loaded, config)
    by_hand = run_prune(loaded, dataclasses.replace(config, epsilon=auto.config.epsilon))
    assert by_hand.ppl_after == auto.ppl_after and by_hand.allocation.sparsities == auto.allocation.sparsities


def test_window_nlls_are_the_terms_of_perplexity(corpus):
    """exp(mean of the per-window NLLs) is perplexity() on equal windows, batched or not."""
    from alphaprune.perplexity import perplexity, perplexity_of, window_nlls
    from alphaprune.text import evaluation_windows, read_text, tokenize

    loaded = tiny_loaded(layers=1)
    windows = evaluation_windows(tokenize(read_text(corpus), loaded.tokenizer), 32, 5)
    nlls = window_nlls(loaded.model, windows, batch_size=2)
    assert len(nlls) == 5 and len(set(nlls)) > 1
    assert perplexity_of(nlls) == pytest.approx(perplexity(loaded.model, windows, 3), rel=1e-6)
    assert window_nlls(loaded.model, windows, batch_size=1) == pytest.approx(nlls, rel=1e-6)
