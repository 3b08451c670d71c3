"""One pruning run end to end: texts -> allocation -> prune a copy -> perplexity before/after.

    config = PruneConfig(sparsity=0.7, pruner="wanda", allocation="alphapruning", epsilon=0.3)
    result = run_prune(loaded, config, progress=cb)      # loaded: alphaprune.models.LoadedModel
    result.ppl_before, result.ppl_after, result.actual_sparsity, result.allocation.block_ratios
    result.model                                        # the pruned copy; loaded.model stays dense

The user's dense model is never modified: the pruner works on a deep copy. The dense
perplexity is cached on disk (keyed by the weights' fingerprint and the evaluation text,
seqlen and windows), so runs against the same text do not pay for it twice.
`epsilon="auto"` (or None; any rule's auto parameter likewise) tries a grid of candidates on
held-out calibration text (the tail of the calibration source), never on the evaluation text,
and keeps the lowest perplexity (alphaprune/tune.py).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from alphaprune import allocation as alloc
from alphaprune import atomic, cache, registry, text
from alphaprune.arch import all_matrices, prunable_matrices
from alphaprune.config import PruneConfig  # noqa: F401  (re-exported: pipeline.PruneConfig)
from alphaprune.errors import UserError, setting
from alphaprune.paths import cache_dir
from alphaprune.patterns import check_pattern
from alphaprune.perplexity import perplexity, window_nlls
from alphaprune.prune import block_statistics, measured_sparsity, prune_model

Progress = Callable[[float, str], None]
HELDOUT_WINDOWS = 8


@dataclass(frozen=True, eq=False)
class PruneResult:
    """What a run measured. `model` is the pruned copy (not serialised)."""

    model_name: str
    fingerprint: str
    config: PruneConfig
    allocation: alloc.Allocation
    ppl_before: float
    ppl_after: float
    actual_sparsity: float
    matrix_sparsity: dict[str, float]
    seconds: dict[str, float]
    search: tuple = ()  # tune.Trial of each candidate of an "auto" search, in order
    model: nn.Module | None = field(default=None, repr=False)
    windows_measured: int | None = None  # evaluation windows actually used (the text may hold fewer)
    dense_fingerprint_after: str | None = None  # the dense model's, measured again after pruning
    offload: dict | None = None  # the preflight's plan (alphaprune/preflight.py): which path ran
    saved: str | None = None  # the folder a streamed run wrote the pruned model into
    protocol: dict | None = None  # how the texts were tokenized (text.protocol)

    @property
    def epsilon_search(self) -> tuple[tuple[float, float], ...]:
        """(epsilon, held-out perplexity) of a search over epsilon alone (older records' form)."""
        if not self.search or set(self.search[0].values) != {"epsilon"}:
            return ()
        return tuple((t.values["epsilon"], t.heldout_ppl) for t in self.search)

    def record(self, sweep: str | None = None):
        """The run-history record of this run (alphaprune/runs.py)."""
        from alphaprune.runs import RunRecord, library_versions, numerics

        settings = self.config.to_dict()
        settings["clipped"] = list(self.allocation.clipped)
        settings["eval_windows_measured"] = self.windows_measured
        settings["dense_fingerprint_after"] = self.dense_fingerprint_after
        settings["offload"] = (self.offload or {}).get("offload", "none")
        if self.offload:
            settings["preflight"] = self.offload
            settings.setdefault("device", self.offload.get("device"))
        if self.saved:
            settings["saved"] = self.saved
        if self.protocol is not None:
            settings["protocol"] = self.protocol
        if self.model is not None:  # rounding differs across devices: part of what was measured
            settings["device"] = str(next(self.model.parameters()).device)
        settings["numerics"] = numerics(self.model)
        if self.search:
            settings["search"] = [trial.to_dict() for trial in self.search]
        if self.epsilon_search:
            settings["epsilon_search"] = [list(pair) for pair in self.epsilon_search]
        return RunRecord(
            kind="prune",
            model=self.model_name,
            fingerprint=self.fingerprint,
            settings=settings,
            ratios=self.allocation.ratios,
            block_ratios=self.allocation.block_ratios,
            ppl_before=self.ppl_before,
            ppl_after=self.ppl_after,
            actual_sparsity=self.actual_sparsity,
            seconds=self.seconds,
            versions=library_versions(),
            sweep=sweep,
        )

    def to_dict(self) -> dict:
        return {
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "settings": self.config.to_dict(),
            "ppl_before": self.ppl_before,
            "ppl_after": self.ppl_after,
            "actual_sparsity": self.actual_sparsity,
            "ratios": self.allocation.ratios,
            "block_ratios": self.allocation.block_ratios,
            "clipped": list(self.allocation.clipped),
            "allocation": {k: v for k, v in self.allocation.to_dict().items() if k not in ("ratios", "block_ratios")},
            "matrix_sparsity": self.matrix_sparsity,
            "epsilon_search": [list(pair) for pair in self.epsilon_search],
            "search": [trial.to_dict() for trial in self.search],
            "seconds": self.seconds,
        }


def _stage(progress: Progress | None, start: float, end: float, label: str) -> Progress | None:
    """A callback reporting a stage's own [0, 1] as [start, end] of the whole run."""
    if progress is None:
        return None
    return lambda f, msg: progress(start + (end - start) * f, f"{label}: {msg}")


def fingerprint(model: nn.Module) -> str:
    return cache.weights_fingerprint(all_matrices(model))


def _ppl_cache_key(fp: str, source: text.Text, windows: torch.Tensor, device: str = "cpu") -> str:
    """The weights, the text, and the windows' own ids: two tokenizers (or one that adds a BOS
    since text.tokenize keeps special tokens) never share an entry."""
    where = "" if device == "cpu" else f"|{device}"  # a GPU rounds differently
    ids = hashlib.sha1(windows.numpy().tobytes()).hexdigest()[:12]
    return f"{fp[:32]}|{source.digest}|{windows.shape[1]}|{windows.shape[0]}|{ids}{where}"


def dense_perplexity(model: nn.Module, fp: str, source: text.Text, windows: torch.Tensor, batch_size: int, progress):
    """Perplexity of the unpruned model, from the cache when measured before."""
    from alphaprune.placement import placement_key

    device = placement_key(model)  # a device map is measured (and cached) as a placement of its own
    return cached_perplexity(fp, source, windows, device, lambda: perplexity(model, windows, batch_size, progress))


def cached_perplexity(fp: str, source: text.Text, windows: torch.Tensor, device: str, compute: Callable[[], float]):
    """A dense model's perplexity on `windows` of `source`, computed by `compute()` only once
    per weights fingerprint (in memory or streamed: both give the same number)."""
    key = _ppl_cache_key(fp, source, windows, device)
    return float(_json_cache("perplexity.json", key, compute))


def _json_cache(name: str, key: str, compute: Callable[[], object]):
    """A value from cache_dir()/name (a JSON object), computed and stored when missing.
    Writers merge under a file lock, so runs in parallel (CLI, app, bench) lose no entry."""
    path = cache_dir() / name
    known = _read_json(path)
    if key in known:
        return known[key]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(name + ".lock"), "w") as lock:
        _lock(lock)
        known = {**_read_json(path), key: value}
        atomic.write_text(path, json.dumps(known, indent=1))  # a kill leaves the old file whole
    return value


