"""Command line: `python -m alphaprune COMMAND ...`.

    python -m alphaprune analyze                          # default model, table on stdout
    python -m alphaprune analyze --model path/to/model.gguf --out layers.csv
    python -m alphaprune analyze --no-cache --precision float64 --out analysis.json
    python -m alphaprune allocate --sparsity 0.7 --allocation alphapruning --epsilon 0.3 --out ratios.json
    python -m alphaprune prune --sparsity 0.7 --pruner wanda --allocation alphapruning \
        --calib calib.txt --calib-samples 32 --seqlen 1024 --eval test.raw --eval-windows 32 --save out/
    python -m alphaprune eval --model out/ --eval test.raw --seqlen 1024
    python -m alphaprune sweep --pruner magnitude --allocation alphapruning --epsilons 0.1,0.2,0.3 --sparsities 0.6,0.7
    python -m alphaprune sweep --rules atp,owl --vary beta=0.005,0.01 --vary owl_lambda=0.04,0.08
    python -m alphaprune runs [--export runs.csv] [--delete 3,4]

Every prune, sweep and eval run is stored in the run history (alphaprune/runs.py).

Progress goes to stderr as a bar. Bad input (unknown model, missing file, a model that is
not a causal LM ...) prints one line `alphaprune: error: ...` and exits with code 2, and
is found before a model is loaded wherever it can be: settings, devices, folders and texts
are checked first (`_preflight`). Building the parser imports no torch, so a mistyped
flag is answered at once. The catalogue of bad inputs: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path

from alphaprune import atomic
from alphaprune.errors import UserError, setting

EXIT_USER_ERROR = 2


def _progress_bar(desc: str) -> tuple[Callable[[float, str], None], Callable[[], None]]:
    """A (callback, close) pair drawing a tqdm bar on stderr, from the first update on: a
    run refused by its checks prints its one error line and nothing else."""
    from tqdm import tqdm

    bars = []

    def update(fraction: float, message: str) -> None:
        if not bars:
            bars.append(tqdm(total=100, desc=desc, file=sys.stderr, leave=False, bar_format="{l_bar}{bar}| {elapsed}"))
        bar, step = bars[0], round(100 * fraction)
        if step > bar.n:  # tqdm's own rate limit applies to update(), not to refresh()
            bar.set_postfix_str(message, refresh=False)
            bar.update(step - bar.n)

    def close() -> None:
        for bar in bars:
            bar.close()

    return update, close


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from alphaprune.models import DEFAULT_MODEL, DEVICES, DTYPES
    from alphaprune.preflight import OFFLOADS

    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled alias, .gguf file, model folder or hub id")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    p.add_argument(
        "--offload",
        default="auto",
        choices=OFFLOADS,
        help="none: whole model in memory; cpu: held in memory, run block by block; "
        "disk: read block by block from its files; auto: the first that fits (measured free memory)",
    )
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code (off by default)")
    p.add_argument("--device-map", metavar="MAP", help="spread the model over devices with accelerate: auto, "
                   "balanced, sequential or FILE.json (module prefix -> GPU index, cpu or disk; disk: eval only); "
                   "the in-memory path, --offload is then not used")  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alphaprune", description="Layer spectra and sparsity allocation for LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("analyze", help="spectra, power-law alphas and metrics of every weight matrix")
    _add_model_args(p)
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "float64"])
    p.add_argument("--no-cache", action="store_true", help="recompute the spectra, bypassing the cache")
    p.add_argument("--out", type=Path, help="write FILE.json or FILE.csv (else a table on stdout)")
    p.add_argument("--farms", action="store_true", help="also alpha_farms, the FARMS alpha of pooled windows (slower)")
    p.add_argument(
        "--compare-tails", action="store_true",
        help="also test each tail against a truncated power law, a lognormal and an exponential (slower; cached)",
    )  # fmt: skip
    from alphaprune import registry
    from alphaprune.rules.farms import ANALYSIS_PARAMS

    _add_params(p, registry.rules(), only=tuple(q.name for q in ANALYSIS_PARAMS))  # the --farms metric's settings
    p.set_defaults(func=cmd_analyze)
    _add_allocate(sub)
    _add_prune(sub)
    _add_eval(sub)
    _add_sweep(sub)
    _add_compare(sub)
    _add_runs(sub)
    return parser


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _run_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated run ids such as 3,4, got {text!r}") from None
    if any(i < 1 for i in ids):
        raise argparse.ArgumentTypeError(f"run ids are whole numbers from 1, got {text!r}")
    return ids


def _param_type(spec):
    """argparse's type for a registry parameter: its own parser, errors in argparse's words."""

    def parse(text: str):
        try:
            return spec.parse(text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = spec.kind
    return parse


def _spec_lines(specs) -> str:
    return "; ".join(f"{s.name}: {s.summary}" for s in specs.values())


def param_help(spec, owners: list[str]) -> str:
    """A parameter's --help text, from its spec: what it does, whose it is, range, default."""
    default = "none" if spec.default is None else f"{spec.default:g}" if spec.kind == "float" else str(spec.default)
    return f"{spec.help} ({', '.join(owners)}); {spec.range_text}; default {default}"


