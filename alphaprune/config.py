"""Every setting of a pruning run, checked before any work starts (and before torch loads).

    config = PruneConfig(sparsity=0.7, pruner="wanda", allocation="alphapruning", epsilon=0.3)
    config.validate()       # UserError naming the setting to change
    config.nm, config.needs_calibration, config.to_dict()

The CLI's flags and the app's widgets map onto these fields; alphaprune/pipeline.py runs
them. Nothing here imports torch, so a bad value is answered in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from alphaprune import allocation as alloc
from alphaprune import text
from alphaprune.errors import UserError, setting
from alphaprune.patterns import PRUNERS, parse_pattern

_LABELS = {  # how a message names a number before saying which setting holds it
    "sparsity": "sparsity", "ceiling": "the per-matrix ceiling", "owl_m": "OWL's outlier threshold M",
    "owl_lambda": "OWL's lambda", "epsilon": "epsilon", "calib_samples": "calibration samples",
    "seqlen": "sequence length", "batch_size": "batch size", "eval_windows": "evaluation windows",
}  # fmt: skip


@dataclass(frozen=True)
class PruneConfig:
    """Every setting of a pruning run (the CLI flags and the app's widgets map onto it)."""

    sparsity: float = 0.5
    pruner: str = "wanda"
    allocation: str = "uniform"
    epsilon: float | None = alloc.DEFAULT_EPSILON  # None: chosen on held-out calibration text
    metric: str = alloc.DEFAULT_METRIC
    mapping: str = "block"
    pattern: str = "unstructured"
    block_list: tuple[float, ...] | None = None
    owl_m: float = alloc.OWL_M
    owl_lambda: float = alloc.OWL_LAMBDA
    ceiling: float = alloc.DEFAULT_CEILING
    calib: str = "python-docs"
    calib_samples: int = 128
    seqlen: int = 2048
    seed: int = 0
    eval: str = "python-docs"
    eval_windows: int | None = None
    batch_size: int = 1

    def validate(self) -> None:
        """UserError with what to change, before any work starts (and before a model is loaded)."""
        if self.pruner not in PRUNERS:
            raise UserError(f"pruner must be one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if self.allocation not in alloc.METHODS:
            raise UserError(f"allocation must be one of {', '.join(alloc.METHODS)}, got {self.allocation!r}")
        self._check_numbers()
        nm = parse_pattern(self.pattern)
        if nm is not None and self.allocation != "uniform":
            raise UserError(
                f"layer-wise allocation does not apply to N:M patterns; set {setting('allocation')} uniform"
            )
        if nm is not None and abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
            raise UserError(f"pattern {self.pattern} means sparsity {nm[0] / nm[1]}; set {setting('sparsity')} to it")
        if self.allocation != "list":
            alloc.check_target(self.sparsity, self.ceiling)
        elif not self.block_list:
            raise UserError(f"allocation 'list' needs one sparsity per block: set {setting('block_list')}")
        else:
            alloc.check_list(self.block_list, self.ceiling)
        if self.allocation == "alphapruning":
            alloc.check_metric(self.metric)
        if self.mapping not in alloc.MAPPINGS:
            raise UserError(f"mapping must be one of {', '.join(alloc.MAPPINGS)}, got {self.mapping!r}")
        text.check_source(self.calib)  # named sources and existing files; read later
        text.check_source(self.eval)

    def _check_numbers(self) -> None:
        """Every number finite and in its range; the message names the setting to change."""
        reals = {"sparsity": self.sparsity, "ceiling": self.ceiling, "owl_m": self.owl_m}
        reals.update(owl_lambda=self.owl_lambda, epsilon=self.epsilon if self.epsilon is not None else 0.0)
        for name, value in reals.items():
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise UserError(f"{_LABELS[name]} must be a number, not {value}; set {setting(name)}")
        for name in ("epsilon", "owl_lambda"):
            if reals[name] < 0:
                raise UserError(f"{_LABELS[name]} must be a number >= 0, got {reals[name]}; set {setting(name)}")
        if self.owl_m <= 0:
            raise UserError(f"{_LABELS['owl_m']} must be a number > 0, got {self.owl_m}; set {setting('owl_m')}")
        least = {"calib_samples": 1, "seqlen": 2, "batch_size": 1}
        if self.eval_windows is not None:
            least["eval_windows"] = 1
        for name, low in least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise UserError(f"{_LABELS[name]} must be a whole number >= {low}, got {value}; set {setting(name)}")

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    @property
    def auto_epsilon(self) -> bool:
        return self.epsilon is None and self.allocation == "alphapruning"

    @property
    def needs_calibration(self) -> bool:
        return self.pruner != "magnitude" or self.allocation == "owl" or self.auto_epsilon

    def to_dict(self) -> dict:
        """Every setting; epsilon None where it does not apply (only AlphaPruning has one)."""
        out = dataclasses.asdict(self)
        out["block_list"] = list(self.block_list) if self.block_list else None
        if self.allocation != "alphapruning":
            out["epsilon"] = None
        return out