def _lock(handle) -> None:
    """An exclusive lock held until `handle` closes (POSIX; elsewhere the write is only atomic)."""
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(handle, fcntl.LOCK_EX)


def _read_json(path) -> dict:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def cached_statistics(model, config: PruneConfig, calib: torch.Tensor, progress=None, fp=None, compute=None):
    """The selected rule's per-block statistic (a dense calibration pass: OWL's outlier ratios,
    DLP's unimportance), cached: it depends on no sparsity, only on the weights, the
    calibration windows and the statistic's own parameters. A streamed run passes its
    weights' fingerprint `fp` and its own `compute()`."""
    rule = config.rule
    params = config.rule_params()
    digest = hashlib.sha1(calib.numpy().tobytes()).hexdigest()[:16]
    own = ",".join(f"{name}={params[name]}" for name in rule.statistic_params)
    key = f"{rule.name}|{(fp or fingerprint(model))[:32]}|{digest}|{tuple(calib.shape)}|{own}"
    if compute is None:
        compute = lambda: block_statistics(model, calib, rule.statistic, params, progress)  # noqa: E731
    return _json_cache("statistics.json", key, compute)


def _analysis_layers(model: nn.Module, name: str, analysis, options: dict):
    """The analysed prunable matrices: `analysis`, unless the rule's metric needs options it
    was not computed with (FARMS' settings), then the model's analysis with them (cached)."""
    if analysis is None or any(getattr(analysis, key, None) != value for key, value in options.items()):
        from alphaprune.analysis import analyze

        analysis = analyze(model, name, **options)
    return analysis.prunable