def _add_params(p: argparse.ArgumentParser, specs: dict, only: tuple[str, ...] | None = None) -> None:
    """One flag per parameter of the given rules or pruners (alphaprune/registry.py)."""
    owners: dict[str, list[str]] = {}
    for spec in specs.values():
        for param in spec.params:
            if only is None or param.name in only:
                owners.setdefault(param.name, []).append(spec.name)
    from alphaprune import registry

    for name, whose in owners.items():
        param = registry.param(name)
        p.add_argument(param.cli_flag, dest=name, type=_param_type(param), help=param_help(param, whose))


def _add_allocation_args(p: argparse.ArgumentParser) -> None:
    from alphaprune import allocation as alloc
    from alphaprune import registry

    p.add_argument("--sparsity", type=float, default=_default("sparsity"),
                   help="target (parameter-weighted) sparsity in (0, 1)")  # fmt: skip
    rules = registry.rules()
    p.add_argument("--allocation", default=_default("allocation"), choices=list(rules), help=_spec_lines(rules))
    p.add_argument("--mapping", default=_default("mapping"), choices=alloc.MAPPINGS,
                   help="one ratio per block or per matrix")  # fmt: skip
    _add_params(p, rules)
    ceiling = alloc.CEILING
    p.add_argument(ceiling.cli_flag, dest="max_sparsity", type=_param_type(ceiling), default=ceiling.default,
                   help=param_help(ceiling, ["every rule"]))  # fmt: skip


def _default(name: str):
    """A run setting's default: PruneConfig's field (alphaprune/config.py) is the one place it is set."""
    from alphaprune.config import PruneConfig

    return getattr(PruneConfig, name)


def _add_data_args(p: argparse.ArgumentParser, calibration: bool = True, evaluation: bool = True) -> None:
    p.add_argument("--seqlen", type=int, default=_default("seqlen"), help="tokens per calibration / evaluation window")
    if calibration:
        p.add_argument("--calib", default=_default("calib"), help="python-docs, wikitext2 or a text file")
        p.add_argument("--calib-samples", type=int, default=_default("calib_samples"))
        p.add_argument("--seed", type=int, default=_default("seed"))
    if evaluation:
        p.add_argument("--eval", default=_default("eval"), help="python-docs, wikitext2 or a text file")
        p.add_argument("--eval-windows", type=int, help="first W windows of the evaluation text (default all)")
        p.add_argument("--batch-size", type=int, default=_default("batch_size"),
                       help="windows per forward pass when evaluating")  # fmt: skip
    if calibration and evaluation:
        p.add_argument("--search-budget", type=int, default=_default("search_budget"),
                       help="most prune runs of an 'auto' search")  # fmt: skip


def _add_prune_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    _add_allocation_args(p)
    # checked by PruneConfig.validate (alphaprune/config.py), which names the setting to change
    _add_pruner_args(p)
    p.add_argument("--pattern", default=_default("pattern"), help="unstructured, 2:4, 4:8 (N:M: N of every M removed)")
    _add_data_args(p)


def _add_pruner_args(p: argparse.ArgumentParser) -> None:
    from alphaprune import registry

    pruners, refiners = registry.pruners(), registry.refiners()
    p.add_argument("--pruner", default=_default("pruner"), help=f"one of {', '.join(pruners)} ({_spec_lines(pruners)})")
    _add_params(p, pruners)
    choices = [registry.NO_REFINER, *refiners]
    p.add_argument("--refine", default=_default("refine"), choices=choices, help=_spec_lines(refiners))
    _add_params(p, refiners)


def _add_allocate(sub) -> None:
    p = sub.add_parser("allocate", help="layer-wise sparsity ratios only (AlphaPruning needs no data)")
    _add_model_args(p)
    _add_allocation_args(p)
    _add_data_args(p, evaluation=False)
    p.add_argument("--pruner", default=_default("pruner"), help="pruner named in an exported llm-compressor recipe")
    p.add_argument("--out", type=Path, help="ratios as FILE.json, FILE.csv or an llm-compressor FILE.yaml")
    p.set_defaults(func=cmd_allocate)


def _add_prune(sub) -> None:
    p = sub.add_parser("prune", help="prune a copy of the model and compare perplexity before and after")
    _add_prune_args(p)
    p.add_argument("--save", type=Path, help="write the pruned model (Hugging Face format) and its ratios here")
    p.add_argument("--out", type=Path, help="write the result as FILE.json")
    p.add_argument("--prompt", help="also print the dense and the pruned model's greedy continuation of this text")
    _add_zeroshot_args(p)
    p.set_defaults(func=cmd_prune)


def _add_zeroshot_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("zero-shot accuracy (lm-evaluation-harness, optional extra: alphaprune[lmeval])")
    from alphaprune import zeroshot

    g.add_argument("--tasks", help=f"{zeroshot.TASKS_HELP} (e.g. {zeroshot.DEFAULT_TASKS}); measured on the dense "
                   "and the pruned model in memory")  # fmt: skip
    g.add_argument("--task-limit", type=int, help=zeroshot.LIMIT_HELP)
    g.add_argument("--tasks-path", help=zeroshot.PATH_HELP)


