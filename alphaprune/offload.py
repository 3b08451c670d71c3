"""A pruning or evaluation run streamed block by block: the preflight's "cpu" and "disk" paths.

Where alphaprune/pipeline.py prunes a copy of a model held in memory, this runs the same
steps with one decoder block resident at a time (alphaprune/stream.py): the dense weights
come from the model in memory ("cpu", never modified) or from the checkpoint files
("disk"), the pruned blocks go straight into a save folder as safetensors shards, and the
perplexity after is measured on that folder, streamed again. Texts, windows, allocations,
the dense-perplexity cache and the run record are pipeline.py's own, so a streamed run and
an in-memory run of the same settings give the same numbers (tests/test_offload.py).

    plan = preflight.plan_step("prune", shape, work, offload="disk")
    source = open_checkpoint(checkpoint_location("path/to/model"))   # or MemorySource(model)
    result = run_streamed(source, tokenizer, "my-model", config, "pruned/", plan, progress=cb)
    result.ppl_before, result.ppl_after, result.record().settings["offload"]   # "disk"

Without a save folder the pruned shards go to a temporary folder in the cache, removed
once the perplexity after is measured.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from alphaprune import cache, pipeline, text
from alphaprune.arch import all_matrices
from alphaprune.config import PruneConfig
from alphaprune.errors import UserError, setting
from alphaprune.paths import cache_dir

Progress = Callable[[float, str], None]


def source_skeleton(source):
    """The meta-device model of a weight source (a checkpoint's, or the model's own layout)."""
    from alphaprune.checkpoint import skeleton

    return source.skeleton() if hasattr(source, "skeleton") else skeleton(source.config)


def source_fingerprint(source) -> str:
    """cache.weights_fingerprint of the source's matrices as a float32 model in memory holds
    them, so a streamed run shares the caches (analysis, dense perplexity) of an in-memory one."""
    model = getattr(source, "model", None)
    if model is not None and next(model.parameters()).device.type != "meta":
        if next(model.parameters()).dtype == torch.float32:
            return pipeline.fingerprint(model)
    refs = all_matrices(source_skeleton(source))
    return cache.weights_fingerprint(refs, lambda ref: source.tensor(ref.tensor_name), as_dtype=torch.float32)


def check_streamed(skeleton, config: PruneConfig) -> None:
    """What pipeline checks before an in-memory run, on the skeleton (no weights needed)."""
    for name in config.auto_params():
        raise UserError(
            f"{setting(name)} auto prunes the model once per candidate, which a streamed run does not do: "
            "give a number (or run in memory)"
        )
    pipeline.check_context(skeleton, config.seqlen)
    pipeline.check_matrices(skeleton, config)


def checkpoint_tokenizer(ckpt):
    """The tokenizer stored with a checkpoint; UserError when it has none (texts need one)."""
    from alphaprune.stream import stored_tokenizer

    tokenizer = stored_tokenizer(ckpt)
    if tokenizer is None:
        raise UserError(f"{ckpt.location} has no tokenizer files: save the tokenizer into the model folder too")
    return tokenizer


def _save_folder(save: str | Path | None) -> tuple[Path, bool]:
    """(folder the shards go to, whether it is a temporary one)."""
    if save is not None:
        return Path(save).expanduser(), False
    return cache_dir() / "streamed" / uuid.uuid4().hex[:12], True


def _allocation(source, skeleton, config: PruneConfig, analysis, calib, fp: str, progress, name: str, device):
    """make_allocation on the skeleton; a rule's per-block statistic (OWL's, DLP's) and the
    analysis, where the rule needs them, computed block by block or from the files."""
    from alphaprune import registry

    rule, statistics = config.rule, None
    if rule.statistic is not None:
        from alphaprune.stream import stream_block_statistics

        params = config.rule_params()
        compute = lambda: stream_block_statistics(source, calib, rule.statistic, params, progress, device)  # noqa: E731
        statistics = pipeline.cached_statistics(None, config, calib, fp=fp, compute=compute)
    options = pipeline.analysis_options(config)
    if rule.needs == registry.ANALYSIS and (
        analysis is None or any(getattr(analysis, k) != v for k, v in options.items())
    ):
        analysis = analyze_source(source, name, progress, **options)
    return pipeline.make_allocation(skeleton, config, analysis, calib, progress, name, statistics)


def plan_for(spec: str, step: str, offload: str = "auto", device: str = "auto", dtype: str = "auto", **work):
    """(preflight plan, checkpoint) for `step` on the files of model `spec`: in memory or
    streamed (alphaprune/preflight.py); `work` are preflight.Work's fields. Under offload
    "auto" a model whose files cannot be opened for streaming (a hub id not downloaded, a
    damaged file), or a GGUF not yet dequantized (opening one takes ~8 s), takes the
    in-memory path, whose loading then says what is wrong or refuses it with numbers:
    (None, None). A path that cannot fit: UserError with the numbers."""
    from alphaprune.checkpoint import checkpoint_location, open_checkpoint
    from alphaprune.preflight import ModelShape, Work, plan_step
    from alphaprune.spectra import resolve_device

    try:
        location = checkpoint_location(spec)
        if offload == "auto" and location.endswith(".gguf"):
            return None, None  # quantized, so small: loading it (and its memory check) is the plan
        ckpt = open_checkpoint(location)
        skeleton = ckpt.skeleton()
    except Exception:
        if offload == "auto":
            return None, None
        raise
    device = str(resolve_device(device))
    compute = 4 if dtype == "float32" or (dtype == "auto" and device == "cpu") else 2  # as load_model
    shape = ModelShape.from_model(skeleton, ckpt.dtype.itemsize)
    return plan_step(step, shape, Work(compute_bytes=compute, **work), offload, device=device), ckpt


def analyze_source(source, name: str, progress=None, precision: str = "auto", use_cache: bool = True, **options):
    """The analysis of a weight source: from the files for a checkpoint, else of the model.
    `options`: more of analysis.analyze's keywords (farms=...)."""
    from alphaprune.analysis import analyze

    model = getattr(source, "model", None)
    if model is not None and next(model.parameters()).device.type != "meta":
        return analyze(model, name, precision, use_cache=use_cache, progress=progress, **options)
    return analyze(source, name, precision, use_cache=use_cache, progress=progress, **options)


