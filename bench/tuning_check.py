"""Auto tuning against the hand-picked best, side by side in one run (issue 11's tuning bar).

The authors pick a rule's parameter by hand, looking at the evaluation text's perplexity. Our
"auto" must choose without that text, on the held-out tail of the calibration text. Rounding
alone moves perplexity at 70-80% by 10-20% from one machine to another, so both are measured
here in one process, with one thread count and one attention kernel:

1. the auto search itself (pipeline._search, the code `prune --epsilon auto` runs), with every
   candidate's pruned copy also measured on the evaluation text: what a hand-picker sees;
2. per candidate: held-out perplexity, its paired gap to the held-out best in standard errors
   (tune.gap), the allocation's spread from uniform, and the evaluation perplexity;
3. what each selection picks: the lowest held-out perplexity (tune.choose, auto), the
   one-standard-error rule (tune.one_se, the rule before), and the hand-picked best on the
   evaluation text (the oracle);
4. the final runs (run_prune, the whole calibration text) of each pick's values set by hand,
   and auto / hand-picked;
5. with --authors E,..: the authors' AlphaPruning configuration at those epsilons (their
   unclipped ratios; a block whose ratio exceeds 1 pruned whole, as their Wanda does);
6. with --kl: per candidate also the mean KL divergence of its next-token distribution from the
   dense model's on the same held-out windows (the search's alternative objective under study:
   how far pruning moved the model, not how well it fits the calibration domain);
   with --generated: per candidate also its perplexity and KL from dense on text that the dense
   model itself wrote (sampled at temperature 1 from the BOS token, seeded): a held-out text of
   no one domain, neither the calibration's nor the evaluation's (another objective under study);
7. with --authors-grid: the authors' own search (ATP's search.sh): every value of the grid,
   pruned with the whole calibration text and scored on the evaluation text, the lowest being
   what their script prints as the best. These are our runs standing in for their script: at
   the betas checked against their code (docs/fidelity.md) our ATP gives its perplexity to 1e-6.

Protocol: docs/results.md's (32 x 1024 calibration from calib_python_docs.txt, the first 32 x
1024 windows of wikitext2_test.raw), Wanda. On the 2-core machine: ~4.5 min a candidate.

    nice .venv/bin/python bench/tuning_check.py --rule alphapruning --sparsity 0.7 --out bench/tuning/ap70.json
    nice .venv/bin/python bench/tuning_check.py --rule atp --sparsity 0.7 --out bench/tuning/atp70.json
    nice .venv/bin/python bench/tuning_check.py --skip-search --authors 0.3 --out bench/tuning/authors70.json
    nice .venv/bin/python bench/tuning_check.py --rule atp --authors-grid --out bench/tuning/atp70_vs_search_sh.json
    nice .venv/bin/python bench/tuning_check.py --rule atp --kl --candidates 'beta=0.006;beta=0.008;beta=0.01' \
        --out bench/tuning/atp70_kl.json                      # held-out perplexity against KL from dense
    nice .venv/bin/python bench/tuning_check.py --rule atp --generated \
        --candidates 'beta=0.006;beta=0.008;beta=0.01;beta=0.012;beta=0.014' --out bench/tuning/atp70_generated.json
    nice .venv/bin/python bench/tuning_check.py --rule atp --candidates 'beta=0.011;beta=0.012;beta=0.013' \
        --out bench/tuning/atp70_offgrid.json                 # values off the grid, scored as candidates
    nice .venv/bin/python bench/tuning_check.py --skip-search --authors 0.3 --hand epsilon=0.3,ceiling=0.99 \
        --seeds 1,2 --out bench/tuning/seeds70.json          # how much the calibration draw moves them
    .venv/bin/python bench/tuning_check.py --render       # docs/tuning.md from bench/tuning/*.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import results  # noqa: E402  (the protocol and each rule's auto parameters)

from alphaprune import pipeline, text, tune  # noqa: E402
from alphaprune.analysis import analyze  # noqa: E402
from alphaprune.config import PruneConfig  # noqa: E402
from alphaprune.models import DEFAULT_MODEL, load_model  # noqa: E402
from alphaprune.perplexity import perplexity  # noqa: E402
from alphaprune.runs import numerics  # noqa: E402


def label(values: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in values.items())


def search_side_by_side(
    loaded, config, analysis, eval_windows, log, plan=None, kl=None, generated=None
) -> tuple[dict, tuple, dict]:
    """(the chosen values, the trials, evaluation perplexity per candidate label); `plan`: these
    candidates instead of the search's grid and refinement; `kl`: a dict that receives each
    candidate's mean KL(dense || pruned) per held-out token, in nats (None: not measured);
    `generated`: (windows, dict): the dict receives each candidate's perplexity and KL from dense
    on those windows of the dense model's own text."""
    calib_ids = text.tokenize(text.read_text(config.calib), loaded.tokenizer)
    heldout = text.heldout_windows(calib_ids, config.seqlen, pipeline.HELDOUT_WINDOWS) if kl is not None else None
    on_eval: dict[str, float] = {}

    def observe(values: dict, pruned) -> None:
        on_eval[label(values)] = perplexity(pruned, eval_windows, config.batch_size)
        log(f"  {label(values)}: evaluation perplexity {on_eval[label(values)]:.2f}")
        if kl is not None:
            kl[label(values)] = kl_from_dense(loaded.model, pruned, heldout)
            log(f"  {label(values)}: KL from the dense model on the held-out windows {kl[label(values)]:.4f} nats")
        if generated is not None:
            windows, out = generated
            out[label(values)] = {"gen_ppl": perplexity(pruned, windows, config.batch_size),
                                  "gen_kl": kl_from_dense(loaded.model, pruned, windows)}  # fmt: skip
            log(f"  {label(values)}: on the dense model's own text {out[label(values)]}")

    progress = lambda f, msg: log(f"  [{f:4.0%}] {msg}")  # noqa: E731
    best, trials = pipeline._search(loaded.model, config, analysis, calib_ids, progress, observe, plan)
    return best, trials, on_eval