def _zeroshot(args):
    """The ZeroShot to measure, checked before any model is loaded; None without --tasks."""
    if getattr(args, "tasks", None) is None:
        return None
    from alphaprune.zeroshot import ZeroShot, parse_tasks

    spec = ZeroShot(tuple(parse_tasks(args.tasks)), args.task_limit, args.tasks_path)
    spec.check()
    return spec


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a model or of a saved pruned folder")
    _add_model_args(p)
    _add_data_args(p, calibration=False)
    p.add_argument("--out", type=Path, help="write the result as FILE.json")
    _add_zeroshot_args(p)
    p.set_defaults(func=cmd_eval)


def _varied(text: str) -> tuple[str, list]:
    """--vary NAME=V1,V2: a registry parameter and its values, each checked by its spec."""
    from alphaprune import registry

    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in registry.params() or not values.strip():
        raise argparse.ArgumentTypeError(f"give NAME=V1,V2 with a rule's or pruner's parameter, got {text!r}")
    spec = registry.param(name)
    try:
        return name, [spec.check(spec.parse(v.strip())) for v in values.split(",")]
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="one prune run per cell of a grid (rules, pruners, sparsities, parameters)")
    _add_prune_args(p)
    p.add_argument("--epsilons", type=_floats, help="comma-separated epsilons (rules with an epsilon)")
    p.add_argument(
        "--vary", action="append", type=_varied, default=[], metavar="NAME=V1,V2",
        help="also a rule's, pruner's or refiner's parameter over these values, in the cells that have it "
        "(e.g. beta=0.005,0.01 for atp; repeat for more)",
    )  # fmt: skip
    p.add_argument("--sparsities", type=_floats, help="comma-separated target sparsities")
    p.add_argument("--pruners", type=_names, help="comma-separated pruners (default: --pruner)")
    p.add_argument("--rules", type=_names, help="comma-separated allocation rules (default: --allocation)")
    p.add_argument("--ray", metavar="ADDRESS", help="fan the cells out as Ray tasks: 'local' (a cluster on this "
                   "machine) or a cluster's address; needs alphaprune[ray]")  # fmt: skip
    p.add_argument("--workers", type=int, help="with --ray local: CPUs of the local cluster (default: all)")
    p.add_argument("--out", type=Path, help="write the sweep's runs as FILE.csv or FILE.json")
    p.set_defaults(func=cmd_sweep)


def _names(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name, comma-separated")
    return names


def _add_compare(sub) -> None:
    from alphaprune import registry

    p = sub.add_parser("compare", help="one prune run per allocation rule, same pruner and texts, side by side")
    _add_prune_args(p)
    rules = [name for name, rule in registry.rules().items() if not rule.sets_target]
    p.add_argument("--rules", default=",".join(rules), help=f"comma-separated rules (default all: {','.join(rules)})")
    p.add_argument("--out", type=Path, help="write the comparison's runs as FILE.csv or FILE.json")
    p.set_defaults(func=cmd_compare, allocation=None)  # the rules come from --rules


def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list, export or delete stored runs")
    p.add_argument("--model", help="only runs of this model")
    p.add_argument("--kind", choices=["prune", "eval"])
    p.add_argument("--sweep", help="only the runs of this sweep id")
    p.add_argument("--export", type=Path, help="write the (filtered) runs as FILE.csv or FILE.json")
    p.add_argument("--delete", type=_run_ids, help="comma-separated run ids")
    p.add_argument("--report", type=int, metavar="ID", help="write run ID as a one-page HTML report")
    p.add_argument("--report-out", type=Path, metavar="FILE.html", help="where --report writes (default run-ID.html)")
    p.add_argument("--figures", type=int, metavar="ID",
                   help="write each figure of run ID as CSV (data) and HTML (chart; PNG by its camera)")  # fmt: skip
    p.add_argument("--figures-dir", type=Path, metavar="DIR", help="where --figures writes (default .)")
    p.set_defaults(func=cmd_runs)


def _load(args, dtype: str | None = None):
    from alphaprune.models import load_model

    if args.trust_remote_code:
        print(
            "alphaprune: warning: --trust-remote-code runs Python code that comes with the model; "
            "use it only for a model whose source you trust",
            file=sys.stderr,
        )
    dtype = dtype or args.dtype
    device_map = _device_map(args)
    return load_model(args.model, dtype=dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                      device_map=device_map)  # fmt: skip


def _device_map(args, pruning: bool = False):
    """The parsed --device-map (None without one); pruning refuses a map with disk, before any work."""
    from alphaprune.placement import has_disk, parse_device_map

    device_map = parse_device_map(getattr(args, "device_map", None))
    if pruning and has_disk(device_map):
        raise UserError(
            "--device-map puts weights on disk, and pruning rewrites every weight in memory: use a map "
            "without disk (cpu or GPUs) for pruning, or --offload disk to prune block by block from the files"
        )
    return device_map


def _preflight(args, texts: tuple[str, ...] = (), store: bool = False) -> None:
    """What can be refused before a model is loaded: the model spec, the device, the cache and
    data folders (and the run store), and each text that will be read."""
    from alphaprune import models
    from alphaprune.paths import cache_dir, check_writable

    models.check_model(args.model, args.device)
    check_writable(cache_dir(), "ALPHAPRUNE_CACHE")
    if store:
        from alphaprune.runs import RunStore

        RunStore().check()
    for source in dict.fromkeys(texts):  # each once, in order
        from alphaprune import text  # imports torch: only where a run reads text

        text.check_source(source, read=True)


def _plan(args, step: str, **work):
    """(preflight plan, checkpoint) for `step`, or (None, None): the in-memory path
    (alphaprune/offload.py's plan_for decides, for the app too)."""
    from alphaprune.offload import plan_for

    if getattr(args, "device_map", None) is not None:  # accelerate places the model: in memory
        return None, None
    return plan_for(args.model, step, args.offload, args.device, args.dtype, **work)


def _check_out(path: Path | None, suffixes: tuple[str, ...]) -> None:
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise UserError(f"--out must end with {' or '.join(suffixes)}, got {path.name}")
    if not path.parent.exists():
        raise UserError(f"--out folder {path.parent} does not exist")
    if path.is_dir():
        raise UserError(f"--out {path} is a folder: give a file name, e.g. {path / ('result' + suffixes[0])}")
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"cannot write into the --out folder {path.parent}: give a writable folder")


