"""Prove the exported folders in the tools they target: llm-compressor and transformers 4.x.

    .venv/bin/python bench/llmcompressor_check.py            # sets up both virtualenvs if missing
    .venv/bin/python bench/llmcompressor_check.py --pruners wanda --patterns unstructured

For every pruner we export and each pattern (unstructured, 2:4), on the bundled default
model with an AlphaPruning allocation (60%, block ratios) and a small calibration:
1. ours: prune a copy and save it (save_pruned: weights, recipe.yaml, alphaprune_ratios.json);
2. llm-compressor, in its own virtualenv (bench/requirements-llmcompressor.txt, which pins
   the older transformers it needs), through bench/llmcompressor_worker.py:
   - a pruner with an llm-compressor modifier (Wanda, SparseGPT): `oneshot` applies the
     recipe to the dense model; every layer's sparsity must equal ours to 1e-3;
   - one without (magnitude, RIA): the recipe's active stage (ConstantPruningModifier, which
     keeps the exported zeros) is applied to the saved folder and must leave every layer's
     sparsity as saved; its commented one-shot stage, uncommented, is applied to the dense
     model and must give our ratios;
   - every target of every modifier must match at least one module (a recipe whose targets
     match nothing runs silently and does nothing);
3. transformers 4.57, in a third virtualenv (bench/requirements-transformers4.txt), through
   bench/transformers4_worker.py: the saved folder's tokenizer gives our token ids, its
   config's RoPE base is the model's, and its perplexity equals ours to 1e-4 relative.
Prints one line per check and the versions; exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, no install needed

LLMC_VENV = ROOT / "bench" / ".venv-llmcompressor"
T4_VENV = ROOT / "bench" / ".venv-transformers4"
TOLERANCE = 1e-3  # per-layer sparsity, ours against llm-compressor's
PPL_TOLERANCE = 1e-4  # relative, transformers 4.57 against 5


def ensure_venv(folder: Path, requirements: Path) -> Path:
    """The virtualenv's python, creating it and installing `requirements` when missing."""
    python = folder / "bin" / "python"
    stamp = folder / ".installed"
    if stamp.is_file() and stamp.read_text() == requirements.read_text():
        return python
    print(f"setting up {folder.name} from {requirements.name} (minutes, once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
    stamp.write_text(requirements.read_text())
    return python


def run_worker(python: Path, script: str, job: dict, work: Path) -> dict:
    """Run a worker in its venv on `job` (JSON); its result JSON, or a RuntimeError with its log's tail."""
    job_path, out = work / f"job-{time.monotonic_ns()}.json", work / f"out-{time.monotonic_ns()}.json"
    job_path.write_text(json.dumps({**job, "out": str(out)}))
    done = subprocess.run([str(python), str(ROOT / "bench" / script), str(job_path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def oneshot_recipe(recipe: str) -> str:
    """The commented one-shot stage of a keep-zeros recipe, uncommented (as its comment says to)."""
    lines = recipe.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# sparsity_stage:"))
    return "\n".join(line[2:] for line in lines[start:] if line.startswith("# ")) + "\n"


def compare(ours: dict[str, float], theirs: dict[str, float]) -> tuple[float, str]:
    """(largest |ours - theirs| over our matrices, its matrix); a matrix they lack counts as 1."""
    gaps = {name: abs(ratio - theirs.get(name, float("inf"))) for name, ratio in ours.items()}
    worst = max(gaps, key=gaps.get)
    return gaps[worst], worst


def unmatched(matches: dict[str, dict[str, int]]) -> list[str]:
    return [f"{modifier}:{target}" for modifier, counts in matches.items() for target, n in counts.items() if n == 0]


class Checker:
    """Runs the checks of one pruner and pattern; records (name, ok, detail) lines."""

    def __init__(self, loaded, calib, dense: Path, work: Path, llmc: Path, sparsity: float):
        self.loaded, self.calib, self.dense, self.work, self.llmc = loaded, calib, dense, work, llmc
        self.sparsity, self.lines, self.versions = sparsity, [], {}

    def record(self, name: str, ok: bool, detail: str) -> None:
        self.lines.append((name, ok, detail))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    def ours(self, pruner: str, pattern: str) -> Path:
        """Our pruned copy, saved; the copy is dropped before llm-compressor runs."""
        from alphaprune.export import save_pruned
        from alphaprune.pipeline import PruneConfig, make_allocation, prune_copy

        config = PruneConfig(sparsity=self.sparsity, pruner=pruner, pattern=pattern, allocation="alphapruning")
        allocation = make_allocation(self.loaded.model, config, calib=self.calib)
        pruned = prune_copy(self.loaded.model, allocation, config, self.calib)
        meta = {"pruner": pruner, "pattern": pattern, "sparsity": self.sparsity, "allocation": "alphapruning"}
        folder = save_pruned(pruned, self.loaded.tokenizer, self.work / f"{pruner}-{pattern.replace(':', 'of')}",
                             allocation.ratios, allocation.block_ratios, meta)  # fmt: skip
        del pruned
        return folder

    def apply(self, name: str, model: Path, recipe: Path, expected: dict[str, float]) -> None:
        job = {"model": str(model), "recipe": str(recipe), "calib": self.calib.tolist()}
        start = time.perf_counter()
        result = run_worker(self.llmc, "llmcompressor_worker.py", job, self.work)
        self.versions = result["versions"]
        missing = unmatched(result["matches"])
        total = sum(len(c) for c in result["matches"].values())
        self.record(f"{name}: targets", not missing, f"{total - len(missing)} of {total} match a module"
                    + (f"; none for {missing[:3]}" if missing else ""))  # fmt: skip
        gap, worst = compare(expected, result["sparsity"])
        self.record(f"{name}: sparsity", gap <= TOLERANCE, f"largest per-layer gap {gap:.2e} ({worst}), "
                    f"{len(expected)} layers, {time.perf_counter() - start:.0f} s")  # fmt: skip

    def pruner(self, pruner: str, pattern: str) -> None:
        from alphaprune import registry
        from alphaprune.export import RECIPE_FILE, load_ratios

        folder = self.ours(pruner, pattern)
        saved = load_ratios(folder).measured
        recipe = folder / RECIPE_FILE
        if "modifier" in registry.pruner(pruner).recipe:
            self.apply(f"{pruner} {pattern}, recipe on the dense model", self.dense, recipe, saved)
            return
        self.apply(f"{pruner} {pattern}, keep-zeros recipe on the saved model", folder, recipe, saved)
        oneshot = self.work / f"{folder.name}-oneshot.yaml"
        oneshot.write_text(oneshot_recipe(recipe.read_text()))
        from alphaprune.pruners import parse_pattern

        nm = parse_pattern(pattern)  # N:M prunes N of every M weights, whatever the ratios
        cols = {
            n: m.weight.shape[1]
            for n, m in self.loaded.model.named_modules()
            if getattr(m, "weight", None) is not None and m.weight.dim() == 2
        }
        # Wanda keeps int(ratio * in) weights of each row out, ours as llm-compressor's
        target = {
            n: (nm[0] / nm[1] if nm else int(r * cols[n]) / cols[n]) for n, r in load_ratios(folder).ratios.items()
        }
        self.apply(f"{pruner} {pattern}, its one-shot stage on the dense model", self.dense, oneshot, target)


def transformers4(python: Path, loaded, folder: Path, work: Path, checker: Checker) -> None:
    """The saved folder read by transformers 4.57: token ids, RoPE base and perplexity as ours."""
    import torch
    from transformers import AutoModelForCausalLM

    from alphaprune.perplexity import perplexity

    sample = "The quick brown fox jumps over the lazy dog. def f(x): return x ** 2"
    windows = checker.calib[:2]
    job = {"model": str(folder), "text": sample, "windows": windows.tolist()}
    theirs = run_worker(python, "transformers4_worker.py", job, work)
    ours_ids = loaded.tokenizer(sample).input_ids
    checker.record("transformers 4 tokenizer", theirs["ids"] == ours_ids, f"{len(ours_ids)} ids, class "
                   f"{theirs['tokenizer_class']}")  # fmt: skip
    rope = loaded.model.config.rope_parameters["rope_theta"]
    checker.record("transformers 4 RoPE base", theirs["rope_theta"] == rope, f"{theirs['rope_theta']} (model: {rope})")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ours = perplexity(model, windows)
    gap = abs(theirs["ppl"] - ours) / ours
    checker.record("transformers 4 perplexity", gap <= PPL_TOLERANCE, f"{theirs['ppl']:.5f} against "
                   f"{ours:.5f} with transformers 5 (relative gap {gap:.1e})")  # fmt: skip
    checker.versions["transformers (4.x check)"] = theirs["transformers"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pruners", default="wanda,sparsegpt,magnitude,ria")
    parser.add_argument("--patterns", default="unstructured,2:4")
    parser.add_argument("--sparsity", type=float, default=0.6)
    parser.add_argument("--samples", type=int, default=8, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=256)
    args = parser.parse_args()
    llmc = ensure_venv(LLMC_VENV, ROOT / "bench" / "requirements-llmcompressor.txt")
    t4 = ensure_venv(T4_VENV, ROOT / "bench" / "requirements-transformers4.txt")

    from alphaprune import text
    from alphaprune.arch import prunable_matrices
    from alphaprune.export import save_pruned
    from alphaprune.models import DEFAULT_MODEL, load_model

    loaded = load_model(DEFAULT_MODEL)
    ids = text.token_ids("python-docs", loaded.tokenizer)
    calib = text.calibration_windows(ids, args.samples, args.seqlen, seed=0)  # (samples, seqlen)
    with tempfile.TemporaryDirectory(prefix="llmc-check-") as tmp:
        work = Path(tmp)
        zero = {ref.name: 0.0 for ref in prunable_matrices(loaded.model)}
        dense = save_pruned(loaded.model, loaded.tokenizer, work / "dense", zero, [], {"pruner": "wanda"})
        checker = Checker(loaded, calib, dense, work, llmc, args.sparsity)
        for pruner in args.pruners.split(","):
            for pattern in args.patterns.split(","):
                checker.pruner(pruner, pattern)
        transformers4(t4, loaded, dense, work, checker)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in checker.versions.items()))
    failed = [name for name, ok, _ in checker.lines if not ok]
    passed = len(checker.lines) - len(failed)
    print(f"{passed} of {len(checker.lines)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
