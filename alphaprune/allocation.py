"""Layer-wise sparsity allocation: from per-matrix metrics to per-matrix sparsity ratios.

Pure functions of the matrices (name, block, params) and, for AlphaPruning, their
metrics (method.md section 4); no data needed except for OWL's outlier ratios.

- `uniform`: every matrix at the target.
- `alphapruning`: metric (default alpha_peak) -> block mean (mapping "block", the
  reference default) or per matrix ("matrix") -> linear map onto [1 - eps, 1 + eps] ->
  rescaled so the parameter-weighted mean is the target. Higher alpha, more sparsity.
- `owl`: per-block outlier ratios (from calibration activations, alphaprune/prune.py)
  min-max normalised to [0, 2 lambda], centred, subtracted from the target: more
  outliers, less sparsity.
- `from_list`: one sparsity per block, as given.

Every ratio is then kept inside [0, ceiling] (default 0.99). The reference code does not
clip: at 70% and eps 0.3 it gives some block a ratio above 1. Here, when a raw ratio
leaves the bounds, the ratios are refitted (a common scale factor for AlphaPruning, a
common shift for OWL, both clipped) so the parameter-weighted mean is still exactly the
target; `Allocation.clipped` names the matrices held at a bound. When nothing leaves the
bounds the ratios are exactly the reference's.

    alloc = alphapruning(analysis.prunable, target=0.7, epsilon=0.3)
    alloc.ratios["model.layers.0.mlp.up_proj"], alloc.block_ratios, alloc.clipped
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from alphaprune.errors import UserError, setting
from alphaprune.registry import Param

MAPPINGS = ("block", "matrix")
DEFAULT_CEILING = 0.99
# the ceiling's spec (CLI --max-sparsity, the app's widget): "auto" lets a search choose between
# the default and 1.0 (a block pruned whole) on held-out calibration text (alphaprune/tune.py)
CEILING = Param(
    "ceiling", DEFAULT_CEILING, "no ratio goes above this; 1.0 lets a block be pruned whole",
    "Ceiling per matrix", low=0.0, high=1.0, low_open=True, auto=True, grid=(DEFAULT_CEILING, 1.0),
    step=0.01, flag="--max-sparsity",
)  # fmt: skip
DEFAULT_EPSILON = 0.3
DEFAULT_METRIC = "alpha_peak"
OWL_M, OWL_LAMBDA = 5.0, 0.08  # OWL's README values for unstructured 70%


class Matrix(Protocol):
    """What allocation needs of a matrix (LayerMetrics and MatrixRef both have it)."""

    name: str
    block: int

    @property
    def params(self) -> int: ...


@dataclass(frozen=True, eq=False)
class Allocation:
    """Per-matrix sparsity ratios (in module order) and how they were obtained."""

    method: str
    target: float
    names: tuple[str, ...]
    blocks: tuple[int, ...]
    params: tuple[int, ...]
    sparsities: tuple[float, ...]
    raw: tuple[float, ...]  # before keeping them in [0, ceiling]: the reference's ratios
    ceiling: float
    clipped: tuple[str, ...]  # matrices held at 0 or at the ceiling
    settings: dict = field(default_factory=dict)

    @property
    def ratios(self) -> dict[str, float]:
        return dict(zip(self.names, self.sparsities, strict=True))

    @property
    def mean(self) -> float:
        """Parameter-weighted mean sparsity (equals the target)."""
        p = np.asarray(self.params, dtype=np.float64)
        return float(np.dot(p, self.sparsities) / p.sum())

    @property
    def spread(self) -> float:
        """Parameter-weighted mean |ratio - target|: how far from uniform (0) the allocation is."""
        p = np.asarray(self.params, dtype=np.float64)
        return float(np.dot(p, np.abs(np.asarray(self.sparsities) - self.target)) / p.sum())

    @property
    def block_ratios(self) -> list[float]:
        """Parameter-weighted sparsity of each block, in block order."""
        return _block_means(self.blocks, self.params, self.sparsities)

    @property
    def raw_block_ratios(self) -> list[float]:
        return _block_means(self.blocks, self.params, self.raw)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "target": self.target,
            "settings": dict(self.settings),
            "ceiling": self.ceiling,
            "mean": self.mean,
            "clipped": list(self.clipped),
            "ratios": self.ratios,
            "block_ratios": self.block_ratios,
            "raw_block_ratios": self.raw_block_ratios,
        }


def _block_means(blocks, params, values) -> list[float]:
    out = []
    for b in sorted(set(blocks)):
        idx = [i for i, blk in enumerate(blocks) if blk == b]
        p = np.asarray([params[i] for i in idx], dtype=np.float64)
        out.append(float(np.dot(p, [values[i] for i in idx]) / p.sum()))
    return out


def _check_ceiling(ceiling: float) -> None:
    if not 0.0 < ceiling <= 1.0:
        raise UserError(f"the per-matrix ceiling must be inside (0, 1], got {ceiling}; set {setting('ceiling')}")


def check_target(target: float, ceiling: float = DEFAULT_CEILING) -> None:
    """UserError unless 0 < target < 1 and the ceiling leaves room for it."""
    if not 0.0 < target < 1.0:
        raise UserError(f"sparsity must be inside (0, 1), got {target}; set {setting('sparsity')}")
    _check_ceiling(ceiling)
    if target > ceiling:
        raise UserError(f"sparsity {target} is above the per-matrix ceiling {ceiling}; raise {setting('ceiling')}")


def _fit(raw: np.ndarray, params: np.ndarray, target: float, ceiling: float, mode: str) -> np.ndarray:
    """Ratios inside [0, ceiling] with weighted mean `target`: raw itself when it already is.

    Otherwise clip(k * raw) ("scale") or clip(raw + k) ("shift"), with k found by bisection
    (the weighted mean is monotone in k).
    """
    if raw.min() >= 0.0 and raw.max() <= ceiling:
        return raw
    weights = params / params.sum()

    def ratios(k: float) -> np.ndarray:
        return np.clip(raw * k if mode == "scale" else raw + k, 0.0, ceiling)

    if mode == "scale":  # k = hi puts every positive ratio at the ceiling
        lo, hi = 0.0, ceiling / max(raw[raw > 0].min(initial=np.inf), 1e-12)
    else:
        lo, hi = -1.0 - raw.max(), 1.0 - raw.min()
    for _ in range(200):  # to machine precision
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.dot(weights, ratios(mid)) < target else (lo, mid)
    final = ratios(0.5 * (lo + hi))
    if abs(np.dot(weights, final) - target) > 1e-9:
        raise UserError(f"cannot reach sparsity {target} with every ratio in [0, {ceiling}]; lower epsilon")
    return final


def _allocation(method, matrices, target, raw, ceiling, mode, settings) -> Allocation:
    check_target(target, ceiling)
    params = np.asarray([m.params for m in matrices], dtype=np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    final = _fit(raw, params, target, ceiling, mode)
    clipped = tuple(m.name for m, s, r in zip(matrices, final, raw, strict=True) if s != r and s in (0.0, ceiling))
    return Allocation(
        method=method,
        target=target,
        names=tuple(m.name for m in matrices),
        blocks=tuple(m.block for m in matrices),
        params=tuple(int(p) for p in params),
        sparsities=tuple(float(s) for s in final),
        raw=tuple(float(r) for r in raw),
        ceiling=ceiling,
        clipped=clipped,
        settings=settings,
    )


def uniform(matrices: Sequence[Matrix], target: float, ceiling: float = DEFAULT_CEILING) -> Allocation:
    return _allocation("uniform", matrices, target, [target] * len(matrices), ceiling, "scale", {})


_UNKNOWN_METRIC = "unknown metric {!r}; use a numeric column of `alphaprune analyze`, e.g. alpha_peak"


def check_metric(metric: str) -> None:
    """UserError unless `metric` is one of the analysis' numeric columns."""
    from alphaprune.layer_metrics import METRIC_NAMES

    if metric not in METRIC_NAMES:
        raise UserError(_UNKNOWN_METRIC.format(metric))