def analysis_options(config: PruneConfig) -> dict:
    """What the selected rule's metric needs of the analysis (analysis.analyze's keywords)."""
    rule = config.rule
    return rule.analysis_options(config.rule_params()) if rule.analysis_options else {}


def make_allocation(model, config: PruneConfig, analysis=None, calib=None, progress=None, name="model",
                    statistics=None) -> alloc.Allocation:  # fmt: skip
    """The allocation a config asks for, from its rule's spec (alphaprune/rules/). A rule
    with a per-block statistic uses `statistics` (one value per block) when given, else runs
    a dense calibration pass over `calib` (cached on disk); one that needs the analysis
    uses `analysis` (else analyses the model)."""
    rule = config.rule
    if rule.needs == registry.ANALYSIS:
        matrices = _analysis_layers(model, name, analysis, analysis_options(config))
    else:
        matrices = prunable_matrices(model)
    if rule.statistic is not None and statistics is None:
        statistics = cached_statistics(model, config, calib, progress)
    given = registry.RuleInput(
        matrices=tuple(matrices),
        target=config.sparsity,
        ceiling=config.ceiling,
        params=config.rule_params(),
        granularity=config.mapping,
        statistics=None if statistics is None else tuple(statistics),
    )
    return rule.allocate(given)


def prune_copy(model: nn.Module, allocation: alloc.Allocation, config: PruneConfig, calib, progress=None):
    """A pruned deep copy; `model` stays as it was."""
    pruned = copy.deepcopy(model)
    prune_model(pruned, allocation.ratios, config.pruner, config.nm, calib, progress, config.pruner_params(),
                config.refine)  # fmt: skip
    return pruned


def _search(model, config, analysis, calib_ids, progress, observe=None, plan=None) -> tuple[dict, tuple]:
    """The auto parameters' values chosen on held-out calibration text (alphaprune/tune.py:
    the lowest perplexity): each candidate
    prunes a copy calibrated on the rest of the text. `observe(values, pruned)` sees each
    candidate's pruned copy once scored (bench/tuning_check.py measures it on other text).
    `plan`: these candidates instead of the grid, none added around the choice (values off
    the grid, scored as the search would score them: bench/tuning_check.py --candidates); an
    empty one or None: the config's grid and refinement."""
    from alphaprune import tune

    train_ids = text.split_heldout(calib_ids)[0]
    calib = text.calibration_windows(train_ids, config.calib_samples, config.seqlen, config.seed)
    heldout = text.heldout_windows(calib_ids, config.seqlen, HELDOUT_WINDOWS)
    blocks = len({m.block for m in prunable_matrices(model)})

    made: dict[tuple, alloc.Allocation] = {}  # each candidate's allocation, made once (key and prune)

    def allocation(values: dict) -> alloc.Allocation:
        name = tuple(sorted(values.items()))
        if name not in made:
            made[name] = make_allocation(model, dataclasses.replace(config, **values), analysis, calib)
        return made[name]

    def score(values: dict) -> tune.Score:
        made_here = allocation(values)
        pruned = prune_copy(model, made_here, dataclasses.replace(config, **values), calib)
        try:
            nlls = window_nlls(pruned, heldout, config.batch_size)
            if observe is not None:
                observe(values, pruned)
            return tune.Score(tuple(nlls), made_here.spread)
        finally:
            del pruned

    refine = None if plan else lambda best: tune.refinements(config, best, blocks)
    plan = plan or tune.candidates(config, blocks, config.search_budget)
    ratios = lambda values: allocation(values).sparsities  # noqa: E731 (same ratios, same prune)
    return tune.search(plan, score, progress, key=ratios, budget=max(len(plan), config.search_budget), refine=refine)


