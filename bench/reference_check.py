"""Side-by-side check of our pruning pipeline against a reference-style reimplementation.

What it does
------------
It reimplements, independently and on purpose in the *reference code's* own structure
and conventions, the pruning and evaluation of the AlphaPruning code (haiquanlu/
AlphaPruning: main.py, lib/prune.py, lib/data.py, lib/eval.py, which take their Wanda and
SparseGPT parts from locuslab/wanda and IST-DASLab/sparsegpt), and runs it next to
`alphaprune.pipeline.run_prune` on the same model, texts and windows:

- texts: a text file read with CRLF -> LF, tokenised once with the tokenizer's defaults
  (`tokenizer(text, return_tensors="pt")`, as lib/data.py does);
- calibration: `random.seed(seed)`, then per sample `i = random.randint(0, len - seqlen - 1)`
  and the window `ids[:, i:i + seqlen]` (get_wikitext2's loop);
- block inputs captured by a `Catcher` put in place of block 0 (prepare_calibration_input);
  the block keyword arguments are those the model passes (attention mask, position ids and,
  since transformers 4.4x, the rotary `position_embeddings`, which a decoder block of
  transformers 5 cannot do without);
- per block: hooks on every nn.Linear, one sample at a time through the dense block
  (`layer(inps[j].unsqueeze(0), ...)`), all matrices pruned from that pass, then the
  outputs recomputed with the pruned block and swapped in as the next inputs;
- magnitude: `thresh = sort(|W|)[int(numel * ratio)]`, prune `|W| <= thresh`;
- Wanda: running-mean `scaler_row` (WrappedGPT), score |W| * sqrt(scaler_row), stable sort
  per row, the first `int(in * ratio)` of each row;
- SparseGPT: running `H = 2/n sum x x^T` (float32), dead inputs, 1% damping, Cholesky of the
  inverse, blocks of 128 columns, per block `thresh = sort(tmp)[int(numel * s)]`, mask
  `tmp <= thresh`, the column loop and the lazy block update;
- AlphaPruning ratios: ww_sparsity's formula (block-wise mean of the metric over the
  block's matrices, linear map to [1 - eps, 1 + eps], one scaler so the parameter-weighted
  mean is the target), *no clipping*; the metric is alpha_peak from
  `alphaprune.analysis.analyze(model)` (verified against the reference elsewhere);
- perplexity: eval_ppl_wikitext: the first W non-overlapping windows, per window the mean
  cross-entropy of its seqlen - 1 predictions times seqlen, exp(sum / (W * seqlen)).

Ours is `run_prune` with the same settings (calib / eval files, samples, seqlen, windows,
seed). The table gives, per configuration, the reference-style perplexity, ours, their
relative difference and the measured sparsity of both pruned models.

Configurations: dense; uniform magnitude / Wanda / SparseGPT at the target sparsity;
AlphaPruning (alpha_peak, block-wise, eps 0.2 by default, which keeps every reference ratio
below 1 on SmolLM2-135M, so our clipping never applies) with each pruner; with `--atp-beta`,
ATP with Wanda and SparseGPT at those betas: wzhuang-xmu/ATP's main.py rates (block i of L at
S - beta (L - 1) / 2 + i beta, its "Illegal beta" bound) through the same reference Wanda /
SparseGPT loops, which ATP's lib/prune.py shares with the Wanda code apart from the per-block
rate; ours is allocation `atp` at that beta. With `--dlp-alpha`, DLP with Wanda at those alphas:
ironartisan/DLP's get_dlp_ratios (unstructured: a block's score is the mean of its matrices' Wanda
scores on the dense model's activations) and prune_wanda_dlp's per-block rate through the same
reference Wanda loop; ours is allocation `dlp` at that alpha (reduction mean).
RIA (biomedical-cybernetics/Relative-importance-and-activation-pruning, lib/prune.py
prune_ria, uniform as its code is): the same block loop and
running-mean statistics, the score |W| / column sum + |W| / row sum times sqrt(scaler_row) ** 0.5,
and the matrix's lowest scores, `<=` a threshold, removed; ours is pruner `ria` at its defaults.
FARMS (HUST-AI-HYZ/FARMS, LLM_Pruning: lib/sampling.py fixed_sampling with Q_ratio 1,
lib/esd_utils_farms.py analysis_esd with xmin_peak, lib/prune.py ww_sparsity block-wise with its
cap of ratios above 1) with `--farms-eps`: its alphas on the script's thread count, its ratios
through the reference Wanda loop; ours is allocation `farms` at that epsilon (window 256, 6 per
side by default, as `--farms-window` / `--farms-per-side` pass to both).
DSnoT (zyxxmu/DSnoT, lib/prune.py prune_DSnoT, unstructured, uniform, its defaults: Wanda's
mask, the MLP skipped, 50 cycles, threshold 0.1, no sign check): its layerwrapper's moments
(sum_metric_row; var, the windows' variances averaged) and its index-list loop; ours is Wanda
with `--refine dsnot` at its defaults (whose variance is over all tokens, see
alphaprune/calibrate.py).

How to run
----------
    nice -n 10 .venv/bin/python bench/reference_check.py                 # 8 x 256 calib, 8 x 256 eval
    nice -n 10 .venv/bin/python bench/reference_check.py --samples 32 --seqlen 1024 --windows 32
    nice -n 10 .venv/bin/python bench/reference_check.py --only wanda     # configurations whose name has "wanda"
    nice -n 10 .venv/bin/python bench/reference_check.py --noise-floor    # + reference with float64 statistics
    # ATP's code at a beta, Wanda only, on the issue's protocol and our thread count:
    nice -n 10 .venv/bin/python bench/reference_check.py --samples 32 --seqlen 1024 --windows 32 \
        --threads 2 --atp-beta 0.013 --only "atp beta0.013 wanda" --out docs/fidelity.md
    # the issue's protocol, eps 0.3, our side taken from bench/results.py's run history:
    nice -n 10 .venv/bin/python bench/reference_check.py --samples 32 --seqlen 1024 --windows 32 \
        --epsilon 0.3 --ours-from bench/results.sqlite

Where the reference formula gives a ratio above 1 (SmolLM2 at 70% and eps 0.3: block 10 at
1.0195) the authors' magnitude and SparseGPT index past the end of their sorted scores and
stop, so those rows are skipped; their Wanda prunes the block whole, and is compared with our
allocation `list` holding the reference's block ratios with that one at 1 (bench/results.py's
"block whole" run), not with our clipped allocation.

`--noise-floor` reruns the reference Wanda / SparseGPT with the calibration statistics
(scaler_row, H) accumulated in float64 instead of float32: the same mathematics, other
rounding. At 70% sparsity a near-tie flipped by rounding changes a block's outputs, which
changes the next blocks' statistics, and the masks drift apart from there (SparseGPT also
within a matrix, through its error updates), so the difference between the two reference
runs is the noise floor below which "ours vs reference" cannot be read as a real difference.

Model: `alphaprune.models.load_model(--model)` (default smollm2-135m, float32 on CPU).
Texts: /work/shared/data/{calib_python_docs.txt, wikitext2_test.raw} by default.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alphaprune.analysis import analyze  # noqa: E402
from alphaprune.models import load_model  # noqa: E402
from alphaprune.pipeline import PruneConfig, run_eval, run_prune  # noqa: E402

DATA = Path("/work/shared/data")


# ----------------------------------------------------------------------------- texts
def read_raw(path: Path) -> str:
    return path.read_bytes().decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


def encode(tokenizer, text: str) -> torch.Tensor:
    """(1, L) ids, with whatever special tokens the tokenizer adds by default (as lib/data.py)."""
    return tokenizer(text, return_tensors="pt").input_ids


def calibration_loader(enc: torch.Tensor, nsamples: int, seed: int, seqlen: int) -> list[torch.Tensor]:
    random.seed(seed)
    loader = []
    for _ in range(nsamples):
        i = random.randint(0, enc.shape[1] - seqlen - 1)
        loader.append(enc[:, i : i + seqlen])
    return loader


# ----------------------------------------------------------------------------- model helpers
def find_layers(module: nn.Module, name: str = "") -> dict[str, nn.Linear]:
    """Every nn.Linear under `module`, in named_children recursion order (find_layers)."""
    if type(module) is nn.Linear:
        return {name: module}
    found: dict[str, nn.Linear] = {}
    for child_name, child in module.named_children():
        found.update(find_layers(child, f"{name}.{child_name}" if name else child_name))
    return found


def block_output(result) -> torch.Tensor:
    """A decoder block returns a tuple (transformers 4) or the hidden states (transformers 5)."""
    return result[0] if isinstance(result, (tuple, list)) else result


class Catcher(nn.Module):
    def __init__(self, module: nn.Module, store: dict):
        super().__init__()
        self.module = module
        self.store = store

    def forward(self, inp, **kwargs):
        self.store["inps"].append(inp.detach())
        self.store["kwargs"] = kwargs  # the last sample's, as the reference keeps them
        raise ValueError


@torch.no_grad()
def prepare_calibration_input(model, loader):
    layers = model.model.layers
    store: dict = {"inps": [], "kwargs": None}
    layers[0] = Catcher(layers[0], store)
    for batch in loader:
        try:
            model(batch)
        except ValueError:
            pass
    layers[0] = layers[0].module
    inps = torch.cat(store["inps"], dim=0)  # (nsamples, seqlen, hidden)
    kw = {k: v for k, v in store["kwargs"].items() if k in ("attention_mask", "position_ids", "position_embeddings")}
    return inps, torch.zeros_like(inps), kw


# Accumulation dtype of the calibration statistics: float32 as the reference; --noise-floor
# reruns the reference with float64 (the same mathematics, other rounding).
ACC_DTYPE = torch.float32


class WrappedGPT:
    """Wanda's running mean of squared input-feature norms."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.scaler_row = torch.zeros(layer.weight.shape[1], dtype=ACC_DTYPE)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t().to(ACC_DTYPE)  # (in, tokens)
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


