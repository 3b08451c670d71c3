"""Command line: `python -m alphaprune COMMAND ...`.

    python -m alphaprune analyze                          # default model, table on stdout
    python -m alphaprune analyze --model path/to/model.gguf --out layers.csv
    python -m alphaprune analyze --no-cache --precision float64 --out analysis.json

Progress goes to stderr as a bar. Bad input (unknown model, missing file, a model that is
not a causal LM ...) prints one line `alphaprune: error: ...` and exits with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from alphaprune.errors import UserError

EXIT_USER_ERROR = 2


def _progress_bar(desc: str) -> tuple[Callable[[float, str], None], Callable[[], None]]:
    """A (callback, close) pair drawing a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=100, desc=desc, file=sys.stderr, leave=False, bar_format="{l_bar}{bar}| {elapsed}")

    def update(fraction: float, message: str) -> None:
        step = round(100 * fraction)
        if step > bar.n:  # tqdm's own rate limit applies to update(), not to refresh()
            bar.set_postfix_str(message, refresh=False)
            bar.update(step - bar.n)

    return update, bar.close


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from alphaprune.models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help="bundled alias, .gguf file, model folder or hub id")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="allow a hub model's own code (off by default)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alphaprune", description="Layer spectra and sparsity allocation for LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("analyze", help="spectra, power-law alphas and metrics of every weight matrix")
    _add_model_args(p)
    p.add_argument("--precision", default="auto", choices=["auto", "float32", "float64"])
    p.add_argument("--no-cache", action="store_true", help="recompute the spectra, bypassing the cache")
    p.add_argument("--out", type=Path, help="write FILE.json or FILE.csv (else a table on stdout)")
    p.set_defaults(func=cmd_analyze)
    return parser


def _load(args):
    from alphaprune.models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)


def _check_out(path: Path | None, suffixes: tuple[str, ...]) -> None:
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise UserError(f"--out must end with {' or '.join(suffixes)}, got {path.name}")
    if not path.parent.exists():
        raise UserError(f"--out folder {path.parent} does not exist")


def cmd_analyze(args) -> int:
    from alphaprune.analysis import analyze
    from alphaprune.report import analysis_frame, write_analysis

    _check_out(args.out, (".json", ".csv"))
    print(f"loading {args.model} ...", file=sys.stderr)
    loaded = _load(args)
    print(f"loaded in {loaded.seconds_load:.1f} s ({loaded.source}, {loaded.device})", file=sys.stderr)
    update, close = _progress_bar("analyze")
    try:
        result = analyze(
            loaded.model, args.model, args.precision, loaded.device, use_cache=not args.no_cache, progress=update
        )
    finally:
        close()
    cached = " (cache)" if result.from_cache else ""
    print(f"analysed {len(result.layers)} matrices in {result.seconds_analysis:.2f} s{cached}", file=sys.stderr)
    if args.out is None:
        columns = ["name", "shape", "alpha_peak", "alpha_mid", "alpha_ks", "D_peak", "stable_rank"]
        print(analysis_frame(result)[columns].to_string(index=False))
    else:
        write_analysis(result, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
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
