"""Every setting of a pruning run, checked before any work starts (and before torch loads).

    config = PruneConfig(sparsity=0.7, pruner="wanda", allocation="alphapruning", epsilon=0.3)
    config.validate()       # UserError naming the setting to change
    config.rule, config.pruner_spec          # the registry's specs (alphaprune/registry.py)
    config.epsilon, config.param("beta")     # a rule's or pruner's parameter (its spec's default if unset)
    config.nm, config.needs_calibration, config.to_dict()
    allocation, pruner, data = config.parts()              # frozen AllocationSettings, PrunerSettings, DataSettings
    PruneConfig.from_parts(allocation, pruner, data) == config

The settings split into three frozen parts: the allocation (what the Allocation page sets),
the pruner (the Prune page's pruner, pattern and refiner) and the data (texts and windows);
PruneConfig holds their fields flat, so a run reads `config.sparsity`. The rules' and
pruners' own parameters live in `params`, and each spec says its parameters' defaults and
ranges, so this module never names a rule. The CLI's flags and the app's widgets map onto
these (the app keeps the three parts in its session state); alphaprune/pipeline.py runs them.
Nothing here imports torch, so a bad value is answered in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from alphaprune import allocation as alloc
from alphaprune import registry, text
from alphaprune.errors import UserError, setting
from alphaprune.patterns import parse_pattern

_LABELS = {  # how a message names a number before saying which setting holds it
    "sparsity": "sparsity", "ceiling": "the per-matrix ceiling", "calib_samples": "calibration samples",
    "seqlen": "sequence length", "batch_size": "batch size", "eval_windows": "evaluation windows",
    "search_budget": "the search budget",
}  # fmt: skip


class _Params:
    """Parameters by name (`config.epsilon`), unset ones at their spec's default: the lookups of
    PruneConfig and of its allocation and pruner parts."""

    params: tuple[tuple[str, Any], ...]

    def __getattr__(self, name: str):
        if name.startswith("__") or name not in registry.params():
            raise AttributeError(name)
        return self.param(name)

    def param(self, name: str) -> Any:
        """A rule's or pruner's parameter: as given, else its spec's default."""
        return dict(self.params).get(name, registry.param(name).default)


@dataclass(frozen=True)
class AllocationSettings(_Params):
    """The allocation's settings (the Allocation page's): the rule, its target, granularity and
    ceiling, the search's budget, and the rules' parameters by name (sorted pairs)."""

    allocation: str = registry.BASELINE
    sparsity: float = 0.5
    mapping: str = "block"  # granularity: one ratio per block, or per matrix where the rule allows
    ceiling: float | str = alloc.DEFAULT_CEILING  # or "auto": searched (alloc.CEILING's grid)
    search_budget: int = 10  # prune runs an "auto" search may cost (alphaprune/tune.py)
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class PrunerSettings(_Params):
    """The pruner's settings (the Prune page's): pruner, pattern, refiner, and their parameters."""

    pruner: str = registry.DEFAULT_PRUNER
    pattern: str = "unstructured"
    refine: str = registry.NO_REFINER  # a post-step on the pruner's mask (DSnoT), or "none"
    params: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class DataSettings:
    """The texts and windows of a run: calibration, evaluation, and how they are cut."""

    calib: str = "python-docs"
    calib_samples: int = 128
    seqlen: int = 2048
    seed: int = 0
    eval: str = "python-docs"
    eval_windows: int | None = None  # None: every window of the evaluation text
    batch_size: int = 1


PARTS = (AllocationSettings, PrunerSettings, DataSettings)


def _rule_param_names() -> set[str]:
    return {p.name for rule in registry.rules().values() for p in rule.params}


