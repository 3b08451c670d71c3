"""DSnoT, Dynamic Sparse No Training (Zhang et al., ICLR 2024): a training-free refinement
of any pruner's mask, one output row at a time, without changing a single weight.

With c_j = W_rj * mean_j (what input j adds to the row's expected output), a row's
reconstruction error is err = sum of c_j over its removed weights: how much the expected
output of the pruned row falls short of the dense one. Each cycle swaps one pair:

- grow the removed weight that cuts err most, variance-aware: err > 0, the largest
  c_j / var_j > 0; err < 0, the most negative one;
- prune, to keep the row's count, a kept weight of the other sign (so its removal cuts err
  too), the one with the lowest Wanda score |W_rj| * ||X_j||_2;
- stop the row when |err| <= threshold, after `cycles` swaps, when no candidate is left,
  or (same_sign=True) when the swap would flip err's sign from the one it started with.

N:M: the weight pruned is the kept one of lowest Wanda score in the grown weight's group
of M inputs (of any sign), so every group keeps its N removed weights; the released code
checks the sign there always (same_sign=None, the default, means: as the released code,
off for unstructured masks, on for N:M).

Candidates come from the start mask only: a weight grown is never pruned again, a weight
pruned is never grown (strict); each list is consumed in its order, as in the released code.

    mask = wanda_mask(w, stats.col_sq, 0.7)
    mask = dsnot(w, mask, stats.window_sum, stats.window_var, stats.col_sq, read_on=True)  # as the code
    mask = dsnot(w, mask, stats.mean, stats.var, stats.col_sq, threshold=0.1 / 2048)

Scale: col_sq and var only order candidates within a row (any positive scale), but the
threshold is compared with err as computed from `mean`. The released code measures err
with every feature's sum over a calibration window (mean x tokens per window, 2048 in its
runs: `InputStats.window_sum`), and its default threshold 0.1 is at that scale.

Rows are processed in chunks of about 4M weights (CHUNK_ELEMENTS); a chunk holds about 45
bytes per weight (four candidate orders in int64, contributions and Wanda scores in float32,
two masks; read_on: six orders, about 61 bytes) plus one sort's buffers: about 250 MB
(read_on: 320 MB) whatever the matrix. Measured (peak RSS over the call, one 4096 x 1024
chunk, this project's CPU VM): 157 MB strict, 285 MB read_on.

The released code (zyxxmu/DSnoT, lib/prune.py) and this function:
- lists: by default (strict) a row stops when its candidates of the needed sign run out and
  keeps its count. read_on=True reads the lists as the code does (see _Chain; unstructured
  only); the refiner does so by default (`dsnot_candidates` released). On SmolLM2 at 70% many
  rows have fewer kept weights of the other sign than the 50 cycles (21 of 173 in a row of
  block 0), and the two readings differ by a third in perplexity (docs/fidelity.md). One
  reading of the code is left out: while any row still swaps, the code goes on writing a
  stopped row's next two candidates (its next grow candidate removed, its next prune
  candidate kept), which changes the row only once a cursor reaches a kept column of the
  grow list or one the other cursor changed; here a stopped row is left alone;
- variance: the caller's. The refiner's default (`dsnot_variance` windows) is the code's,
  InputStats.window_var; `var` over all tokens also counts the spread of the windows' means;
- a feature that never varies gets c_j / var_j from var clamped to the smallest float (the
  code divides 0 by 0 there); the Wanda score orders the pruning candidates whatever pruner
  made the start mask;
- the code's default run refines only the attention matrices (--skip_layer mlp: the MLP
  matrices keep the start mask; the refiner's `dsnot_scope` attention); this function refines
  whatever matrix it is given.
"""

from __future__ import annotations

import torch

from alphaprune.errors import UserError
from alphaprune.patterns import NM, check_pattern

TINY = torch.finfo(torch.float32).tiny  # a feature that never varies: its c_j / var_j stays finite
CHUNK_ELEMENTS = 1 << 22