def kl_from_dense(dense, pruned, windows) -> float:
    """Mean over the (W, seqlen) windows' predicted tokens of KL(dense || pruned) between the two
    models' next-token distributions, one window at a time (logits (1, seqlen, vocab) each)."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            ids = window.unsqueeze(0)
            log_p = torch.log_softmax(dense(ids).logits[0, :-1].float(), dim=-1)  # (seqlen - 1, vocab)
            log_q = torch.log_softmax(pruned(ids).logits[0, :-1].float(), dim=-1)
            total += float((log_p.exp() * (log_p - log_q)).sum())
            count += log_p.shape[0]
    return total / count


def generated_windows(model, tokenizer, windows: int, seqlen: int, seed: int = 0):
    """(windows, seqlen) token ids of text the dense model writes itself: sequences sampled at
    temperature 1 (no top-k / top-p) from the BOS token, each up to its end-of-text token,
    concatenated, cut into windows. Batches of 8 sequences of at most seqlen tokens each."""
    import torch

    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos  # a model without BOS: from EOS
    pieces, total = [], 0
    with torch.no_grad():
        while total < windows * seqlen:
            start = torch.full((8, 1), bos, dtype=torch.long)  # (8, 1)
            out = model.generate(start, attention_mask=torch.ones_like(start), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=seqlen - 1, pad_token_id=eos)  # fmt: skip
            for row in out:  # (<= seqlen,): BOS, the text, its EOS, then padding (EOS again)
                ends = (row[1:] == eos).nonzero()
                row = row[: int(ends[0]) + 2] if len(ends) else row
                pieces.append(row)
                total += len(row)
    ids = torch.cat(pieces)[: windows * seqlen]
    return ids.view(windows, seqlen)


def evaluated(trials, on_eval: dict) -> dict[str, float]:
    """Evaluation perplexity of every candidate's label, a shared prune run's for the candidates
    that shared it (equal ratios, equal held-out windows' NLLs)."""
    fresh = {t.heldout_nlls: on_eval[label(t.values)] for t in trials if label(t.values) in on_eval}
    return {label(t.values): fresh[t.heldout_nlls] for t in trials if t.heldout_nlls in fresh}


def table(trials, on_eval: dict, kl: dict | None = None, gen: dict | None = None) -> list[dict]:
    lowest = tune.lowest(trials)
    rows = []
    for t in trials:
        mean, se = tune.gap(t, lowest)
        rows.append({
            "values": label(t.values), "heldout_ppl": t.heldout_ppl, "gap_nats": mean, "gap_se": se,
            "spread": t.spread, "eval_ppl": on_eval.get(label(t.values)), "pruned": t.pruned,
            **({"kl": kl[label(t.values)]} if kl and label(t.values) in kl else {}),
            **(gen[label(t.values)] if gen and label(t.values) in gen else {}),
        })  # fmt: skip
    return rows


FINALS: dict[PruneConfig, float] = {}  # final runs of this process, by configuration (run once each)


def final(loaded, config, analysis, values: dict, log) -> float:
    """run_prune (the whole calibration text) with `values` set by hand: its perplexity (a run
    already made by this process with the same configuration is not made again)."""
    given = dataclasses.replace(config, **values)
    if given in FINALS:
        return FINALS[given]
    result = pipeline.run_prune(loaded, given, analysis)
    FINALS[given] = result.ppl_after
    log(f"  final run, {label(values) or config.allocation}: perplexity {result.ppl_after:.2f} "
        f"(sparsity {result.actual_sparsity:.4f})")  # fmt: skip
    return result.ppl_after


def main() -> int:
    args = _args()
    if args.render:
        (ROOT / "docs" / "tuning.md").write_text(render(ROOT / "bench" / "tuning"))
        return 0
    clock = time.perf_counter()
    log = lambda msg: print(f"[{(time.perf_counter() - clock) / 60:6.1f} min] {msg}", flush=True)  # noqa: E731
    loaded = load_model(DEFAULT_MODEL)
    analysis = analyze(loaded.model, loaded.name)
    config = results.tuned(args.data, args.rule, args.sparsity, args.pruner)
    if args.quick:  # a smoke run of the script, not a measurement
        config = dataclasses.replace(config, calib_samples=4, seqlen=256, eval_windows=4, search_budget=3)
    log(f"{args.rule} at {args.sparsity:.0%}, {args.pruner}; numerics {numerics(loaded.model)}")
    report = {"rule": args.rule, "sparsity": args.sparsity, "pruner": args.pruner, "numerics": numerics(loaded.model)}
    if args.candidates:
        report.update(_probe_report(loaded, config, analysis, args.candidates, log, args.kl, args.generated))
    elif not args.skip_search:
        report.update(_search_report(loaded, config, analysis, log))
    if args.authors_grid:
        report["authors_grid"] = _authors_grid(loaded, config, analysis, log)
    if args.authors:
        report["authors"] = {
            f"epsilon {e:g}, ratios above 1 pruned whole" + _seed_words(seed, args.seeds):
            final(loaded, dataclasses.replace(_authors(config, analysis, e), seed=seed), analysis, {}, log)
            for e in args.authors for seed in args.seeds
        }  # fmt: skip
    if args.hand:
        report["by_hand"] = {
            label(args.hand) + _seed_words(seed, args.seeds):
            final(loaded, dataclasses.replace(config, seed=seed), analysis, args.hand, log)
            for seed in args.seeds
        }  # fmt: skip
    report["minutes"] = (time.perf_counter() - clock) / 60
    _print(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rule", default="alphapruning", choices=sorted(results.TUNED))
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--pruner", default="wanda")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, help="write the measurements as JSON")
    ap.add_argument("--quick", action="store_true", help="4 x 256 calibration, 4 evaluation windows, 3 candidates")
    ap.add_argument("--authors", type=lambda v: [float(x) for x in v.split(",")], default=[],
                    help="AlphaPruning: also run the authors' code's ratios at these epsilons (unclipped, any "
                         "ratio above 1 pruning its block whole, as their Wanda does)")  # fmt: skip
    ap.add_argument("--hand", type=_values, default={}, metavar="NAME=V,..",
                    help="also run the rule with these values set by hand, e.g. epsilon=0.3,ceiling=0.99")  # fmt: skip
    ap.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0],
                    help="calibration seeds of the --authors and --hand runs (the windows drawn)")  # fmt: skip
    ap.add_argument("--authors-grid", action="store_true",
                    help="also the authors' search (ATP's search.sh): a final run at every grid value, "
                         "scored on the evaluation text")  # fmt: skip
    ap.add_argument("--skip-search", action="store_true", help="only the --authors, --authors-grid and --hand runs")
    ap.add_argument("--candidates", type=lambda v: [_values(c) for c in v.split(";")], default=[],
                    metavar="NAME=V;..", help="instead of the search: score these values (off the grid too) "
                    "as the search scores a candidate, each also on the evaluation text, e.g. "
                    "'beta=0.011;beta=0.013'")  # fmt: skip
    ap.add_argument("--kl", action="store_true",
                    help="with --candidates: also each candidate's KL from the dense model, held out")  # fmt: skip
    ap.add_argument("--generated", action="store_true",
                    help="with --candidates: also each candidate's perplexity and KL from dense on the "
                         "dense model's own sampled text (8 windows)")  # fmt: skip
    ap.add_argument("--render", action="store_true", help="only rewrite docs/tuning.md from bench/tuning/*.json")
    return ap.parse_args()