@dataclass(frozen=True, init=False)
class PruneConfig(_Params):
    """Every setting of a pruning run: the three parts' fields flat (their defaults are the
    parts'), the rules' and pruners' own parameters in `params` (name -> value; unset ones
    take the spec's default). Built with keywords, PruneConfig(allocation="atp", beta=0.01,
    seqlen=512), or from its parts, PruneConfig.from_parts(allocation, pruner, data)."""

    sparsity: float = AllocationSettings.sparsity
    pruner: str = PrunerSettings.pruner
    allocation: str = AllocationSettings.allocation
    mapping: str = AllocationSettings.mapping
    pattern: str = PrunerSettings.pattern
    refine: str = PrunerSettings.refine
    ceiling: float | str = AllocationSettings.ceiling
    calib: str = DataSettings.calib
    calib_samples: int = DataSettings.calib_samples
    seqlen: int = DataSettings.seqlen
    seed: int = DataSettings.seed
    eval: str = DataSettings.eval
    eval_windows: int | None = DataSettings.eval_windows
    batch_size: int = DataSettings.batch_size
    search_budget: int = AllocationSettings.search_budget
    params: tuple[tuple[str, Any], ...] = ()

    def __init__(self, params=(), **given):
        known = registry.params()
        merged = dict(params)
        for f in dataclasses.fields(self):
            if f.name != "params":
                object.__setattr__(self, f.name, given.pop(f.name, f.default))
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise TypeError(f"PruneConfig got unknown settings {unknown}")
        merged.update(given)
        object.__setattr__(self, "params", tuple(sorted((k, _normal(known[k], v)) for k, v in merged.items())))

    def with_params(self, **values) -> PruneConfig:
        return dataclasses.replace(self, **values)

    @classmethod
    def from_parts(cls, allocation: AllocationSettings | None = None, pruner: PrunerSettings | None = None,
                   data: DataSettings | None = None) -> PruneConfig:  # fmt: skip
        """The config of these parts (a part not given: its defaults)."""
        fields, params = {}, []
        for part, kind in zip((allocation, pruner, data), PARTS, strict=True):
            part = part if part is not None else kind()
            fields.update({f.name: getattr(part, f.name) for f in dataclasses.fields(part) if f.name != "params"})
            params += list(getattr(part, "params", ()))
        return cls(params=params, **fields)

    def parts(self) -> tuple[AllocationSettings, PrunerSettings, DataSettings]:
        """The allocation, pruner and data settings of this config (inverse of from_parts)."""
        rule_names = _rule_param_names()
        out = []
        for kind in PARTS:
            fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(kind) if f.name != "params"}
            if kind is AllocationSettings:
                fields["params"] = tuple(kv for kv in self.params if kv[0] in rule_names)
            elif kind is PrunerSettings:
                fields["params"] = tuple(kv for kv in self.params if kv[0] not in rule_names)
            out.append(kind(**fields))
        return tuple(out)

    @property
    def rule(self) -> registry.Rule:
        return registry.rule(self.allocation)

    @property
    def pruner_spec(self) -> registry.Pruner:
        return registry.pruner(self.pruner)

    def rule_params(self) -> dict[str, Any]:
        """The selected rule's parameters, by name."""
        return {p.name: self.param(p.name) for p in self.rule.params}

    def pruner_params(self) -> dict[str, Any]:
        """The selected pruner's parameters and its refiner's, by name."""
        refiner = registry.refiner(self.refine)
        specs = (*self.pruner_spec.params, *(refiner.params if refiner else ()))
        return {p.name: self.param(p.name) for p in specs}

    def validate(self) -> None:
        """UserError with what to change, before any work starts (and before a model is loaded)."""
        rule, pruner, refiner = self.rule, self.pruner_spec, registry.refiner(self.refine)
        if refiner is not None and not pruner.refinable:
            masks = ", ".join(n for n, p in registry.pruners().items() if p.refinable)
            raise UserError(
                f"{refiner.name} refines a pruner's mask, and {pruner.name} updates the weights instead; "
                f"set {setting('pruner')} to one of {masks}, or {setting('refine')} none"
            )
        self._check_numbers()
        own = {p.name for p in (*rule.params, *pruner.params, *(refiner.params if refiner else ()))}
        for name in sorted(own | set(dict(self.params))):  # a value given for another rule is checked too
            registry.param(name).check(self.param(name))
        self._check_pattern(rule, pruner)
        if self.mapping not in alloc.MAPPINGS:
            raise UserError(f"mapping must be one of {', '.join(alloc.MAPPINGS)}, got {self.mapping!r}")
        if self.mapping not in rule.granularities:
            raise UserError(
                f"{rule.name} allocates one ratio per {' or '.join(rule.granularities)}; set {setting('mapping')} block"
            )
        if rule.sets_target:
            alloc.check_list(self.param("block_list"), self.lowest_ceiling)
        else:
            alloc.check_target(self.sparsity, self.lowest_ceiling)
        text.check_source(self.calib)  # named sources and existing files; read later
        text.check_source(self.eval)

    def _check_pattern(self, rule: registry.Rule, pruner: registry.Pruner) -> None:
        nm = parse_pattern(self.pattern)
        if nm is None:
            return
        if not rule.patterns:
            raise UserError(
                f"layer-wise allocation does not apply to N:M patterns; set {setting('allocation')} {registry.BASELINE}"
            )
        if not pruner.patterns:
            raise UserError(f"pruner {pruner.name} has no N:M mode; set {setting('pattern')} unstructured")
        if abs(self.sparsity - nm[0] / nm[1]) > 1e-9:
            raise UserError(f"pattern {self.pattern} means sparsity {nm[0] / nm[1]}; set {setting('sparsity')} to it")

    def _check_numbers(self) -> None:
        """Every common number finite and in its range; the message names the setting to change."""
        for name in ("sparsity", "ceiling"):
            value = getattr(self, name)
            if name == "ceiling" and value == registry.AUTO:
                continue
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise UserError(f"{_LABELS[name]} must be a number, not {value}; set {setting(name)}")
        least = {"calib_samples": 1, "seqlen": 2, "batch_size": 1, "search_budget": 1}
        if self.eval_windows is not None:
            least["eval_windows"] = 1
        for name, low in least.items():
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise UserError(f"{_LABELS[name]} must be a whole number >= {low}, got {value}; set {setting(name)}")

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    def auto_params(self) -> tuple[str, ...]:
        """The settings left to a search on held-out calibration text: the selected rule's
        parameters set to "auto", and the ceiling when it is."""
        names = tuple(p.name for p in self.rule.params if p.auto and self.param(p.name) == registry.AUTO)
        return names + (("ceiling",) if self.ceiling == registry.AUTO else ())

    @staticmethod
    def auto_spec(name: str) -> registry.Param:
        """The spec of a setting that may be "auto" (a rule's parameter, or the ceiling)."""
        return alloc.CEILING if name == alloc.CEILING.name else registry.param(name)

    @property
    def lowest_ceiling(self) -> float:
        """The ceiling, or with "auto" the lowest a search may choose (what the checks hold to)."""
        return min(alloc.CEILING.grid) if self.ceiling == registry.AUTO else self.ceiling

    @property
    def auto_epsilon(self) -> bool:
        return "epsilon" in self.auto_params()

    @property
    def needs_calibration(self) -> bool:
        needs = {self.rule.needs, self.pruner_spec.needs}
        refined = self.refine != registry.NO_REFINER  # DSnoT needs the inputs' moments
        return bool(needs & {registry.ACTIVATIONS, registry.HESSIAN}) or bool(self.auto_params()) or refined

    def identity(self) -> dict:
        """What identifies the run these settings describe, for a sweep's cell key and a comparison's
        id: every common setting and each parameter away from its spec's default (a default given or
        not is the same run, and a parameter added to the registry later changes no stored id),
        except one with a `legacy` value (older runs ran otherwise): that one is always named."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}
        owned = {**self.rule_params(), **self.pruner_params()}  # resolved: given or the spec's default
        for name in sorted(set(dict(self.params)) | set(owned)):
            spec, value = registry.param(name), self.param(name)
            if value is not None and (value != spec.default or (spec.legacy is not None and name in owned)):
                out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def to_dict(self) -> dict:
        """Every common setting, and every parameter the registry knows: the selected rule's
        and pruner's values, None for the others (so a run record's columns stay the same)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}
        mine = {**self.rule_params(), **self.pruner_params()}
        for name in registry.params():
            value = mine.get(name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out


def _normal(spec: registry.Param, value: Any) -> Any:
    """A parameter value as the config holds it: lists as tuples; None means auto where allowed."""
    if value is None and spec.auto:
        return registry.AUTO
    if isinstance(value, list):
        return tuple(value)
    return value