def run_streamed(source, tokenizer, name: str, config: PruneConfig, save=None, plan=None, analysis=None,
                 progress: Progress | None = None, device: str = "cpu") -> pipeline.PruneResult:  # fmt: skip
    """pipeline.run_prune, one block resident at a time (see the module docstring)."""
    from alphaprune.stream import stream_perplexity

    config.validate()
    skeleton = source_skeleton(source)
    check_streamed(skeleton, config)
    clock, seconds = time.perf_counter(), {}
    eval_text, eval_windows, calib_ids = pipeline.read_texts(tokenizer, config)
    calib = None
    if calib_ids is not None:
        calib = text.calibration_windows(calib_ids, config.calib_samples, config.seqlen, config.seed)
    fp = analysis.fingerprint if analysis is not None and analysis.fingerprint else source_fingerprint(source)
    seconds["texts"] = time.perf_counter() - clock

    def dense() -> float:
        stage = pipeline._stage(progress, 0.0, 0.3, "dense perplexity")
        return stream_perplexity(source, eval_windows, config.batch_size, stage, device)

    t = time.perf_counter()
    ppl_before = pipeline.cached_perplexity(fp, eval_text, eval_windows, torch.device(device).type, dense)
    seconds["eval_before"] = time.perf_counter() - t
    t = time.perf_counter()
    allocating = pipeline._stage(progress, 0.3, 0.4, "allocation")
    allocation = _allocation(source, skeleton, config, analysis, calib, fp, allocating, name, device)
    seconds["allocation"] = time.perf_counter() - t
    meta = {"model": name, "ppl_before": ppl_before, **config.to_dict()}
    pruned, ppl_after, folder = _prune_and_measure(source, tokenizer, allocation, config, calib, eval_windows, save,
                                                   progress, device, seconds, meta)  # fmt: skip
    seconds["total"] = time.perf_counter() - clock
    return pipeline.PruneResult(
        name, fp, config, allocation, ppl_before, ppl_after, pruned.actual_sparsity, pruned.matrix_sparsity,
        seconds, windows_measured=len(eval_windows), dense_fingerprint_after=_recheck(source, fp),
        offload=_ran(plan, source, pruned),
        saved=folder, protocol=text.protocol(tokenizer).as_dict(),
    )  # fmt: skip