def _values(text: str) -> dict:
    """'epsilon=0.3,ceiling=0.99' -> {"epsilon": 0.3, "ceiling": 0.99}."""
    return {k: float(v) for k, v in (pair.split("=") for pair in text.split(","))}


def _seed_words(seed: int, seeds: list[int]) -> str:
    return f", calibration seed {seed}" if seeds != [0] else ""


def _authors(config, analysis, epsilon: float):
    """The authors' configuration at `epsilon` (bench/results.py's whole-block list allocation)."""
    plain = dataclasses.replace(config, allocation="alphapruning", epsilon=epsilon, ceiling=1.0, search_budget=10)
    return results.as_whole_block(plain, analysis)


def _eval_windows(loaded, config):
    """The evaluation text's windows, as run_prune measures them."""
    ids = text.tokenize(text.read_text(config.eval), loaded.tokenizer)
    return text.evaluation_windows(ids, config.seqlen, config.eval_windows)


def _search_report(loaded, config, analysis, log) -> dict:
    """The search with every candidate on the evaluation text, each selection's pick, and the
    final runs of the auto pick and of the hand-picked values."""
    eval_windows = _eval_windows(loaded, config)
    chosen, trials, on_eval = search_side_by_side(loaded, config, analysis, eval_windows, log)
    on_eval = evaluated(trials, on_eval)
    one_se = tune.one_se(trials).values
    oracle = min((t for t in trials if label(t.values) in on_eval), key=lambda t: on_eval[label(t.values)]).values
    for name, values in (("auto", chosen), ("one_se", one_se), ("hand_picked", oracle)):
        log(f"{name}: {label(values)}, its candidate's evaluation perplexity {on_eval[label(values)]:.2f}")
    distinct = {label(v): v for v in (chosen, one_se, oracle)}
    finals = {name: final(loaded, config, analysis, v, log) for name, v in distinct.items()}
    # the ratios auto / hand-picked are derived from "final" and "candidates" where they are shown (_section)
    return {"candidates": table(trials, on_eval), "auto": chosen, "one_se": one_se, "hand_picked": oracle,
            "final": finals}  # fmt: skip