def _metric_values(matrices: Sequence, metric: str, mapping: str) -> np.ndarray:
    if mapping not in MAPPINGS:
        raise UserError(f"mapping must be one of {', '.join(MAPPINGS)}, got {mapping!r}")
    try:
        values = np.asarray([float(getattr(m, metric)) for m in matrices])
    except (AttributeError, TypeError, ValueError):  # missing, or not a number (name, shape ...)
        raise UserError(_UNKNOWN_METRIC.format(metric)) from None
    bad = [m.name for m, v in zip(matrices, values, strict=True) if not np.isfinite(v)]
    if bad:
        raise UserError(f"metric {metric} is not finite for {len(bad)} matrices (e.g. {bad[0]}); choose another metric")
    if mapping == "block":  # mean over each block's matrices (unweighted, as the reference)
        blocks = np.asarray([m.block for m in matrices])
        means = {b: values[blocks == b].mean() for b in set(blocks.tolist())}
        values = np.asarray([means[b] for b in blocks.tolist()])
    return values


def alphapruning(
    layers: Sequence,
    target: float,
    epsilon: float = DEFAULT_EPSILON,
    metric: str = DEFAULT_METRIC,
    mapping: str = "block",
    ceiling: float = DEFAULT_CEILING,
) -> Allocation:
    """AlphaPruning's allocation over analysed layers (LayerMetrics of prunable matrices)."""
    if epsilon is None or not 0.0 <= epsilon < np.inf:
        raise UserError(f"epsilon must be a number >= 0, got {epsilon}")
    check_target(target, ceiling)
    values = _metric_values(layers, metric, mapping)
    spread = values.max() - values.min()
    unit = (values - values.min()) / spread if spread > 0 else np.full_like(values, 0.5)
    r = unit * 2.0 * epsilon + (1.0 - epsilon)  # in [1 - eps, 1 + eps]
    params = np.asarray([m.params for m in layers], dtype=np.float64)
    raw = r * target * params.sum() / np.dot(params, r)  # weighted mean = target
    settings = {"epsilon": epsilon, "metric": metric, "mapping": mapping}
    return _allocation("alphapruning", layers, target, raw, ceiling, "scale", settings)