def cmd_analyze(args) -> int:
    _check_out(args.out, (".json", ".csv"))
    _preflight(args)
    from alphaprune.analysis import analysis_workers
    from alphaprune.report import analysis_frame, write_analysis

    plan, ckpt = _plan(args, "analyze", workers=analysis_workers())
    update, close = _progress_bar("analyze")
    try:
        result = _analyze(args, plan, ckpt, update)
    finally:
        close()
    cached = " (cache)" if result.from_cache else ""
    where = "from the files" if plan is not None and plan.streamed else "in memory"
    print(f"analysed {len(result.layers)} matrices {where} in {result.seconds_analysis:.2f} s{cached}", file=sys.stderr)
    tails = _tail_tests(result) if args.compare_tails else None
    if args.out is None:
        columns = ["name", "shape", "alpha_peak", "alpha_mid", "alpha_ks", "D_peak", "stable_rank"]
        columns += ["alpha_farms"] if result.farms is not None else []
        frame = analysis_frame(result, tails)
        print(frame[columns + (["tail_verdict"] if tails else [])].to_string(index=False))
    else:
        write_analysis(result, args.out, tails)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _tail_tests(result) -> dict:
    """The tail tests (alphaprune/tails.py) of every prunable matrix at its alpha_peak xmin, cached."""
    from alphaprune.tails import cached_tails

    prunable = [layer.name for layer in result.layers if layer.prunable]
    update, close = _progress_bar("tails")
    try:
        out = {}
        for i, name in enumerate(prunable):
            out[name] = cached_tails(result, name, "peak")
            update((i + 1) / len(prunable), name)
        return out
    finally:
        close()


def _analyze(args, plan, ckpt, progress):
    """From the files when the plan streams (no model is built), else of the loaded model."""
    from alphaprune.analysis import analyze, analyze_checkpoint

    use_cache, options = not args.no_cache, _farms_options(args)
    if plan is not None and plan.streamed:
        print(f"alphaprune: {plan.describe()}: {ckpt.location}", file=sys.stderr)
        _say_farms_cost(ckpt.skeleton(), **options)
        return analyze_checkpoint(ckpt, args.model, args.precision, args.device, use_cache, progress, **options)
    loaded = _load(args)
    print(f"loaded in {loaded.seconds_load:.1f} s ({loaded.source}, {loaded.device})", file=sys.stderr)
    _say_farms_cost(loaded.model, **options)
    return analyze(loaded.model, args.model, args.precision, loaded.device, use_cache, progress, **options)


def _say_farms_cost(model, farms=None) -> None:
    """Before an analysis with FARMS (analyze's `farms` keyword): what it will cost (alphaprune/
    farms.py's estimate, as the app shows it)."""
    if farms is None:
        return
    from alphaprune.arch import all_matrices
    from alphaprune.farms import estimate_cost

    cost = estimate_cost([tuple(ref.shape) for ref in all_matrices(model)], farms)  # every matrix, as analyze
    print(
        f"FARMS: {cost.windows} windows of up to {farms.window} x {farms.window} ({farms.spectrum}), "
        f"about {cost.seconds:.0f} s on one core (an estimate; none when the analysis is cached)",
        file=sys.stderr,
    )


def _farms_options(args) -> dict:
    """analyze's farms= keyword for --farms (the FARMS rule's own settings), else nothing."""
    if not args.farms:
        return {}
    from alphaprune.rules.farms import ANALYSIS_PARAMS, analysis_options

    given = {q.name: getattr(args, q.name) for q in ANALYSIS_PARAMS}
    return analysis_options(
        {q.name: q.check(q.default if given[q.name] is None else given[q.name]) for q in ANALYSIS_PARAMS}
    )