def _authors_grid(loaded, config, analysis, log) -> dict[str, float]:
    """Evaluation perplexity of a final run at every value of the search's grid (for ATP, the
    paper's: beta in steps of 0.002 up to the largest legal one), as the authors' search script
    prunes and scores them; its lowest is the best it reports."""
    blocks = len({m.block for m in analysis.prunable})
    plan = tune.candidates(config, blocks, budget=10**6)
    return {label(values): final(loaded, config, analysis, values, log) for values in plan}


def _probe_report(loaded, config, analysis, plan: list[dict], log, kl=False, gen=False) -> dict:
    """{"probe": rows}: each of `plan` scored as a search candidate, held-out and evaluation
    perplexity (and, with `kl`, its KL from the dense model on the held-out windows; with `gen`,
    its perplexity and KL on the dense model's own text, whose baseline is "generated")."""
    eval_windows = _eval_windows(loaded, config)
    measured_kl: dict[str, float] | None = {} if kl else None
    generated, report = None, {}
    if gen:
        windows = generated_windows(loaded.model, loaded.tokenizer, pipeline.HELDOUT_WINDOWS, config.seqlen)
        generated = (windows, {})
        report["generated"] = {
            "windows": windows.shape[0], "seqlen": windows.shape[1], "seed": 0,
            "dense_ppl": perplexity(loaded.model, windows, config.batch_size),
            "sha256": hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:16],
            "begins": loaded.tokenizer.decode(windows[0, :60]),
        }  # fmt: skip
        log(f"dense model's own text: {report['generated']}")
    _, trials, on_eval = search_side_by_side(loaded, config, analysis, eval_windows, log, plan, measured_kl, generated)
    report["probe"] = table(trials, evaluated(trials, on_eval), measured_kl, generated[1] if generated else None)
    return report