class DSnoTStats(WrappedGPT):
    """DSnoT's layerwrapper: Wanda's scaler_row, and per feature sum_metric_row (a running mean
    over samples of the window's sum) and var, the token-weighted mean of the windows' own
    population variances (not the variance over all tokens)."""

    def __init__(self, layer: nn.Linear):
        super().__init__(layer)
        self.sum_metric_row = torch.zeros(layer.weight.shape[1], dtype=ACC_DTYPE)
        self.var = torch.zeros(layer.weight.shape[1], 1, dtype=ACC_DTYPE)
        self.ntokens = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        x = (inp.unsqueeze(0) if inp.dim() == 2 else inp).reshape(-1, inp.shape[-1]).t().to(ACC_DTYPE)  # (in, tokens)
        var_inp = torch.var(x, dim=1, unbiased=False, keepdim=True)
        num = x.shape[1]
        self.var = var_inp if self.ntokens == 0 else (self.var * self.ntokens + var_inp * num) / (self.ntokens + num)
        self.ntokens += num
        before = self.nsamples
        super().add_batch(inp)  # scaler_row, nsamples
        self.sum_metric_row *= before / self.nsamples
        self.sum_metric_row += torch.sum(x, dim=1) / self.nsamples


class SparseGPT:
    """SparseGPT's Hessian accumulation and fasterprune (unstructured), reference conventions."""

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.columns = layer.weight.shape[1]
        self.H = torch.zeros(self.columns, self.columns, dtype=ACC_DTYPE)
        self.nsamples = 0

    def add_batch(self, inp: torch.Tensor) -> None:
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.H *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp.to(ACC_DTYPE)
        self.H += inp.matmul(inp.t())

    def fasterprune(self, sparsity: float, blocksize: int = 128, percdamp: float = 0.01) -> None:
        W = self.layer.weight.data.clone().float()
        H = self.H.float()
        self.H = None
        dead = torch.diag(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        damp = percdamp * torch.mean(torch.diag(H))
        idx = torch.arange(self.columns)
        H[idx, idx] += damp
        H = torch.linalg.cholesky(H)
        H = torch.cholesky_inverse(H)
        Hinv = torch.linalg.cholesky(H, upper=True)
        for i1 in range(0, self.columns, blocksize):
            i2 = min(i1 + blocksize, self.columns)
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            tmp = W1**2 / (torch.diag(Hinv1).reshape(1, -1)) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
            for i in range(i2 - i1):
                w = W1[:, i]
                d = Hinv1[i, i]
                q = w.clone()
                q[mask1[:, i]] = 0
                Q1[:, i] = q
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            W[:, i1:i2] = Q1
            W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
        self.layer.weight.data = W.reshape(self.layer.weight.shape).to(self.layer.weight.data.dtype)


# ----------------------------------------------------------------------------- pruning
@torch.no_grad()
def prune_magnitude(model, ratios: list[float]) -> None:
    k = 0
    for layer in model.model.layers:
        for _, module in find_layers(layer).items():
            W = module.weight.data
            metric = torch.abs(W)
            thresh = torch.sort(metric.flatten())[0][int(W.numel() * ratios[k])]
            W[metric <= thresh] = 0
            k += 1


@torch.no_grad()
def prune_sequential(model, loader, ratios: list[float], method: str) -> None:
    """prune_wanda / prune_sparsegpt: block by block, one sample at a time."""
    use_cache = model.config.use_cache
    model.config.use_cache = False
    inps, outs, kw = prepare_calibration_input(model, loader)
    nsamples = inps.shape[0]
    k = 0
    for layer in model.model.layers:
        subset = find_layers(layer)
        # RIA's layerwrapper keeps Wanda's scaler_row; DSnoT's adds its moments
        wrapper = {"sparsegpt": SparseGPT, "dsnot": DSnoTStats}.get(method, WrappedGPT)
        wrapped = {name: wrapper(mod) for name, mod in subset.items()}
        handles = [
            subset[name].register_forward_hook(lambda _m, inp, _out, w=wrapped[name]: w.add_batch(inp[0].data))
            for name in wrapped
        ]
        for j in range(nsamples):
            outs[j] = block_output(layer(inps[j].unsqueeze(0), **kw))[0]
        for h in handles:
            h.remove()
        for name, mod in subset.items():
            if method == "wanda":
                W_metric = torch.abs(mod.weight.data) * torch.sqrt(wrapped[name].scaler_row.float().reshape(1, -1))
                W_mask = torch.zeros_like(W_metric) == 1
                sort_res = torch.sort(W_metric, dim=-1, stable=True)
                indices = sort_res[1][:, : int(W_metric.shape[1] * ratios[k])]
                W_mask.scatter_(1, indices, True)
                mod.weight.data[W_mask] = 0
            elif method == "ria":
                _prune_ria(mod.weight.data, wrapped[name].scaler_row, ratios[k])
            elif method == "dsnot":
                _prune_dsnot(mod.weight.data, wrapped[name], ratios[k], skip=name.split(".")[0] == "mlp")
            else:
                wrapped[name].fasterprune(ratios[k], blocksize=128, percdamp=0.01)
            k += 1
        for j in range(nsamples):
            outs[j] = block_output(layer(inps[j].unsqueeze(0), **kw))[0]
        inps, outs = outs, inps
    model.config.use_cache = use_cache


def _prune_ria(W: torch.Tensor, scaler_row: torch.Tensor, ratio: float, a: float = 0.5) -> None:
    """RIA's prune_ria, unstructured at its defaults (a 0.5, no per_outneuron, no reconstruction):
    each |W| over its column's and its row's sum of |W|, times sqrt(scaler_row) ** a; the matrix's
    lowest, `metric <= sort(metric)[int(numel * ratio)]`, removed."""
    absw = torch.abs(W)
    relative = absw / torch.sum(absw, dim=0) + absw / torch.sum(absw, dim=1).reshape(-1, 1)
    W_metric = relative * torch.sqrt(scaler_row.float().reshape(1, -1)) ** a
    thresh = torch.sort(W_metric.flatten())[0][int(W.numel() * ratio)]
    W[W_metric <= thresh] = 0


def _reorder(values: torch.Tensor) -> torch.Tensor:
    """DSnoT's return_reorder_indice: per row, the positions of the negative values in order,
    then those of the positive values in reverse order."""
    cols = values.shape[1]
    pos = torch.arange(cols, dtype=torch.float64).repeat(values.shape[0], 1)
    neg = pos.clone()
    pos[~(values > 0)] = float("inf")
    neg[~(values < 0)] = float("inf")
    pos = torch.flip(torch.sort(pos, dim=1)[0], dims=[1])
    neg = torch.sort(neg, dim=1)[0]
    pos[pos == float("inf")] = 0
    neg[neg == float("inf")] = 0
    return (pos + neg).to(torch.int64)


def _prune_dsnot(W: torch.Tensor, stats: DSnoTStats, ratio: float, skip: bool, cycles: int = 50,
                 threshold: float = 0.1) -> None:  # fmt: skip
    """DSnoT's prune_DSnoT, unstructured, at its defaults (initial method Wanda, the MLP skipped,
    max_cycle_time 50, update_threshold 0.1, pow_of_var_regrowing 1, without_same_sign True)."""
    dsnot_metric = W * stats.sum_metric_row.float().reshape(1, -1)  # (out, in)
    initial = torch.abs(W) * torch.sqrt(stats.scaler_row.float().reshape(1, -1))
    mask = torch.zeros_like(initial) == 1
    sorted_idx = torch.sort(initial, dim=-1, stable=True)[1]
    n_prune = int(initial.shape[1] * ratio)
    n_keep = sorted_idx.shape[1] - n_prune
    prune_idx, keep_idx = torch.split(sorted_idx, [n_prune, n_keep], dim=1)
    mask.scatter_(1, prune_idx, True)
    if not skip:
        _dsnot_cycles(W, stats, dsnot_metric, mask, prune_idx, keep_idx, cycles, threshold)
    W[mask] = 0


def _dsnot_cycles(W, stats, dsnot_metric, mask, prune_idx, keep_idx, cycles: int, threshold: float) -> None:
    """The prune-and-grow loop of prune_DSnoT's unstructured branch, on `mask` in place."""
    n_prune, n_keep = prune_idx.shape[1], keep_idx.shape[1]
    regrow = dsnot_metric.clone()
    wanda = torch.abs(W) * torch.sqrt(stats.scaler_row.float().reshape(1, -1))
    regrow.scatter_(1, keep_idx, 0)
    error = torch.sum(regrow, dim=1, keepdim=True)  # (out, 1)
    regrow /= torch.pow(stats.var.float().reshape(1, -1), 1)
    regrow_block = torch.sort(regrow, dim=1, stable=True)[1]
    wanda.scatter_(1, prune_idx, float("inf"))
    wanda_keep = torch.split(torch.sort(wanda, dim=1, stable=True)[1], [n_keep, n_prune], dim=1)[0]
    prune_block = torch.gather(wanda_keep, 1, _reorder(torch.gather(dsnot_metric, 1, wanda_keep)))
    rows = error.shape[0]
    at_regrow = torch.zeros(rows, 2, dtype=torch.long)
    at_regrow[:, 1] = regrow_block.shape[-1] - 1
    at_prune = torch.zeros(rows, 2, dtype=torch.long)
    at_prune[:, 1] = prune_block.shape[-1] - 1
    step = torch.ones(rows, 2, dtype=torch.long)
    step[:, 1] = -1
    update = torch.ones_like(error, dtype=torch.bool)
    done = 0
    while not (torch.all(update == False) or done >= cycles):  # noqa: E712 (the code's test)
        done += 1
        side = (error > 0).to(torch.int64)
        where = torch.gather(at_regrow, 1, side)
        regrow_at = torch.gather(regrow_block, 1, where)
        regrow_value = dsnot_metric.gather(1, regrow_at)
        at_regrow.scatter_(1, side, where + step.gather(1, side))
        side = (error < 0).to(torch.int64)
        where = torch.gather(at_prune, 1, side)
        prune_at = torch.gather(prune_block, 1, where)
        prune_value = dsnot_metric.gather(1, prune_at)
        at_prune.scatter_(1, side, where + step.gather(1, side))
        update = update & (abs(error) > threshold)  # without_same_sign: no sign check
        mask.scatter_(1, prune_at, update)
        mask.scatter_(1, regrow_at, ~update)
        error += torch.where(update, prune_value, torch.zeros_like(prune_value))
        error -= torch.where(update, regrow_value, torch.zeros_like(regrow_value))


def ww_sparsity(model, alpha_by_name: dict[str, float], sparsity: float, epsilon: float) -> list[float]:
    """lib/prune.py ww_sparsity with mapping_type block_wise; metric order = find_layers(blocks)."""
    blocks = model.model.layers
    layers = find_layers(blocks)
    prunables = [m.weight.numel() for m in layers.values()]
    names = [f"model.layers.{n}" for n in layers]
    metrics = [alpha_by_name[n] for n in names]
    per_block = len(prunables) // len(blocks)
    block_metrics = [np.mean(metrics[i : i + per_block]) for i in range(0, len(metrics), per_block)]
    metrics = [b for b in block_metrics for _ in range(per_block)]
    s1, s2 = 1.0 - epsilon, 1.0 + epsilon
    scores = torch.tensor(metrics)
    prunables_t = torch.tensor(prunables)
    hi, lo = torch.max(scores), torch.min(scores)
    ratios = ((scores - lo) / (hi - lo)) * (s2 - s1) + s1
    scaler = torch.sum(prunables_t) * sparsity / torch.sum(prunables_t * ratios)
    return (ratios * scaler).cpu().numpy().tolist()


def farms_fixed_sampling(matrix: torch.Tensor, num_row_samples: int, ops: int) -> torch.Tensor:
    """HUST-AI-HYZ/FARMS lib/sampling.py fixed_sampling with Q_ratio 1 (its LLM runs): squared
    float32 singular values of up to ops x ops windows of side min(num_row_samples, out, in),
    pooled and sorted ascending."""
    rows, cols = matrix.shape
    num_row_samples = min(num_row_samples, min(rows, cols))
    num_col_samples = int(num_row_samples * 1.0)
    row_step = max(1, (rows - num_row_samples) // (ops - 1))
    col_step = max(1, (cols - num_col_samples) // (ops - 1))
    num_row_windows = min(ops, max(1, (rows - num_row_samples) // row_step + 1))
    num_col_windows = min(ops, max(1, (cols - num_col_samples) // col_step + 1))
    all_eigs = []
    for i in range(num_row_windows):
        for j in range(num_col_windows):
            row_start = min(i * row_step, rows - num_row_samples)
            col_start = min(j * col_step, cols - num_col_samples)
            sub = matrix[row_start : row_start + num_row_samples, col_start : col_start + num_col_samples]
            all_eigs.append(torch.square(torch.linalg.svdvals(sub)))
    return torch.sort(torch.cat(all_eigs), descending=False).values


def farms_alpha_peak(eigs: torch.Tensor, bins: int = 100) -> float:
    """lib/esd_utils_farms.py analysis_esd with fix_fingers 'xmin_peak', filter_zeros False:
    its float32 loop over xmin candidates (the lower bound compared with log10(0.95 peak), as
    in AlphaPruning's code), alpha at the candidate of least KS distance."""
    nz_eigs = torch.sort(eigs).values
    n_all = len(nz_eigs)
    log_nz_eigs = torch.log(nz_eigs)
    alphas = torch.zeros(n_all - 1)
    ds = torch.ones(n_all - 1)
    hist = torch.log10(nz_eigs)
    min_e, max_e = hist.min(), hist.max()
    counts = torch.histc(hist, bins, min=min_e, max=max_e)
    boundaries = torch.linspace(min_e, max_e, bins + 1)
    xmin2 = 10 ** boundaries[torch.argmax(counts)]
    xmin_min, xmin_max = torch.log10(0.95 * xmin2), 1.5 * xmin2
    for i, xmin in enumerate(nz_eigs[:-1]):
        if xmin < xmin_min:
            continue
        if xmin > xmin_max:
            break
        n = float(n_all - i)
        seq = torch.arange(n)
        alpha = 1 + n / (torch.sum(log_nz_eigs[i:]) - n * log_nz_eigs[i])
        alphas[i] = alpha
        if alpha > 1:
            ds[i] = torch.max(torch.abs(1 - (nz_eigs[i:] / xmin) ** (-alpha + 1) - seq / n))
    return alphas[torch.argmin(ds)].item()


@torch.no_grad()
def farms_alphas(model, num_row_samples: int, ops: int) -> dict[str, float]:
    """net_esd_estimator_farms(blocks, fix_fingers='xmin_peak', use_sliding_window=True, Q_ratio=1):
    each nn.Linear's FARMS alpha, by our names ('model.layers.3.mlp.up_proj')."""
    out = {}
    for name, mod in find_layers(model.model.layers).items():
        eigs = farms_fixed_sampling(mod.weight.data.clone().float(), num_row_samples, ops)
        out[f"model.layers.{name}"] = farms_alpha_peak(eigs)
    return out


def farms_cap(ratios: list[float], sparsity: float) -> list[float]:
    """The end of FARMS's ww_sparsity: a ratio above 1 becomes 0.99999 at sparsity 0.7, else 0.998."""
    top = 0.99999 if sparsity == 0.7 else 0.998
    return [top if r > 1 else r for r in ratios]


def atp_rates(model, sparsity: float, beta: float) -> list[float]:
    """ATP's main.py: block i of L gets S - beta (L - 1) / 2 + i beta, every matrix of the block
    that block's rate (lib/prune.py indexes sparsity_rates by block); one entry per matrix here."""
    blocks = model.model.layers
    length = len(blocks)
    if beta > min(2 * sparsity / (length - 1), 2 * (1 - sparsity) / (length - 1)):
        raise SystemExit(f"ATP's code rejects beta {beta} here (Illegal beta); give a smaller --atp-beta")
    if beta < 0:  # their code would run it; our rule's range starts at 0
        raise SystemExit(f"--atp-beta must be at least 0 (our atp's range), got {beta}")
    first = sparsity - (beta * (length - 1)) / 2
    return [first + i * beta for i, layer in enumerate(blocks) for _ in find_layers(layer)]


@torch.no_grad()
def dlp_rates(model, loader, sparsity: float, alpha: float) -> list[float]:
    """ironartisan/DLP's get_dlp_ratios (unstructured path) and prune_wanda_dlp's rates: a dense
    pass block by block, a block's score the mean of all its matrices' Wanda scores (float32),
    importance 1 - score / sum, min-max scaled onto [0, 2 alpha] (float32 as its tensor), keep
    ratio scaled - mean + (1 - S), sparsity 1 - keep (0.01 where <= 0); one entry per matrix."""
    use_cache = model.config.use_cache
    model.config.use_cache = False
    inps, outs, kw = prepare_calibration_input(model, loader)
    scores = []
    for layer in model.model.layers:
        subset = find_layers(layer)
        wrapped = {name: WrappedGPT(mod) for name, mod in subset.items()}
        handles = [
            subset[name].register_forward_hook(lambda _m, inp, _out, w=wrapped[name]: w.add_batch(inp[0].data))
            for name in wrapped
        ]
        for j in range(inps.shape[0]):
            outs[j] = block_output(layer(inps[j].unsqueeze(0), **kw))[0]
        for h in handles:
            h.remove()
        metrics = [
            torch.abs(mod.weight.data) * torch.sqrt(wrapped[name].scaler_row.float().reshape(1, -1))
            for name, mod in subset.items()
        ]
        scores.append(float(torch.abs(torch.mean(torch.cat([m.flatten() for m in metrics]).float()))))
        inps, outs = outs, inps
    model.config.use_cache = use_cache
    total = sum(scores)
    imp = torch.tensor([1 - s / total for s in scores])  # float32, as the code's tensor
    scaled = (imp - imp.min()) * (1.0 / (imp.max() - imp.min()) * alpha * 2.0)
    keep = (scaled - scaled.mean() + (1.0 - sparsity)).numpy().tolist()
    rates = [1 - k if 1 - k > 0 else 0.01 for k in keep]
    return [rate for layer, rate in zip(model.model.layers, rates, strict=True) for _ in find_layers(layer)]


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def eval_ppl(model, testenc: torch.Tensor, seqlen: int, windows: int) -> float:
    nsamples = min(windows, testenc.numel() // seqlen)
    nlls = []
    for i in range(nsamples):
        inputs = testenc[:, i * seqlen : (i + 1) * seqlen].reshape(1, seqlen)
        logits = model(inputs).logits
        shift_logits = logits[:, :-1, :].contiguous()
        shift_labels = inputs[:, 1:]
        loss = nn.CrossEntropyLoss()(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1))
        nlls.append(loss.float() * seqlen)
    return torch.exp(torch.stack(nlls).sum() / (nsamples * seqlen)).item()


def zero_share(model) -> float:
    zeros = total = 0
    for layer in model.model.layers:
        for mod in find_layers(layer).values():
            zeros += int((mod.weight.data == 0).sum())
            total += mod.weight.numel()
    return zeros / total


# ----------------------------------------------------------------------------- driver
def reference_ppl(dense, pruner: str, ratios: list[float], loader, test_enc, args) -> tuple[float, float]:
    """(perplexity, share of zeros) of a reference-style pruned copy of `dense`."""
    model = copy.deepcopy(dense)
    if pruner == "magnitude":
        prune_magnitude(model, ratios)
    else:
        prune_sequential(model, loader, ratios, pruner)
    return eval_ppl(model, test_enc, args.seqlen, args.windows), zero_share(model)


def _stored_runs(db: Path, loaded) -> dict:
    """Runs of bench/results.py's history, by its key (settings + weights)."""
    from alphaprune.pipeline import fingerprint
    from alphaprune.runs import RunStore
    from bench.results import stored

    return {"fp": fingerprint(loaded.model), "runs": stored(RunStore(db), loaded.name)}


def _ours(loaded, cfg: PruneConfig, analysis, known: dict) -> tuple[float, float, dict]:
    """(perplexity, measured sparsity, ratios) of our run: from the history when it holds it."""
    if known:
        from bench.results import find

        record = find(known["runs"], cfg, known["fp"])
        if record is not None:
            print(f"    ours from the run history (run {record.id})", flush=True)
            return record.ppl_after, record.actual_sparsity, record.ratios
    result = run_prune(loaded, cfg, analysis=analysis)
    return result.ppl_after, result.actual_sparsity, result.allocation.ratios


def main() -> None:
    global ACC_DTYPE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib", default=str(DATA / "calib_python_docs.txt"))
    ap.add_argument("--eval", default=str(DATA / "wikitext2_test.raw"))
    ap.add_argument("--samples", type=int, default=8, help="calibration windows")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--windows", type=int, default=8, help="evaluation windows")
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--epsilon", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--atp-beta", type=lambda v: [float(x) for x in v.split(",")], default=[], metavar="B,..",
                    help="also ATP (wzhuang-xmu/ATP main.py's rates) at these betas")  # fmt: skip
    ap.add_argument("--dlp-alpha", type=lambda v: [float(x) for x in v.split(",")], default=[], metavar="A,..",
                    help="also DLP (ironartisan/DLP's rates) with Wanda at these alphas")  # fmt: skip
    ap.add_argument("--farms-eps", type=lambda v: [float(x) for x in v.split(",")], default=[], metavar="E,..",
                    help="also FARMS (HUST-AI-HYZ/FARMS's alphas and ratios) at these epsilons")  # fmt: skip
    ap.add_argument("--farms-window", type=int, default=256, help="FARMS num_row_samples (our farms_window)")
    ap.add_argument("--farms-per-side", type=int, default=6, help="FARMS sampling_ops_per_dim (our farms_per_side)")
    ap.add_argument("--farms-ceiling", type=float, default=None, metavar="C",
                    help="our FARMS side's ceiling (default 0.99; 1 keeps the code's 0.9997 ratio)")  # fmt: skip
    ap.add_argument("--farms-as-list", action="store_true",
                    help="our FARMS side: the code's block ratios as allocation list (the pruners alone)")  # fmt: skip
    ap.add_argument("--farms-spectrum", default="code", choices=("code", "svd32", "exact"),
                    help="our side's farms_spectrum (code: the code's spectrum and float32 fit; svd32: its "
                         "spectrum, our float64 fit; exact: float64 Gram eigenvalues)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None, help="run only configurations whose name contains this")
    ap.add_argument(
        "--ours-from",
        type=Path,
        help="take our side from this run history (bench/results.sqlite) where it holds the same run",
    )
    ap.add_argument("--out", type=Path, help="also write (merge) the table into this markdown file")
    ap.add_argument(
        "--noise-floor",
        action="store_true",
        help="also run the reference with float64 calibration statistics (same mathematics, other rounding)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    dense = loaded.model
    tok = loaded.tokenizer
    calib_enc = encode(tok, read_raw(Path(args.calib)))
    test_enc = encode(tok, read_raw(Path(args.eval)))
    loader = calibration_loader(calib_enc, args.samples, args.seed, args.seqlen)
    analysis = analyze(dense, loaded.name)
    alpha_by_name = {layer.name: layer.alpha_peak for layer in analysis.prunable}

    ww = ww_sparsity(dense, alpha_by_name, args.sparsity, args.epsilon)
    ww03 = ww_sparsity(dense, alpha_by_name, args.sparsity, 0.3)
    print(f"reference ww ratios eps {args.epsilon}: min {min(ww):.4f} max {max(ww):.4f}; eps 0.3: max {max(ww03):.4f}")

    common = dict(
        sparsity=args.sparsity,
        calib=args.calib,
        calib_samples=args.samples,
        seqlen=args.seqlen,
        seed=args.seed,
        eval=args.eval,
        eval_windows=args.windows,
        mapping="block",
        metric="alpha_peak",
    )
    configs = [("dense", None, None)]
    configs += [(f"uniform {p} {args.sparsity}", p, "uniform") for p in ("magnitude", "wanda", "sparsegpt", "ria")]
    configs.append((f"uniform wanda+dsnot {args.sparsity}", "dsnot", "uniform"))  # DSnoT's code: its own loop
    configs += [(f"alpha eps{args.epsilon} {p}", p, "alphapruning") for p in ("magnitude", "wanda", "sparsegpt")]
    atp = {}  # label -> (beta, its rates): checked before any run (ATP's code has Wanda and SparseGPT only)
    for beta in args.atp_beta:
        rates = atp_rates(dense, args.sparsity, beta)
        for pruner in ("wanda", "sparsegpt"):
            atp[f"atp beta{beta:g} {pruner}"] = beta, rates
            configs.append((f"atp beta{beta:g} {pruner}", pruner, "atp"))
    dlp = {f"dlp alpha{a:g} wanda": a for a in args.dlp_alpha}  # label -> alpha (its code: Wanda only)
    configs += [(label, "wanda", "dlp") for label in dlp]
    if args.farms_eps and args.farms_per_side < 2:  # its fixed_sampling divides by sampling_ops_per_dim - 1
        raise SystemExit("FARMS' code needs --farms-per-side 2 or more (it divides by it minus 1)")
    spectrum = "" if args.farms_spectrum == "code" else f" (ours: {args.farms_spectrum} spectrum)"
    if (args.farms_window, args.farms_per_side) != (256, 6):
        spectrum += f" w{args.farms_window} k{args.farms_per_side}"
    if args.farms_ceiling is not None:
        spectrum += f" (ours: ceiling {args.farms_ceiling:g})"
    if args.farms_as_list:
        spectrum += " (ours: the code's ratios as a list)"
    if args.threads != 1:  # the code's alphas follow the thread count; ours are on one thread always
        spectrum += f" (the code's alphas on {args.threads} threads, ours on 1)"
    farms = {f"farms eps{e:g} {p}{spectrum}": e for e in args.farms_eps for p in ("wanda", "sparsegpt")}  # label -> eps
    configs += [(label, label.split()[2], "farms") for label in farms]
    if args.only:
        configs = [c for c in configs if args.only in c[0]]

    rows = []
    farms_alpha = None
    names = [f"model.layers.{n}" for n in find_layers(dense.model.layers)]
    known = _stored_runs(args.ours_from, loaded) if args.ours_from else {}
    for label, pruner, allocation in configs:
        beta, atp_ratios = atp.get(label, (None, None))
        dlp_alpha = dlp.get(label)
        farms_eps = farms.get(label)
        if args.threads != 1:  # BLAS rounding depends on the thread count: part of what a row measured
            label += f" [{args.threads} threads]"
        if allocation == "alphapruning" and max(ww) > 1.0 and pruner != "wanda":
            print(f"  {label}: the reference code stops here (a ratio of {max(ww):.4f} > 1 indexes past the end)")
            continue
        t = time.perf_counter()
        ref64 = float("nan")
        if pruner is None:
            ref = ref64 = eval_ppl(dense, test_enc, args.seqlen, args.windows)
            ours, _, _ = run_eval(loaded, args.eval, args.seqlen, args.windows)  # run_prune's dense ppl
            ref_sp = our_sp = zero_share(dense)
            ratio_diff = 0.0
        else:
            ratios = [args.sparsity] * len(names)
            if allocation == "alphapruning":
                ratios = ww
            elif allocation == "atp":
                ratios = atp_ratios
            elif allocation == "dlp":
                ratios = dlp_rates(dense, loader, args.sparsity, dlp_alpha)
            elif allocation == "farms":
                if farms_alpha is None:  # one pass over all matrices, ~2 min: only when a FARMS row runs
                    farms_alpha = farms_alphas(dense, args.farms_window, args.farms_per_side)
                ratios = farms_cap(ww_sparsity(dense, farms_alpha, args.sparsity, farms_eps), args.sparsity)
            ACC_DTYPE = torch.float32
            ref, ref_sp = reference_ppl(dense, pruner, ratios, loader, test_enc, args)
            if args.noise_floor and pruner != "magnitude":
                ACC_DTYPE = torch.float64
                ref64, _ = reference_ppl(dense, pruner, ratios, loader, test_enc, args)
                ACC_DTYPE = torch.float32
            cfg = PruneConfig(pruner=pruner, allocation=allocation, epsilon=args.epsilon, **common)
            if pruner == "dsnot":  # ours: Wanda's mask refined by the DSnoT refiner, both at their defaults
                cfg = cfg.with_params(pruner="wanda", refine="dsnot")
            if allocation == "atp":
                cfg = cfg.with_params(beta=beta)
            if allocation == "dlp":
                cfg = cfg.with_params(dlp_alpha=dlp_alpha)
            if allocation == "farms":
                farms_own = {"farms_window": args.farms_window, "farms_per_side": args.farms_per_side}
                cfg = cfg.with_params(epsilon=farms_eps, farms_spectrum=args.farms_spectrum, **farms_own)
                if args.farms_ceiling is not None:
                    cfg = cfg.with_params(ceiling=args.farms_ceiling)
                if args.farms_as_list:  # one ratio per block (the code's are block-wise), none clipped
                    per_block = dict(zip((n.split(".")[2] for n in names), ratios, strict=False))
                    cfg = cfg.with_params(allocation="list", ceiling=1.0, block_list=tuple(per_block.values()))
            if allocation == "alphapruning" and max(ww) > 1.0:  # what the reference's Wanda does: a block whole
                from bench.results import as_whole_block

                cfg = as_whole_block(cfg, analysis)
                ratios = [min(r, 1.0) for r in ratios]
                label += " (ratios > 1 taken as 1)"
            ours, our_sp, our_ratios = _ours(loaded, cfg, analysis, known)
            ratio_diff = max(abs(our_ratios[n] - r) for n, r in zip(names, ratios, strict=True))
        rel = (ours - ref) / ref
        rows.append((label, ref, ours, rel, ref64, ref_sp, our_sp, ratio_diff, time.perf_counter() - t))
        print(
            f"  {label}: ref {ref:.4f} ours {ours:.4f} ({rel:+.3%}) ref64 {ref64:.4f} [{rows[-1][-1]:.0f}s]", flush=True
        )

    setting = (
        f"Model {loaded.name}; calibration {Path(args.calib).name}, {args.samples} x {args.seqlen} tokens, "
        f"seed {args.seed}; evaluation {Path(args.eval).name}, first {args.windows} x {args.seqlen}; "
        f"sparsity {args.sparsity} (AlphaPruning's epsilon, ATP's beta and DLP's alpha in the row labels)."
    )
    print()
    print(setting)
    head = "| configuration | reference-style ppl | ours | rel. diff |"
    rule = "|---|---:|---:|---:|"
    if args.noise_floor:
        head += " ref, float64 stats | its rel. diff |"
        rule += "---:|---:|"
    lines = [head + " sparsity ref | sparsity ours | max ratio diff |", rule + "---:|---:|---:|"]
    for label, ref, ours, rel, ref64, rs, os_, rd, _ in rows:
        extra = ""
        if args.noise_floor:  # magnitude has no statistics: nothing to rerun
            extra = f" {ref64:.4f} | {(ref64 - ref) / ref:+.3%} |" if ref64 == ref64 else " n/a | n/a |"
        lines.append(f"| {label} | {ref:.4f} | {ours:.4f} | {rel:+.3%} |{extra} {rs:.6f} | {os_:.6f} | {rd:.2e} |")
    print("\n".join(lines))
    if args.out:
        _write_table(args.out, lines, setting)


def _write_table(path: Path, lines: list[str], setting: str) -> None:
    """Merge these rows into a markdown table file (rows of other runs with the same setting
    and header kept, same labels replaced), so subsets run one at a time add up; a file of
    another setting is left alone."""
    rows = {}
    if path.exists():
        old = path.read_text().splitlines()
        if setting not in old or lines[0] not in old:
            raise SystemExit(f"{path} holds another setting or table layout; write to another --out file")
        rows = {line.split(" | ")[0]: line for line in old[old.index(lines[0]) + 2 :] if line.startswith("| ")}
    rows.update({line.split(" | ")[0]: line for line in lines[2:]})
    body = [
        "# Ours beside a reference-style reimplementation of the authors' code",
        "",
        "Regenerated by `bench/reference_check.py --out` (see its docstring for what the reference",
        "side reimplements). Rows may come from several runs of the script with the same setting.",
        "Where the reference formula gives a ratio above 1, its magnitude and SparseGPT code stop",
        "(no row) and its Wanda prunes that block whole; ours is then allocation `list` with the",
        "same ratios, the one above 1 taken as 1, not our clipped allocation (see docs/results.md).",
        "The reference side runs with `--threads` BLAS threads (1 unless a label says otherwise); our",
        "side, when taken from bench/results.py's history (`--ours-from`), ran with torch's default (2",
        "here). SparseGPT at 70% amplifies rounding: the same code gives different numbers on 1 and 2",
        "threads, so compare rows measured on the same thread count. ATP rows: its code's rates",
        "(wzhuang-xmu/ATP main.py) through the same reference Wanda / SparseGPT loops (its lib/prune.py's);",
        "DLP rows: ironartisan/DLP's rates through the reference Wanda loop; RIA and DSnoT rows: their",
        "code's uniform pruning (prune_ria, prune_DSnoT at their defaults) beside our pruner / refiner.",
        "FARMS rows: HUST-AI-HYZ/FARMS's alphas (fixed_sampling's float32 squared singular values,",
        "analysis_esd's xmin_peak fit) and ww_sparsity's ratios through the reference Wanda loop, the",
        "alphas computed on the script's thread count: the code's own alphas move with it (12 of 210",
        "between 1 and 2 threads on SmolLM2), ours are computed on one thread whatever the process uses.",
        "Our FARMS runs at its defaults, ceiling 0.99 included: where the code's ratio is above it (0.9997",
        "at eps 0.3, which the code keeps), ours holds it at 0.99 and rescales the rest (max ratio diff);",
        '"(ours: ceiling 1)" keeps the code\'s ratio. Its default spectrum "code" is the code\'s float32',
        'arithmetic, the fit\'s included (fits.fit_rule32); rows marked "(ours: svd32 spectrum)" fit the',
        "same float32 spectrum in float64, which moved 2 of the 210 alphas by 1e-4 to 5e-3 and the ratios by",
        "up to 9e-5; \"(ours: the code's ratios as a list)\" prunes with the code's block ratios (the pruners alone).",
        "",
        setting,
        "",
        *lines[:2],
        *rows.values(),
        "",
    ]
    path.write_text("\n".join(body))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
