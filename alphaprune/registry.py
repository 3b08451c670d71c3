"""The registry: every allocation rule and every pruner, each a small typed spec in its own module.

An allocation rule lives in `alphaprune/rules/<name>.py` and a pruner in
`alphaprune/pruning/<name>.py`; each module defines one `SPEC` (a `Rule` or a `Pruner`).
They are found by listing those packages, so adding a rule is adding one module (and its
test): the CLI's flags, the app's widgets, validation, the run record and the exports all
read the specs. Nothing here imports torch: settings are checked before it loads.

    from alphaprune import registry
    registry.rules()                      # {"uniform": Rule(...), "alphapruning": ...} in display order
    rule = registry.rule("atp")           # UserError naming the known rules when unknown
    rule.needs, rule.params, rule.summary
    registry.param("epsilon").default     # one place knows a setting's default and range
    registry.pruner("wanda").needs        # "activations"

A parameter's name is global: the same name in two specs is the same setting (epsilon is
AlphaPruning's and FARMS's), and it is the key in `PruneConfig.params`, the CLI flag
(`--name-with-dashes` unless `flag` says otherwise) and the app's widget.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from alphaprune.errors import UserError

WEIGHTS, ANALYSIS, ACTIVATIONS, HESSIAN = "weights", "analysis", "activations", "hessian"
NEEDS = (WEIGHTS, ANALYSIS, ACTIVATIONS, HESSIAN)  # in order of cost
AUTO = "auto"


@dataclass(frozen=True)
class Param:
    """One setting of a rule or a pruner: its type, default, range and help text."""

    name: str
    default: Any
    help: str
    label: str  # the app's widget label
    kind: str = "float"  # "float", "int", "choice", "floats" (a list) or "text"
    low: float | None = None  # bounds; None: unbounded
    high: float | None = None
    low_open: bool = False  # the low bound itself is excluded
    choices: tuple[str, ...] = ()
    auto: bool = False  # may be "auto": chosen by a search on held-out calibration text
    # the search's candidates: values, or (target, blocks) -> values (alphaprune/tune.py)
    grid: tuple | Callable[[float, int], tuple] = ()
    step: float | None = None  # the app's slider step
    flag: str | None = None  # the CLI flag, when not --name-with-dashes
    checker: Callable[[Any], None] | None = None  # a "text" value's own check (UserError)
    # what runs stored before this parameter existed ran with, where that is not its default:
    # an old record reads as that (runs.with_legacy), and an id always names it (PruneConfig.identity)
    legacy: Any = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def range_text(self) -> str:
        if self.kind == "choice":
            return ", ".join(self.choices)
        if self.kind == "text":
            return "text"
        low = "(-inf" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}"
        high = "inf)" if self.high is None else f"{self.high:g}]"
        return f"{low}, {high}" + (" or auto" if self.auto else "")

    def _in_range(self, value: float) -> bool:
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        return above and (self.high is None or value <= self.high)

    def check(self, value: Any) -> Any:
        """The value, checked against the type and range; UserError naming the setting."""
        from alphaprune.errors import setting

        if self.auto and value == AUTO:
            return value
        if self.kind == "choice":
            if value not in self.choices:
                choices = self.range_text
                raise UserError(f"{self.label} must be one of {choices}, got {value!r}; set {setting(self.name)}")
            return value
        if self.kind == "text":
            if self.checker is not None:
                self.checker(value)
            return value
        if self.kind == "floats":
            if not value:
                raise UserError(f"{self.label} needs at least one number; set {setting(self.name)}")
            return tuple(self._number(v) for v in value)
        return self._number(value)

    def _number(self, value: Any) -> Any:
        from alphaprune.errors import setting

        wanted = int if self.kind == "int" else (int, float)
        ok = isinstance(value, wanted) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self._in_range(value):
            return value
        what = "a whole number" if self.kind == "int" else "a number"
        raise UserError(f"{self.label} must be {what} in {self.range_text}, got {value!r}; set {setting(self.name)}")

    def parse(self, text: str) -> Any:
        """A command-line value: a number (or 'auto' where allowed), or one of the choices."""
        if self.auto and text == AUTO:
            return AUTO
        if self.kind in ("choice", "text"):
            return text
        try:
            if self.kind == "floats":
                return tuple(float(x) for x in text.split(","))
            return int(text) if self.kind == "int" else float(text)
        except ValueError:
            from alphaprune.errors import setting

            what = f"comma-separated numbers in {self.range_text}" if self.kind == "floats" else self.range_text
            raise UserError(f"{setting(self.name)} takes {what}, got {text!r}") from None


@dataclass(frozen=True)
class RuleInput:
    """What a rule's `allocate` gets: the matrices (name, block, params; for rules that need
    the analysis, its LayerMetrics with the metrics), the target and ceiling, the rule's
    parameter values, the granularity, and one calibration statistic per block where the
    rule has a `statistic`."""

    matrices: tuple
    target: float
    ceiling: float
    params: Mapping[str, Any]
    granularity: str = "block"
    statistics: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Rule:
    """A layer-wise allocation rule."""

    name: str
    summary: str  # one line
    needs: str  # WEIGHTS (the weights' shapes), ANALYSIS (spectral metrics) or ACTIVATIONS
    allocate: Callable[[RuleInput], Any]  # -> allocation.Allocation
    params: tuple[Param, ...] = ()
    granularities: tuple[str, ...] = ("block",)
    # (block's MatrixRefs, run feeding the calibration activations, params) -> one number per block
    statistic: Callable | None = None
    statistic_params: tuple[str, ...] = ()  # the params the statistic depends on (its cache key)
    # params -> keyword arguments of analysis.analyze the rule's metric needs (FARMS' settings)
    analysis_options: Callable[[Mapping[str, Any]], dict] | None = None
    # (params, target, blocks) -> None or UserError: what depends on the model (ATP's largest beta)
    check: Callable[[Mapping[str, Any], float, int], None] | None = None
    patterns: bool = False  # whether it applies with N:M patterns (which fix every ratio)
    sets_target: bool = False  # the rule's own params give the target (a list of ratios)
    order: int = 100  # display order

    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


@dataclass(frozen=True)
class Pruner:
    """A pruner: how one matrix is pruned to a ratio (or an N:M pattern) from what it needs."""

    name: str
    summary: str
    needs: str  # WEIGHTS, ACTIVATIONS (per-input norms and moments) or HESSIAN (X^T X)
    # One of the two (torch is imported inside them, when they run):
    # mask(weight (out, in), stats (calibrate.InputStats or None), sparsity, nm, params) -> bool (out, in),
    #     True where a weight is removed (a mask can be refined by DSnoT before it is applied);
    # update(weight (out, in), stats, sparsity, nm, params) -> the new weight, float32, zeros where removed.
    mask: Callable | None = None
    update: Callable | None = None
    # For an `update` pruner: refine_from(weight, stats, sparsity, nm, params) -> the mask a refiner
    # starts from on the matrices it refines (its saliency; those weights are then not updated, as
    # DSnoT's paper with SparseGPT). None: a refiner cannot follow this pruner.
    refine_from: Callable | None = None
    params: tuple[Param, ...] = ()
    patterns: bool = True  # N:M patterns
    recipe: Mapping[str, Any] = field(default_factory=dict)  # its llm-compressor modifier, if any
    order: int = 100

    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def refinable(self) -> bool:
        """Whether a refiner (DSnoT) can follow this pruner: it gives a mask, or a mask to start from."""
        return self.mask is not None or self.refine_from is not None


@dataclass(frozen=True)
class Refiner:
    """A post-step on a pruner's mask (DSnoT): the mask is refined before it is applied."""

    name: str
    summary: str
    # refine(weight (out, in), mask (out, in) bool, stats (InputStats with moments), nm, params) -> mask
    refine: Callable
    params: tuple[Param, ...] = ()
    applies: Callable[[Any, Mapping[str, Any]], bool] | None = None  # (MatrixRef, params) -> refine it?
    order: int = 100

    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