def _config(args, **override):
    from alphaprune import registry
    from alphaprune.config import PruneConfig

    names = ("sparsity", "pruner", "allocation", "mapping", "pattern", "refine")
    names += ("calib", "calib_samples", "seqlen", "seed", "eval", "eval_windows", "batch_size", "search_budget")
    fields = {name: getattr(args, name) for name in names if hasattr(args, name)}
    given = {name: getattr(args, name, None) for name in registry.params()}
    fields.update({name: value for name, value in given.items() if value is not None})  # unset: the spec's default
    fields["ceiling"] = args.max_sparsity
    fields.update(override)
    config = PruneConfig(**fields)
    config.validate()
    return config


def _analysis_for(loaded, config):
    """The cached analysis when the allocation rule needs it (AlphaPruning, FARMS), else None."""
    from alphaprune import registry

    if config.rule.needs != registry.ANALYSIS:
        return None
    from alphaprune.analysis import analyze
    from alphaprune.pipeline import analysis_options

    options = analysis_options(config)
    _say_farms_cost(loaded.model, **options)
    update, close = _progress_bar("analyze")
    try:
        return analyze(loaded.model, loaded.name, device=loaded.device, progress=update, **options)
    finally:
        close()


def _run_one(loaded, config, analysis, sweep=None, zeroshot=None):
    """Prune + measure + store one configuration (with `zeroshot`, then lm-eval's accuracy before
    and after, stored with it); returns (result, run id, accuracy)."""
    from alphaprune.pipeline import run_prune
    from alphaprune.runs import RunStore

    update, close = _progress_bar(f"{config.pruner} {config.sparsity:g}")
    try:
        result = run_prune(loaded, config, analysis, progress=update)
    finally:
        close()
    store = RunStore()
    run_id = store.add(result.record(sweep=sweep))  # stored first: a failing lm-eval loses nothing measured
    accuracy = {}
    if zeroshot is not None:
        try:
            accuracy = zeroshot.before_after(loaded.model, result.model, loaded.tokenizer)
        except UserError as exc:
            raise UserError(f"{exc} (run {run_id} is stored with its perplexities)") from None
        store.set_accuracy(run_id, accuracy)
    return result, run_id, accuracy


def _print_accuracy(accuracy: dict) -> None:
    from alphaprune.zeroshot import summary

    for line in summary(accuracy) if accuracy else ():
        print(line)


def _summary(result, run_id: int) -> str:
    from alphaprune.preflight import WHERE

    clipped = f", {len(result.allocation.clipped)} matrices held at a bound" if result.allocation.clipped else ""
    own = "".join(f" {k} {_shown(v)}" for k, v in result.config.rule_params().items() if v is not None)
    if result.search:
        from alphaprune.tune import prune_runs

        own += f" (chosen of {len(result.search)} in {prune_runs(result.search)} prune runs on held-out text)"
    return (
        f"run {run_id}: {result.config.pruner} {result.config.allocation}{own} {result.config.pattern}: "
        f"perplexity {result.ppl_before:.3f} -> {result.ppl_after:.3f}, "
        f"sparsity {result.actual_sparsity:.4f}{clipped}, {result.seconds['total']:.0f} s, "
        f"{WHERE[(result.offload or {}).get('offload', 'none')]}"
    )


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _texts_read(config) -> tuple[str, ...]:
    """The text sources a run will read (an unread calibration source is only checked by name)."""
    return (config.eval, config.calib) if config.needs_calibration else (config.eval,)


def cmd_prune(args) -> int:
    _device_map(args, pruning=True)
    config = _config(args)
    _check_out(args.out, (".json",))
    _check_save(args.save)
    _preflight(args, _texts_read(config), store=True)
    samples = config.calib_samples if config.needs_calibration else 0
    plan, ckpt = _plan(args, "prune", samples=samples, seqlen=config.seqlen, batch=1, pruner=config.pruner)
    zeroshot = _zeroshot(args)
    if plan is not None and plan.streamed:
        if zeroshot is not None:
            raise UserError(
                "--tasks needs the pruned model in memory, which a streamed run never holds: drop it, "
                "or evaluate the saved folder: `alphaprune eval --model FOLDER --tasks ...`"
            )
        return _prune_streamed(args, config, plan, ckpt)
    loaded = _load(args)
    result, run_id, accuracy = _run_one(loaded, config, _analysis_for(loaded, config), zeroshot=zeroshot)
    print(_summary(result, run_id))
    _print_accuracy(accuracy)
    if args.prompt is not None:
        from alphaprune.generate import generate

        print(f"dense : {args.prompt}{generate(loaded.model, loaded.tokenizer, args.prompt)}")
        print(f"pruned: {args.prompt}{generate(result.model, loaded.tokenizer, args.prompt)}")
    if args.save is not None:
        _save(result, loaded, args.save)
    if args.out is not None:
        _write_json(args.out, {"run_id": run_id, **result.to_dict()})
    return 0