def dsnot(
    w: torch.Tensor,
    mask: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    col_sq: torch.Tensor,
    cycles: int = 50,
    threshold: float = 0.1,
    nm: NM | None = None,
    same_sign: bool | None = None,
    read_on: bool = False,
) -> torch.Tensor:
    """The refined mask (out, in), True = removed; every row keeps its count of removed
    weights (and every group of M its N under nm) unless `read_on`. w: (out, in); mean, var,
    col_sq: (in,). read_on (unstructured): the released code's candidate lists, see _Chain."""
    _check(w, mask, mean, var, col_sq, cycles, threshold, nm)
    same_sign = nm is not None if same_sign is None else same_sign
    mean, var, col_sq = (t.to(w.device).float() for t in (mean, var, col_sq))
    out = mask.clone()
    rows_per_chunk = max(1, CHUNK_ELEMENTS // w.shape[1])
    for start in range(0, w.shape[0], rows_per_chunk):
        stop = min(start + rows_per_chunk, w.shape[0])
        out[start:stop] = _refine(w[start:stop].float(), mask[start:stop], mean, var, col_sq,
                                  cycles, threshold, nm, same_sign, read_on and nm is None)  # fmt: skip
    return out


def _check(w, mask, mean, var, col_sq, cycles, threshold, nm) -> None:
    if w.dim() != 2 or mask.shape != w.shape or mask.dtype != torch.bool:
        raise UserError(f"DSnoT needs a 2-D weight and a boolean mask of its shape, got {tuple(w.shape)} and "
                        f"{tuple(mask.shape)} {mask.dtype}")  # fmt: skip
    if any(t.shape != (w.shape[1],) for t in (mean, var, col_sq)):
        raise UserError(f"DSnoT needs mean, var and col_sq of shape ({w.shape[1]},), one value per input")
    if cycles < 0 or threshold < 0:
        raise UserError(f"DSnoT needs cycles >= 0 and threshold >= 0, got {cycles} and {threshold}")
    if nm is not None:
        check_pattern(nm, w.shape[1])
        if not bool((mask.reshape(w.shape[0], -1, nm[1]).sum(-1) == nm[0]).all()):
            raise UserError(f"DSnoT with pattern {nm[0]}:{nm[1]} needs a start mask with {nm[0]} removed in "
                            f"every group of {nm[1]}; prune with that pattern first")  # fmt: skip


class _Order:
    """Per row, a list of candidate columns in the order they are taken, and a cursor."""

    def __init__(self, key: torch.Tensor, eligible: torch.Tensor, descending: bool = False):
        # key, eligible: (r, n). A stable ascending sort, read backwards when descending (as the
        # released code reads its list from the end: among equal keys the higher column first).
        fill = torch.tensor(-torch.inf if descending else torch.inf, device=key.device)
        order = torch.argsort(torch.where(eligible, key, fill), dim=1, stable=True)  # (r, n)
        self.order = order.flip(1) if descending else order  # the eligible columns first
        self.count = eligible.sum(1)  # (r,)
        self.cursor = torch.zeros_like(self.count)

    def left(self) -> torch.Tensor:
        """(r,) bool: whether the row has a column left."""
        return self.cursor < self.count

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(the next column of every row, whether the row has one left), (r,) each."""
        at = self.cursor.clamp(max=self.order.shape[1] - 1)
        return self.order.gather(1, at[:, None])[:, 0], self.left()

    def advance(self, taken: torch.Tensor) -> None:
        self.cursor += taken.long()


class _Chain:
    """Two lists read one after the other: the released code's candidate lists (read_on).

    Its unstructured loop reads two arrays with a cursor from each end and never checks what it
    reads: the grow list is every column by c_j / var_j (kept ones at 0), so a row whose removed
    weights of the needed sign run out goes on to kept columns (a no-op grow while a weight is
    still pruned: the row's count changes) and then to the other sign; the prune list is every
    kept weight, those with c_j < 0 by rising Wanda score then those with c_j > 0 by falling
    score, so a row reads on into weights of the same sign as err, the highest scores first."""

    def __init__(self, first: _Order, second: _Order):
        self.first, self.second = first, second

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        col_a, has_a = self.first.head()
        col_b, has_b = self.second.head()
        return torch.where(has_a, col_a, col_b), has_a | has_b

    def advance(self, taken: torch.Tensor) -> None:
        has_a = self.first.left()
        self.first.advance(taken & has_a)
        self.second.advance(taken & ~has_a)


def _released_orders(start, contrib, grow_key, wanda):
    """(grow_up, grow_down, prune_up, prune_down) as the released code reads its lists."""
    everything = torch.ones_like(start)
    grow_up = _Order(grow_key, everything, descending=True)  # its sorted list from the end
    grow_down = _Order(grow_key, everything)  # from the start
    kept = ~start
    neg, pos = kept & (contrib < 0), kept & (contrib > 0)
    prune_up = _Chain(_Order(wanda, neg), _Order(wanda, pos, descending=True))
    prune_down = _Chain(_Order(wanda, pos), _Order(wanda, neg, descending=True))
    return grow_up, grow_down, prune_up, prune_down


def _pick(up: torch.Tensor, when_up: _Order, when_down: _Order) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the head of `when_up` where err > 0 and of `when_down` elsewhere."""
    col_up, has_up = when_up.head()
    col_down, has_down = when_down.head()
    return torch.where(up, col_up, col_down), torch.where(up, has_up, has_down)


def _group_prune(grow, start, mask, wanda, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """N:M: per row, the weight kept from the start with the lowest Wanda score in the group of
    M inputs holding `grow` (r,), and whether the group still has one."""
    cols = (grow - grow % m)[:, None] + torch.arange(m, device=grow.device)  # (r, m)
    eligible = ~start.gather(1, cols) & ~mask.gather(1, cols)  # kept at the start and still kept
    scores = torch.where(eligible, wanda.gather(1, cols), torch.inf)
    best = scores.argmin(1, keepdim=True)  # the first of equal scores
    return cols.gather(1, best)[:, 0], eligible.any(1)


def _refine(w, start, mean, var, col_sq, cycles: int, threshold: float, nm, same_sign: bool,
            read_on: bool = False) -> torch.Tensor:  # fmt: skip
    """DSnoT on a chunk of rows: w (r, n) float32, start (r, n) bool; the refined mask (r, n)."""
    mask = start.clone()
    contrib = w * mean[None, :]  # (r, n): c_j, input j's share of the row's expected output
    err = torch.where(mask, contrib, 0.0).sum(1)  # (r,): the expected output the removed weights took
    wanda = w.abs() * col_sq.sqrt()[None, :]  # (r, n)
    grow_key = torch.where(mask, contrib / var.clamp_min(TINY)[None, :], 0.0)  # (r, n), 0 where kept
    if read_on:
        grow_up, grow_down, prune_up, prune_down = _released_orders(start, contrib, grow_key, wanda)
    else:
        grow_up, grow_down = _Order(grow_key, grow_key > 0, descending=True), _Order(grow_key, grow_key < 0)
    del grow_key
    if nm is None and not read_on:  # err > 0: prune a kept c_j < 0; err < 0: a kept c_j > 0; lowest Wanda first
        prune_up, prune_down = _Order(wanda, ~start & (contrib < 0)), _Order(wanda, ~start & (contrib > 0))
    sign0 = torch.sign(err)
    active = torch.ones_like(start[:, 0])  # (r,): rows still swapping
    rows = torch.arange(w.shape[0], device=w.device)
    for _ in range(cycles):
        if not bool(active.any()):
            break
        up = err > 0
        grow, has_grow = _pick(up, grow_up, grow_down)
        if nm is None:
            prune, has_prune = _pick(up, prune_up, prune_down)
        else:
            prune, has_prune = _group_prune(grow, start, mask, wanda, nm[1])
        after = err + contrib[rows, prune] - contrib[rows, grow]
        ok = active & has_grow & has_prune & (err.abs() > threshold)
        if same_sign:
            ok &= torch.sign(after) == sign0
        mask[rows[ok], prune[ok]] = True  # then the grow: where both are one column, it stays (the code's order)
        mask[rows[ok], grow[ok]] = False
        err = torch.where(ok, after, err)
        grow_up.advance(ok & up)
        grow_down.advance(ok & ~up)
        if nm is None:
            prune_up.advance(ok & up)
            prune_down.advance(ok & ~up)
        active = ok
    return mask