def _load(package: str, kind: type) -> dict[str, Any]:
    """Every SPEC of `package`'s modules, by name, in display order."""
    pkg = importlib.import_module(package)
    specs = []
    for info in pkgutil.iter_modules(pkg.__path__):
        spec = getattr(importlib.import_module(f"{package}.{info.name}"), "SPEC", None)
        if isinstance(spec, kind):
            specs.append(spec)
    specs.sort(key=lambda s: (s.order, s.name))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two specs share a name in {package}: {names}")
    return {s.name: s for s in specs}


@cache
def rules() -> dict[str, Rule]:
    return _load("alphaprune.rules", Rule)


@cache
def pruners() -> dict[str, Pruner]:
    return _load("alphaprune.pruning", Pruner)


@cache
def refiners() -> dict[str, Refiner]:
    return _load("alphaprune.pruning", Refiner)


NO_REFINER = "none"
# The names other modules need without choosing among specs; a test checks each is registered.
BASELINE = "uniform"  # every matrix at the target: N:M runs, and the reference of every comparison
DEFAULT_PRUNER = "wanda"  # the CLI's and the app's pruner until one is chosen (PruneConfig.pruner)
WEIGHTS_ONLY = "magnitude"  # what an export whose record names no pruner is taken for


def refiner(name: str) -> Refiner | None:
    """The refiner called `name`; None for "none"."""
    if name == NO_REFINER:
        return None
    known = refiners()
    if name not in known:
        raise UserError(f"refine must be one of {', '.join((NO_REFINER, *known))}, got {name!r}")
    return known[name]


def rule(name: str) -> Rule:
    known = rules()
    if name not in known:
        raise UserError(f"allocation must be one of {', '.join(known)}, got {name!r}")
    return known[name]


def pruner(name: str) -> Pruner:
    known = pruners()
    if name not in known:
        raise UserError(f"pruner must be one of {', '.join(known)}, got {name!r}")
    return known[name]


@cache
def params() -> dict[str, Param]:
    """Every parameter of every rule and pruner, by name; one name, one definition."""
    out: dict[str, Param] = {}
    for spec in (*rules().values(), *pruners().values(), *refiners().values()):
        for p in spec.params:
            if p.name in out and out[p.name] != p:
                raise RuntimeError(f"parameter {p.name} is defined twice, differently ({spec.name})")
            out[p.name] = p
    return out


def param(name: str) -> Param:
    return params()[name]


def defaults() -> dict[str, Any]:
    """Every parameter's default value, by name."""
    return {name: p.default for name, p in params().items()}


def params_of(rule_name: str | None, pruner_name: str | None, refine: str | None = NO_REFINER) -> tuple[Param, ...]:
    """The parameters of a run's rule, pruner and refiner, by their names (a name not registered,
    as in an old record: none of its)."""
    specs = (rules().get(rule_name), pruners().get(pruner_name), refiners().get(refine or NO_REFINER))
    return tuple(p for spec in specs if spec is not None for p in spec.params)


def has_param(rule_name: str, name: str) -> bool:
    """Whether the rule called `rule_name` (a stored run's) has parameter `name`; False when unknown."""
    known = rules().get(rule_name)
    return known is not None and name in known.param_names()