def render(folder: Path) -> str:
    """docs/tuning.md from every JSON this script wrote into `folder` (--out)."""
    lines = [
        "# Auto tuning against the hand-picked best, side by side",
        "",
        "Regenerated by `bench/tuning_check.py --render` from its runs in `bench/tuning/` (see its",
        "docstring). Protocol of docs/results.md; Wanda. Per candidate of the search: its held-out",
        "perplexity, its paired gap to the lowest (nats per token, and in standard errors over the",
        "held-out windows), its allocation's spread from uniform, and the same pruned copy's",
        "perplexity on the evaluation text (what a hand-picker looks at; the search never reads it).",
        "Final runs: `run_prune` on the whole calibration text with the values set by hand.",
        'Other objectives under study, where a table has their columns: "KL from dense" (`--kl`), the',
        "mean KL divergence of the candidate's next-token distribution from the dense model's on the same",
        'held-out windows; "on the dense model\'s text" (`--generated`), perplexity and KL on windows of',
        "text that the dense model sampled itself (temperature 1 from its BOS token; its section says how",
        "many, the seed and the dense perplexity there), a text of neither the calibration's domain nor",
        "the evaluation's. One draw, no standard errors: gaps under a few percent there are not resolved.",
        "",
    ]
    reports = {path.name: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    lines += _seeds_table(reports.values())
    for name, report in reports.items():
        report["candidates_eval"] = {r["values"]: r["eval_ppl"] for r in report.get("candidates", [])}
        lines += _section(report, name)
    return "\n".join(lines)


SEED_WORDS = re.compile(r", calibration seed (\d+)$")


def _final_runs(report: dict):
    """(configuration, calibration seed, perplexity) of every final run in one report."""
    for key, kind in (("final", "set by hand"), ("authors", "the authors'"), ("by_hand", "set by hand")):
        for what, ppl in report.get(key, {}).items():
            seed = SEED_WORDS.search(what)
            yield f"{kind}: {SEED_WORDS.sub('', what)}", int(seed.group(1)) if seed else 0, ppl


def _seeds_table(reports) -> list[str]:
    """Every final run of every report, one row per (setting, configuration), one column per
    calibration seed, and their mean: how far the calibration draw alone moves a result."""
    rows: dict[tuple, dict[int, float]] = {}
    for r in reports:  # runs on different CPUs round differently: never one row
        cpu = r["numerics"].get("cpu", "CPU not recorded")
        for what, seed, ppl in _final_runs(r):
            rows.setdefault((f"{r['rule']} {r['sparsity']:.0%} {r['pruner']}, {cpu}", what), {})[seed] = ppl
    seeds = sorted({seed for runs in rows.values() for seed in runs})
    if len(seeds) < 2:
        return []
    out = ["## Final runs over calibration seeds", "",
           "| setting | configuration | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
           "|---|---|" + "---|" * (len(seeds) + 1)]  # fmt: skip
    for (setting, what), runs in sorted(rows.items()):
        cells = [f"{runs[s]:.2f}" if s in runs else "" for s in seeds]
        mean = f"**{sum(runs.values()) / len(runs):.1f}**" if len(runs) == len(seeds) else ""
        out.append(f"| {setting} | {what} | " + " | ".join(cells) + f" | {mean} |")
    return out + [""]


def _section(report: dict, name: str) -> list[str]:
    out = [f"## {report['rule']} at {report['sparsity']:.0%}, {report['pruner']} (`{name}`)", ""]
    out += [f"Numerics: {report['numerics']}; {report['minutes']:.1f} min.", ""]
    if "candidates" in report:
        out += _table_lines(report["candidates"]) + [""]
        auto = report.get("auto", report.get("lowest_heldout"))  # older reports: auto is now the lowest
        picks = (("auto (tune.choose: the lowest held-out)", auto), ("the one-SE rule (tune.one_se)", report["one_se"]),
                 ("hand-picked on the evaluation text", report["hand_picked"]))  # fmt: skip
        out += [f"- {words}: {label(values)}" for words, values in picks]
        out += ["- final runs (an auto run's final prune is the chosen values' run set by hand): "
                + "; ".join(f"{k}: **{v:.2f}**" for k, v in report["final"].items())]  # fmt: skip
        hand = label(report["hand_picked"])
        if label(auto) in report["final"]:
            out += [f"- auto / hand-picked, final runs: **{report['final'][label(auto)] / report['final'][hand]:.4f}**"]
        copies = report["candidates_eval"][label(auto)] / report["candidates_eval"][hand]
        out += [f"- auto / hand-picked, the search's own copies (same windows): **{copies:.4f}**"]
    if "generated" in report:
        g = report["generated"]
        out += [f"The dense model's own text: {g['windows']} x {g['seqlen']} tokens, seed {g['seed']}, dense "
                f"perplexity {g['dense_ppl']:.2f} on it; it begins {g['begins']!r}.", ""]  # fmt: skip
    if "probe" in report:
        out += ["Candidates scored as the search scores them (`--candidates`), off its grid too:", ""]
        out += _table_lines(report["probe"]) + [""]
    out += ([""] if out[-1] != "" and "authors_grid" in report else []) + _grid_lines(report)
    for what, ppl in report.get("authors", {}).items():
        out.append(f"- the authors' configuration, {what}: **{ppl:.2f}**")
    for what, ppl in report.get("by_hand", {}).items():
        out.append(f"- set by hand, {what}: **{ppl:.2f}**")
    return out if out[-1] == "" else out + [""]


def _grid_lines(report: dict) -> list[str]:
    """The authors' search (--authors-grid): every grid value's final run, its best, and auto's
    final run against that best."""
    grid = report.get("authors_grid")
    if not grid:
        return []
    best = min(grid, key=grid.get)
    out = ["The authors' search (their script: every grid value pruned with the whole calibration "
           "text, scored on the evaluation text):", "",
           "| grid value | perplexity |", "|---|---|"]  # fmt: skip
    out += [f"| {what} | {ppl:.2f} |" for what, ppl in grid.items()]
    out += ["", f"- the authors' search picks {best}: **{grid[best]:.2f}**"]
    auto = report.get("auto")
    if auto is not None and label(auto) in report.get("final", {}):
        ours = report["final"][label(auto)]
        out += [
            f"- auto ({label(auto)}, chosen on held-out calibration text): **{ours:.2f}**; "
            f"auto / the authors' search: **{ours / grid[best]:.4f}**"
        ]
    return out + [""]


def _table_lines(rows: list[dict]) -> list[str]:
    kl = any("kl" in r for r in rows)
    gen = any("gen_ppl" in r for r in rows)
    out = [
        "| candidate | held-out ppl | gap (nats) | gap / SE | spread | evaluation ppl |"
        + (" KL from dense |" if kl else "")
        + (" ppl on the dense model's text | KL from dense there |" if gen else ""),
        "|---|---|---|---|---|---|" + ("---|" if kl else "") + ("---|---|" if gen else ""),
    ]
    for r in rows:
        ratio = r["gap_nats"] / r["gap_se"] if r["gap_se"] else 0.0
        ev = f"{r['eval_ppl']:.2f}" if r["eval_ppl"] is not None else "shared"
        cells = (r["values"], f"{r['heldout_ppl']:.2f}", f"{r['gap_nats']:.4f}", f"{ratio:.2f}", f"{r['spread']:.4f}")
        extra = (f"{r['kl']:.4f}" if "kl" in r else "",) if kl else ()
        extra += (f"{r.get('gen_ppl', float('nan')):.2f}", f"{r.get('gen_kl', float('nan')):.4f}") if gen else ()
        out.append("| " + " | ".join((*cells, ev, *extra)) + " |")
    return out


def _print(report: dict) -> None:
    shown = {**report, "candidates_eval": {r["values"]: r["eval_ppl"] for r in report.get("candidates", [])}}
    print("\n".join(_section(shown, "this run")))


if __name__ == "__main__":
    raise SystemExit(main())
