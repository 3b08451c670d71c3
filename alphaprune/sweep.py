"""A grid of prune runs (rule x pruner x sparsity x any parameter), one after another or as Ray tasks.

    configs = grid(base, epsilons=[0.2, 0.3], sparsities=[0.5, 0.7], pruners=["wanda"], rules=[])
    configs = grid(base, rules=["atp", "owl"], values={"beta": [0.005, 0.01], "owl_lambda": [0.04, 0.08]})
    sid = sweep_id("smollm2-135m", configs)           # the same grid, the same id: it resumes
    todo = pending(RunStore(), "smollm2-135m", configs, sid)
    run_sequential(loaded, todo, sid, len(configs), store, progress)         # in this process
    run_ray("local", ModelSpec("smollm2-135m"), todo, sid, len(configs), store, progress)  # or on Ray

Each cell is one pruning run stored under the sweep's id with its cell key (a digest of its
settings) and the grid's size, so a rerun of an interrupted sweep does only the cells not yet
stored, and the Runs page can show how far a sweep has come. On Ray, every task loads the
model, prunes one cell and returns its record; only the driver writes the run store. A task
asks for one GPU when the cluster has one, else one CPU (a local cluster of N workers holds up
to N models at once). On a remote cluster the workers need this checkout, the model and the
texts at the same paths (a shared filesystem). Ray is an optional extra
(`pip install alphaprune[ray]`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from pathlib import Path

from alphaprune.config import PruneConfig
from alphaprune.errors import UserError

PREFIX = "sweep-"
INSTALL = "pip install 'alphaprune[ray]'"
ROOT = Path(__file__).resolve().parents[1]


def grid(base: PruneConfig, epsilons=(), sparsities=(), pruners=(), rules=(), values=None) -> list[PruneConfig]:
    """Every combination, rules outermost, then pruners, sparsities and the varied parameters;
    each validated. An empty axis keeps `base`'s value. `values` (parameter name -> its values,
    e.g. {"beta": [0.005, 0.01]}) and `epsilons` (values["epsilon"]) vary a parameter in the
    cells whose rule, pruner or refiner owns it; the other cells run once."""
    from alphaprune import registry

    varied = dict(values or {})
    if epsilons:
        varied["epsilon"] = list(epsilons)
    cells, used = [], set()
    for rule in rules or [base.allocation]:
        for pruner in pruners or [base.pruner]:
            owned = {p.name for p in registry.params_of(rule, pruner, base.refine)}
            names = [name for name in varied if name in owned]
            used.update(names)
            for sparsity in sparsities or [base.sparsity]:
                for combo in itertools.product(*(varied[name] for name in names)):
                    extra = dict(zip(names, combo, strict=True))
                    config = dataclasses.replace(base, allocation=rule, pruner=pruner, sparsity=sparsity, **extra)
                    config.validate()
                    cells.append(config)
    unused = sorted(varied.keys() - used)
    if unused:
        what = "no rule, pruner or refiner of this sweep has it"
        raise UserError(f"{unused[0]} is varied, but {what}; name one that does")
    return cells


def cell_key(config: PruneConfig) -> str:
    """A digest of what identifies the cell's run (PruneConfig.identity)."""
    return hashlib.sha1(json.dumps(config.identity(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def sweep_id(model_name: str, configs: list[PruneConfig]) -> str:
    """The sweep's id: its model and its cells, so the same grid run again is the same sweep."""
    doc = {"model": model_name, "cells": sorted(cell_key(c) for c in configs)}
    return PREFIX + hashlib.sha1(json.dumps(doc).encode()).hexdigest()[:12]


def pending(store, model_name: str, configs: list[PruneConfig], sid: str) -> list[PruneConfig]:
    """The cells without a stored run under this sweep, in grid order."""
    done = {r.settings.get("cell") for r in store.list(model=model_name, kind="prune", sweep=sid)}
    return [c for c in configs if cell_key(c) not in done]


def cell_record(result, sid: str, cells: int, config: PruneConfig):
    """The record of one cell: the run's, with its cell key and the grid's size. The key is the
    cell's own `config` (pending's), not the run's: an "auto" cell's run carries the values chosen."""
    record = result.record(sweep=sid)
    settings = {**record.settings, "cell": cell_key(config), "sweep_cells": cells}
    return dataclasses.replace(record, settings=settings)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model (alphaprune.models.load_model's arguments)."""

    spec: str
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False

    def load(self):
        from alphaprune.models import load_model

        return load_model(self.spec, self.dtype, self.device, self.trust_remote_code)


def prune_cell(loaded, config: PruneConfig, sid: str, cells: int, progress=None):
    """One cell on a loaded model: the analysis if its rule needs one (cached), the run, its record."""
    from alphaprune import registry
    from alphaprune.pipeline import analysis_options, run_prune

    analysis = None
    if config.rule.needs == registry.ANALYSIS:
        from alphaprune.analysis import analyze

        analysis = analyze(loaded.model, loaded.name, device=loaded.device, **analysis_options(config))
    result = run_prune(loaded, config, analysis, progress=progress)
    return result, cell_record(result, sid, cells, config)


def run_sequential(loaded, todo: list[PruneConfig], sid: str, cells: int, store, progress=None,
                   stored=None) -> list[int]:  # fmt: skip
    """The pending cells one after another in this process; the stored run ids. `stored(id,
    record)` is told of each cell as it is stored (the CLI prints it then, not at the end)."""
    ids = []
    for i, config in enumerate(todo):
        stage = None if progress is None else (lambda f, m, i=i: progress((i + f) / len(todo), m))
        _, record = prune_cell(loaded, config, sid, cells, stage)
        ids.append(_keep(store, record, stored))
    return ids


def _keep(store, record, stored=None) -> int:
    """Store one cell's record (the driver alone writes the store) and tell `stored`."""
    run_id = store.add(record)
    if stored is not None:
        stored(run_id, record)
    return run_id


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def _remote_cell(model: ModelSpec, config: PruneConfig, sid: str, cells: int) -> dict:
    """A Ray task's body: load, prune one cell, return its record as a dict (never stores it)."""
    _, record = prune_cell(model.load(), config, sid, cells)
    return record.to_dict()


def start_ray(address: str, workers: int | None = None):
    """ray.init for `address` ("local": a cluster of this machine's, `workers` CPUs), with
    this checkout importable and the same cache and data folders in every worker."""
    ray = _ray()
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.update({k: v for k, v in os.environ.items() if k.startswith("ALPHAPRUNE_")})
    options = dict(runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False)
    if address == "local":
        options.update(num_cpus=workers or os.cpu_count())
    else:
        options.update(address=address)
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot start or reach Ray at {address}: {str(exc).splitlines()[0][:200]}") from None
    return ray


def run_ray(address: str, model: ModelSpec, todo: list[PruneConfig], sid: str, cells: int, store,
            progress=None, workers: int | None = None, stored=None) -> list[int]:  # fmt: skip
    """The pending cells as Ray tasks (one GPU each when the cluster has GPUs, else one CPU);
    each finished cell is stored by this driver as it lands (and `stored` told). The stored run ids."""
    if not todo:
        return []
    ray = start_ray(address, workers)
    try:
        gpu = ray.cluster_resources().get("GPU", 0) >= 1
        task = ray.remote(num_gpus=1, num_cpus=0)(_remote_cell) if gpu else ray.remote(num_cpus=1)(_remote_cell)
        waiting = [task.remote(model, config, sid, cells) for config in todo]
        ids = []
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            from alphaprune.runs import RunRecord

            ids.append(_keep(store, RunRecord.from_dict(_result(ray, done[0])), stored))
            if progress is not None:
                progress(len(ids) / len(todo), f"{len(ids)} of {len(todo)} cells stored")
        return ids
    finally:
        ray.shutdown()


def _result(ray, ref) -> dict:
    """A task's record, or the task's own one-line error (a UserError stays one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:  # a task's error, a crashed worker, memory, ...
        cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
        message = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise UserError(f"a sweep cell failed on Ray ({type(exc).__name__}): {message[:300]}; the cells "
                        "stored so far are kept, run the same sweep again to resume") from None  # fmt: skip


def progress_of(records) -> list[dict]:
    """Per sweep of the given runs (newest first): its id, cells stored and cells in its grid."""
    seen: dict[str, dict] = {}
    for r in records:
        cells = r.settings.get("sweep_cells")
        if r.sweep and cells:
            entry = seen.setdefault(r.sweep, {"sweep": r.sweep, "stored": 0, "cells": int(cells), "last": r.created})
            entry["stored"] += 1
            entry["last"] = max(entry["last"], r.created)
    return sorted(seen.values(), key=lambda e: e["last"], reverse=True)