def _prune_and_measure(source, tokenizer, allocation, config, calib, eval_windows, save, progress, device, seconds,
                       meta):  # fmt: skip
    """(stream_prune's result, perplexity of the pruned folder, the folder or None when it
    was a temporary one, removed once measured)."""
    from alphaprune.checkpoint import open_checkpoint
    from alphaprune.stream import stream_perplexity, stream_prune

    folder, temporary = _save_folder(save)
    try:
        t = time.perf_counter()
        pruning = pipeline._stage(progress, 0.4, 0.75, config.pruner)
        finish = None if temporary else _export_files(allocation, config, meta)
        pruned = stream_prune(source, allocation.ratios, config.pruner, config.nm, calib, folder, pruning, device,
                              tokenizer=tokenizer, finish=finish, params=config.pruner_params(),
                              refine=config.refine)  # fmt: skip
        seconds["prune"] = time.perf_counter() - t
        t = time.perf_counter()
        after = pipeline._stage(progress, 0.75, 1.0, "perplexity")
        ppl_after = stream_perplexity(open_checkpoint(str(folder)), eval_windows, config.batch_size, after, device)
        seconds["eval_after"] = time.perf_counter() - t
        if not temporary:
            _record_after(folder, ppl_after, pruned.actual_sparsity)
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    return pruned, ppl_after, None if temporary else str(folder)


def _ran(plan, source, pruned) -> dict:
    """The run record's account of the path: the plan, and where and in which dtype the
    blocks were computed and saved."""
    ran = plan.to_dict() if plan is not None else {"offload": "cpu" if hasattr(source, "model") else "disk"}
    ran.update(device=pruned.device, compute_dtype=pruned.dtype, saved_dtype=pruned.saved_dtype)
    return ran


def _export_files(allocation, config: PruneConfig, meta: dict):
    """stream_prune's `finish`: the ratios JSON and recipe of an alphaprune export, written
    into the folder before it appears (as export.save_pruned writes them)."""
    from alphaprune.export import write_export_files

    return lambda folder, zeros: write_export_files(folder, allocation.ratios, allocation.block_ratios, zeros, meta)


def _record_after(folder: Path, ppl_after: float, sparsity: float) -> None:
    """The perplexity after, measured on the saved folder, added to its ratios JSON (atomically)."""
    import json

    from alphaprune import atomic
    from alphaprune.export import RATIOS_FILE

    path = Path(folder) / RATIOS_FILE
    record = json.loads(path.read_text())
    record["metadata"].update(ppl_after=ppl_after, actual_sparsity=sparsity)
    atomic.write_text(path, json.dumps(record, indent=1) + "\n")


def _recheck(source, fp: str) -> str | None:
    """The dense model in memory is shared and must be untouched: its fingerprint again."""
    if getattr(source, "model", None) is None:
        return None  # files on disk: streaming only reads them
    now = source_fingerprint(source)
    if now != fp:
        raise UserError(f"the dense model's weights changed while pruning ({fp[:12]} -> {now[:12]}): rerun")
    return now


def eval_streamed(source, tokenizer, eval_source: str, seqlen: int, windows: int | None, batch_size: int = 1,
                  progress: Progress | None = None, device: str = "cpu") -> tuple[float, float, str]:  # fmt: skip
    """pipeline.run_eval block by block: (perplexity, seconds, weights fingerprint)."""
    from alphaprune.stream import stream_perplexity

    start = time.perf_counter()
    pipeline.check_context(source_skeleton(source), seqlen)
    eval_text = text.read_text(eval_source)
    eval_windows = text.evaluation_windows(text.tokenize(eval_text, tokenizer), seqlen, windows)
    fp = source_fingerprint(source)
    compute = lambda: stream_perplexity(source, eval_windows, batch_size, progress, device)  # noqa: E731
    ppl = pipeline.cached_perplexity(fp, eval_text, eval_windows, torch.device(device).type, compute)
    return ppl, time.perf_counter() - start, fp