def _prune_streamed(args, config, plan, ckpt) -> int:
    """cmd_prune block by block: from the files ("disk") or from the model held in memory
    ("cpu"); the pruned model is written to --save (or a temporary folder) as it goes."""
    from alphaprune.offload import check_streamed, checkpoint_tokenizer, run_streamed
    from alphaprune.runs import RunStore
    from alphaprune.stream import MemorySource

    if args.prompt is not None:
        raise UserError("--prompt needs the pruned model in memory, which a streamed run never holds: drop it")
    check_streamed(ckpt.skeleton(), config)
    tokenizer = checkpoint_tokenizer(ckpt)
    source = ckpt
    if plan.path == "cpu":
        source = MemorySource(_load(args, dtype=_stored_dtype(ckpt)).model, tokenizer)
    print(f"alphaprune: {plan.describe()}", file=sys.stderr)
    update, close = _progress_bar(f"{config.pruner} {config.sparsity:g}")
    try:
        result = run_streamed(source, tokenizer, args.model, config, args.save, plan, progress=update,
                              device=_device(args))  # fmt: skip
    finally:
        close()
    run_id = RunStore().add(result.record())
    print(_summary(result, run_id))
    if result.saved is not None:
        print(f"saved the pruned model to {result.saved}", file=sys.stderr)
    if args.out is not None:
        _write_json(args.out, {"run_id": run_id, **result.to_dict()})
    return 0


def _stored_dtype(ckpt) -> str:
    return str(ckpt.dtype).removeprefix("torch.")


def _device(args) -> str:
    from alphaprune.spectra import resolve_device

    return str(resolve_device(args.device))


def _check_save(path: Path | None) -> None:
    """Before any work: a run that cannot be saved where asked is refused, not stored."""
    from alphaprune.export import check_save_folder

    if path is not None:
        check_save_folder(path.expanduser())


def _save(result, loaded, path: Path) -> None:
    from alphaprune.export import save_result

    folder = save_result(result, loaded.tokenizer, path)
    print(f"saved the pruned model to {folder}", file=sys.stderr)


def _write_json(path: Path, doc) -> None:
    import json

    atomic.write_text(path, json.dumps(doc, indent=1, allow_nan=True))
    print(f"wrote {path}", file=sys.stderr)


def cmd_allocate(args) -> int:
    from alphaprune.pipeline import make_allocation
    from alphaprune.text import calibration_windows, token_ids

    config = _config(args)
    for name in config.auto_params():
        raise UserError(f"{setting(name)} auto needs pruning runs to choose; use it with `prune`, or give a number")
    _check_out(args.out, (".json", ".csv", ".yaml"))
    statistic = config.rule.statistic is not None  # OWL's outlier ratios, DLP's: from calibration activations
    _preflight(args, (config.calib,) if statistic else ())
    loaded = _load(args)
    calib = None
    if statistic:
        ids = token_ids(config.calib, loaded.tokenizer)
        calib = calibration_windows(ids, config.calib_samples, config.seqlen, config.seed)
    update, close = _progress_bar("allocate")
    try:
        allocation = make_allocation(loaded.model, config, _analysis_for(loaded, config), calib, update, loaded.name)
    finally:
        close()
    _print_blocks(allocation)
    if args.out is not None:
        _write_allocation(allocation, args.out, args.pruner)
    return 0


def _print_blocks(allocation) -> None:
    raw = allocation.raw_block_ratios
    print(f"{allocation.method}: weighted mean {allocation.mean:.6f}, ceiling {allocation.ceiling}")
    if allocation.clipped:
        print(f"{len(allocation.clipped)} matrices held at a bound; the others rescaled to keep the mean")
    print("block  sparsity  unclipped")
    held = {blk for name, blk in zip(allocation.names, allocation.blocks, strict=True) if name in allocation.clipped}
    for b, (s, r) in enumerate(zip(allocation.block_ratios, raw, strict=True)):
        flag = "  (held at a bound)" if b in held else ""
        print(f"{b:5d}  {s:8.4f}  {r:9.4f}{flag}")


def _write_allocation(allocation, path: Path, pruner: str) -> None:
    suffix = path.suffix.lower()
    if suffix == ".json":
        _write_json(path, allocation.to_dict())
    elif suffix == ".csv":
        import pandas as pd

        frame = pd.DataFrame(
            {
                "name": allocation.names,
                "block": allocation.blocks,
                "params": allocation.params,
                "sparsity": allocation.sparsities,
                "unclipped": allocation.raw,
            }
        )
        with atomic.atomic_file(path, "w", newline="") as handle:
            frame.to_csv(handle, index=False)
        print(f"wrote {path}", file=sys.stderr)
    else:
        from alphaprune.export import llmcompressor_recipe

        atomic.write_text(path, llmcompressor_recipe(allocation.ratios, pruner, dense=True))
        print(f"wrote {path}", file=sys.stderr)