def check_context(model: nn.Module, seqlen: int) -> None:
    """UserError when windows of `seqlen` tokens exceed what the model was built for."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if limit is not None and seqlen > limit:
        raise UserError(f"seqlen {seqlen} exceeds the model's context of {limit} tokens; lower {setting('seqlen')}")


def check_matrices(model: nn.Module, config: PruneConfig) -> None:
    """An N:M pattern every matrix can take, one listed sparsity per block (a skeleton will do)."""
    matrices = prunable_matrices(model)
    for mat in matrices:  # before any minutes are spent on the dense perplexity
        check_pattern(config.nm, mat.shape[1], mat.name)
    blocks = len({mat.block for mat in matrices})
    if config.rule.sets_target:
        alloc.check_list_length(config.param("block_list"), blocks)
    if config.rule.check is not None:  # e.g. ATP's beta against this depth's largest
        config.rule.check(config.rule_params(), config.sparsity, blocks)


def _check_resources(model: nn.Module, config: PruneConfig) -> None:
    """A seqlen the model cannot take, or no memory for the pruned copy: say so up front."""
    from alphaprune.models import available_memory_bytes

    check_context(model, config.seqlen)
    check_matrices(model, config)
    need = sum(p.numel() * p.element_size() for p in model.parameters())
    have = available_memory_bytes()
    if have is not None and need > 0.8 * have:
        raise UserError(
            f"pruning in memory needs a copy of the model ({need / 2**30:.1f} GiB) but {have / 2**30:.1f} GiB is "
            f"free; set {setting('offload')} cpu (block by block, no copy) or close other runs"
        )


def read_texts(tokenizer, config: PruneConfig):
    """(evaluation text, its windows, calibration token ids or None): every text error first."""
    eval_text = text.read_text(config.eval)
    eval_ids = text.tokenize(eval_text, tokenizer)
    eval_windows = text.evaluation_windows(eval_ids, config.seqlen, config.eval_windows)
    calib_ids = None
    if not config.needs_calibration:
        text.check_source(config.calib)  # a bad source is an error even when this run does not read it
        return eval_text, eval_windows, calib_ids
    calib_text = text.read_text(config.calib)
    calib_ids = text.tokenize(calib_text, tokenizer)
    text.calibration_windows(calib_ids[: config.seqlen + 1], 1, config.seqlen)  # long enough?
    if config.auto_params():
        text.heldout_windows(calib_ids, config.seqlen, HELDOUT_WINDOWS)
        _check_heldout_unseen(calib_text, calib_ids, eval_text, eval_windows)
    return eval_text, eval_windows, calib_ids


def _check_heldout_unseen(calib_text, calib_ids, eval_text, eval_windows) -> None:
    """An auto search must never score its candidates on text the evaluation also reads."""
    if calib_text.digest != eval_text.digest:
        return
    cut = len(text.split_heldout(calib_ids)[0])
    if eval_windows.numel() > cut:  # the evaluation's windows reach into the held-out tail
        room = cut // eval_windows.shape[1]
        raise UserError(
            "an auto search scores its candidates on the end of the calibration text, which the evaluation "
            f"also reads (same text); evaluate on another text or pass {setting('eval_windows')} {room} or fewer"
        )


def run_prune(loaded, config: PruneConfig, analysis=None, progress: Progress | None = None) -> PruneResult:
    """Prune a copy of `loaded.model` as configured and measure it (see the module docstring)."""
    from alphaprune.placement import refuse_offloaded_for_pruning

    refuse_offloaded_for_pruning(loaded.model)
    config.validate()
    model, clock, seconds = loaded.model, time.perf_counter(), {}
    _check_resources(model, config)
    eval_text, eval_windows, calib_ids = read_texts(loaded.tokenizer, config)
    calib = None
    if calib_ids is not None:
        calib = text.calibration_windows(calib_ids, config.calib_samples, config.seqlen, config.seed)
    fp = analysis.fingerprint if analysis is not None and analysis.fingerprint else fingerprint(model)
    seconds["texts"] = time.perf_counter() - clock
    t = time.perf_counter()
    ppl_before = dense_perplexity(
        model, fp, eval_text, eval_windows, config.batch_size, _stage(progress, 0.0, 0.25, "dense perplexity")
    )
    seconds["eval_before"] = time.perf_counter() - t
    search: tuple = ()
    if config.auto_params():
        t = time.perf_counter()
        best, search = _search(model, config, analysis, calib_ids, _stage(progress, 0.25, 0.5, "search"))
        config = dataclasses.replace(config, **best)
        seconds["search"] = time.perf_counter() - t
    t = time.perf_counter()
    allocation = make_allocation(model, config, analysis, calib, _stage(progress, 0.5, 0.55, "allocation"), loaded.name)
    seconds["allocation"] = time.perf_counter() - t
    t = time.perf_counter()
    pruned = prune_copy(model, allocation, config, calib, _stage(progress, 0.55, 0.8, config.pruner))
    seconds["prune"] = time.perf_counter() - t
    t = time.perf_counter()
    ppl_after = perplexity(pruned, eval_windows, config.batch_size, _stage(progress, 0.8, 1.0, "perplexity"))
    seconds["eval_after"] = time.perf_counter() - t
    actual, per_matrix = measured_sparsity(pruned)
    fp_after = _check_intact(model, fp)
    seconds["total"] = time.perf_counter() - clock
    return PruneResult(
        loaded.name,
        fp,
        config,
        allocation,
        ppl_before,
        ppl_after,
        actual,
        per_matrix,
        seconds,
        search,
        pruned,
        windows_measured=len(eval_windows),
        dense_fingerprint_after=fp_after,
        protocol=text.protocol(loaded.tokenizer).as_dict(),
    )


def _check_intact(model: nn.Module, fp_before: str) -> str:
    """The dense model's fingerprint now; UserError if it is not the one the run started from.

    The dense model may be shared (the app's sessions share one cached copy), and only a
    deep copy is pruned: a changed fingerprint means something wrote to it meanwhile, and
    the run's numbers are not to be trusted or stored (~0.2 s for SmolLM2-135M)."""
    fp_after = fingerprint(model)
    if fp_after != fp_before:
        raise UserError(
            f"the dense model's weights changed while pruning (fingerprint {fp_before[:12]} -> {fp_after[:12]}); "
            "the run is not stored: load the model again and rerun"
        )
    return fp_after


def run_eval(loaded, source: str, seqlen: int, windows: int | None, batch_size: int = 1, progress=None):
    """(perplexity, seconds, weights fingerprint) of a model as it is, on the first `windows`
    windows of a text."""
    start = time.perf_counter()
    eval_text = text.read_text(source)
    eval_windows = text.evaluation_windows(text.tokenize(eval_text, loaded.tokenizer), seqlen, windows)
    fp = fingerprint(loaded.model)
    ppl = dense_perplexity(loaded.model, fp, eval_text, eval_windows, batch_size, progress)
    return ppl, time.perf_counter() - start, fp