def owl(
    matrices: Sequence[Matrix],
    target: float,
    outlier_ratios: Sequence[float],
    lam: float = OWL_LAMBDA,
    m: float = OWL_M,
    ceiling: float = DEFAULT_CEILING,
) -> Allocation:
    """OWL: block sparsity = target - (normalised outlier ratio - its weighted mean)."""
    if not lam >= 0.0:
        raise UserError(f"OWL lambda must be >= 0, got {lam}")
    blocks = sorted({mat.block for mat in matrices})
    if len(outlier_ratios) != len(blocks):
        raise ValueError(f"{len(outlier_ratios)} outlier ratios for {len(blocks)} blocks")
    ratio = np.asarray(outlier_ratios, dtype=np.float64)
    spread = ratio.max() - ratio.min()
    norm = (ratio - ratio.min()) / spread * 2.0 * lam if spread > 0 else np.zeros_like(ratio)
    per_block = dict(zip(blocks, norm, strict=True))
    shifted = np.asarray([per_block[mat.block] for mat in matrices])
    params = np.asarray([mat.params for mat in matrices], dtype=np.float64)
    raw = target - (shifted - np.dot(params, shifted) / params.sum())
    settings = {"owl_lambda": lam, "owl_m": m, "outlier_ratios": [float(x) for x in ratio]}
    return _allocation("owl", matrices, target, raw, ceiling, "shift", settings)


def check_list(block_sparsities: Sequence[float], ceiling: float = DEFAULT_CEILING) -> None:
    """UserError unless every listed sparsity is inside [0, ceiling] (and the ceiling in (0, 1])."""
    _check_ceiling(ceiling)
    for s in block_sparsities:
        if not 0.0 <= s <= ceiling:
            raise UserError(f"every listed sparsity must be inside [0, {ceiling}], got {s}")


def check_list_length(block_sparsities: Sequence[float], blocks: int) -> None:
    if len(block_sparsities) != blocks:
        raise UserError(f"the list has {len(block_sparsities)} sparsities but the model has {blocks} blocks")


def from_list(matrices: Sequence[Matrix], block_sparsities: Sequence[float], ceiling: float = DEFAULT_CEILING):
    """A user's sparsity per block, applied to each matrix of the block."""
    blocks = sorted({mat.block for mat in matrices})
    check_list_length(block_sparsities, len(blocks))
    check_list(block_sparsities, ceiling)
    per_block = dict(zip(blocks, block_sparsities, strict=True))
    raw = [float(per_block[mat.block]) for mat in matrices]
    params = np.asarray([mat.params for mat in matrices], dtype=np.float64)
    target = float(np.dot(params, raw) / params.sum())
    if not 0.0 < target < 1.0:
        raise UserError("the listed sparsities must not all be 0")
    return _allocation("list", matrices, target, raw, ceiling, "scale", {"block_sparsities": list(block_sparsities)})