def cmd_eval(args) -> int:
    from alphaprune.config import PruneConfig

    _check_out(args.out, (".json",))
    checked = PruneConfig(
        eval=args.eval, seqlen=args.seqlen, eval_windows=args.eval_windows, batch_size=args.batch_size
    )
    checked.validate()  # the same checks and words as a prune run's
    _preflight(args, (args.eval,), store=True)
    from alphaprune.runs import RunRecord, RunStore, library_versions

    windows = args.eval_windows or 64  # the estimate's guess when all windows are asked for
    plan, ckpt = _plan(args, "eval", samples=windows, seqlen=args.seqlen, batch=args.batch_size)
    zeroshot = _zeroshot(args)
    if zeroshot is not None and plan is not None and plan.streamed:
        raise UserError("--tasks needs the model in memory, and this run streams it block by block: drop --tasks "
                        "or --offload, or use a machine with the memory for it")  # fmt: skip
    update, close = _progress_bar("perplexity")
    try:
        ppl, seconds, fp, device, protocol, rounding, accuracy = _evaluate(args, plan, ckpt, update, zeroshot)
    finally:
        close()
    settings = {"eval": args.eval, "seqlen": args.seqlen, "eval_windows": args.eval_windows}
    settings.update(batch_size=args.batch_size, device=device, offload=plan.path if plan is not None else "none")
    settings["protocol"] = protocol
    settings["numerics"] = rounding
    record = RunRecord(
        kind="eval",
        model=args.model,
        fingerprint=fp,
        settings=settings,
        ppl_after=ppl,
        seconds={"total": seconds},
        versions=library_versions(),
        accuracy=accuracy,
    )
    run_id = RunStore().add(record)
    print(f"run {run_id}: perplexity {ppl:.4f} ({args.eval}, seqlen {args.seqlen}, {seconds:.0f} s)")
    _print_accuracy(accuracy)
    if args.out is not None:
        _write_json(args.out, {"run_id": run_id, "model": args.model, "perplexity": ppl, **settings})
    return 0


def _evaluate(args, plan, ckpt, progress, zeroshot=None) -> tuple[float, float, str, str, dict, dict, dict]:
    """(perplexity, seconds, fingerprint, device, tokenization protocol, numerics, accuracy):
    block by block when the plan streams (then without zero-shot accuracy)."""
    from alphaprune.pipeline import check_context, run_eval
    from alphaprune.runs import numerics
    from alphaprune.text import protocol

    if plan is not None and plan.streamed:
        from alphaprune.offload import checkpoint_tokenizer, eval_streamed
        from alphaprune.stream import MemorySource

        tokenizer = checkpoint_tokenizer(ckpt)
        source = ckpt if plan.path == "disk" else MemorySource(_load(args, _stored_dtype(ckpt)).model, tokenizer)
        print(f"alphaprune: {plan.describe()}", file=sys.stderr)
        device = _device(args)
        got = eval_streamed(source, tokenizer, args.eval, args.seqlen, args.eval_windows, args.batch_size,
                            progress, device)  # fmt: skip
        return (*got, device, protocol(tokenizer).as_dict(), numerics(getattr(source, "model", None)), {})
    loaded = _load(args)
    check_context(loaded.model, args.seqlen)
    got = run_eval(loaded, args.eval, args.seqlen, args.eval_windows, args.batch_size, progress)
    accuracy = {}
    if zeroshot is not None:  # the one model: its scores under "after", as a pruned model's are
        accuracy = {**zeroshot.settings(), "after": zeroshot.measure(loaded.model, loaded.tokenizer)}
    return (*got, str(loaded.device), protocol(loaded.tokenizer).as_dict(), numerics(loaded.model), accuracy)


def cmd_sweep(args) -> int:
    _device_map(args, pruning=True)
    if args.ray is not None and args.device_map is not None:
        raise UserError("--device-map places one model in this process; Ray's workers each load their own: drop one")
    from alphaprune import registry, sweep
    from alphaprune.runs import RunStore

    rules = args.rules or [args.allocation]
    if args.epsilons and not any("epsilon" in registry.rule(r).param_names() for r in rules):
        given = f"--rules {','.join(rules)}" if args.rules else f"--allocation {args.allocation}"
        raise UserError(f"--epsilons applies to rules with an epsilon, not {given}")
    varied = dict(args.vary)  # sweep.grid refuses a name no cell has
    configs = sweep.grid(_config(args), args.epsilons or (), args.sparsities or (), args.pruners or (), rules, varied)
    _check_out(args.out, (".json", ".csv"))
    _preflight(args, _texts_read(configs[0]), store=True)
    if args.ray is not None:
        sweep._ray()  # the extra installed, before any work
    store = RunStore()
    sid = sweep.sweep_id(args.model, configs)
    todo = sweep.pending(store, args.model, configs, sid)
    print(f"sweep {sid}: {len(configs)} cells, {len(configs) - len(todo)} already stored", file=sys.stderr)
    for record in store.list(sweep=sid):  # a resumed sweep's cells stored before
        print(_cell_line(record.id, record))
    update, close = _progress_bar(f"sweep {len(todo)} cells")
    shown = lambda run_id, record: print(_cell_line(run_id, record), flush=True)  # noqa: E731 (as each lands)
    try:
        if args.ray is not None:
            model = sweep.ModelSpec(args.model, args.dtype, args.device, args.trust_remote_code)
            sweep.run_ray(args.ray, model, todo, sid, len(configs), store, update, args.workers, shown)
        elif todo:
            sweep.run_sequential(_load(args), todo, sid, len(configs), store, update, shown)
    finally:
        close()
    print(f"sweep {sid}: {len(configs)} runs stored (alphaprune runs --sweep {sid})")
    if args.out is not None:
        store.export(args.out, sweep=sid)
    return 0


def _cell_line(run_id: int, record) -> str:
    """One sweep cell's line: its run id, pruner, rule, sparsity, the rule's parameters and perplexities."""
    from alphaprune.runs import rule_settings

    own = rule_settings(record.settings)
    return (
        f"run {run_id}: {record.settings.get('pruner')} {record.settings.get('allocation')} "
        f"s={record.settings.get('sparsity')}{' (' + own + ')' if own else ''}: "
        f"perplexity {record.ppl_before:.3f} -> {record.ppl_after:.3f}"
    )


def cmd_compare(args) -> int:
    _device_map(args, pruning=True)
    from alphaprune import compare
    from alphaprune.runs import RunStore

    if args.allocation is not None:
        raise UserError("compare takes its rules from --rules, not --allocation: name them there")
    import dataclasses

    rules = [r for r in args.rules.split(",") if r]
    if not rules:
        raise UserError("name at least one allocation rule to compare in --rules")
    base = dataclasses.replace(_config(args, allocation=rules[0], mapping="block"), mapping=args.mapping)
    configs = compare.rule_configs(base, rules)  # all checked first
    _check_out(args.out, (".json", ".csv"))
    _preflight(args, tuple({t for c in configs for t in _texts_read(c)}), store=True)
    plan, _ = _plan(args, "prune", samples=base.calib_samples, seqlen=base.seqlen, batch=1, pruner=base.pruner)
    if plan is not None and plan.streamed:
        raise UserError(
            f"compare prunes copies in memory, and the preflight says this model needs the {plan.offload} path "
            f"({plan.describe()}): run `prune {setting('offload')} {plan.offload}` once per rule instead"
        )
    loaded = _load(args)
    cid = compare.compare_id(loaded.name, base)
    todo = compare.pending(RunStore(), loaded.name, configs, cid)
    if len(todo) < len(configs):
        print(f"compare {cid}: {len(configs) - len(todo)} of {len(configs)} rules already measured", file=sys.stderr)
    for config in todo:
        result, run_id, _ = _run_one(loaded, config, _analysis_for(loaded, config), sweep=cid)
        print(_summary(result, run_id), flush=True)
        del result  # its pruned copy: never two copies beside the dense model
        gc.collect()
    rows = [r for r in compare.table(RunStore().list(model=loaded.name, sweep=cid)) if r["rule"] in rules]
    print(f"{'rule':14s} {'ppl after':>12s} {'lowest block':>13s} {'highest block':>14s}  run")
    for row in rows:
        print(f"{row['rule']:14s} {row['ppl_after']:12.3f} {row['lowest_block']:13.4f} {row['highest_block']:14.4f}  "
              f"{row['run']}")  # fmt: skip
    print(compare.ratio_listing(rows))  # each rule's ratios beside its perplexity above
    print(f"compare {cid}: {len(rows)} rules (alphaprune runs --sweep {cid})")
    if args.out is not None:
        RunStore().export(args.out, sweep=cid)
    return 0


def cmd_runs(args) -> int:
    from alphaprune.runs import RunStore

    if sum(x is not None for x in (args.report, args.figures, args.export, args.delete)) > 1:
        raise UserError("give one of --report, --figures, --export and --delete at a time")
    if args.figures is None and args.figures_dir is not None:
        raise UserError("--figures-dir says where --figures writes: give --figures ID too")
    store = RunStore()
    if args.delete:
        print(f"deleted {store.delete(args.delete, missing_ok=False)} run(s)")
        return 0
    if args.report is not None:
        from alphaprune.html_report import write_run_report

        out = args.report_out or Path(f"run-{args.report}.html")
        _check_out(out, (".html", ".htm"))
        print(f"wrote {write_run_report(store.get(args.report), out)}", file=sys.stderr)
        return 0
    if args.figures is not None:
        from alphaprune.html_report import write_run_figures

        folder = args.figures_dir or Path(".")
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise UserError(f"--figures-dir {folder} is not a writable folder: give one that is")
        for path in write_run_figures(store.get(args.figures), folder):
            print(f"wrote {path}", file=sys.stderr)
        return 0
    if args.export is not None:
        store.export(args.export, model=args.model, kind=args.kind, sweep=args.sweep)
        print(f"wrote {args.export}", file=sys.stderr)
        return 0
    frame = store.frame(model=args.model, kind=args.kind, sweep=args.sweep)
    if frame.empty:
        print("no runs stored yet (alphaprune prune ... stores one)")
        return 0
    wanted = [
        "id",
        "created",
        "kind",
        "model",
        "pruner",
        "allocation",
        "rule_settings",
        "sparsity",
        "pattern",
        "ppl_before",
        "ppl_after",
        "actual_sparsity",
        "seconds_total",
    ]
    print(frame[[c for c in wanted if c in frame.columns]].to_string(index=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"alphaprune: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("alphaprune: interrupted", file=sys.stderr)
        return 130
