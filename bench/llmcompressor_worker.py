"""Runs inside llm-compressor's own virtualenv (bench/llmcompressor_check.py starts it).

    bench/.venv-llmcompressor/bin/python bench/llmcompressor_worker.py JOB.json

JOB.json: {"model": folder, "recipe": recipe.yaml, "calib": [[ids...], ...], "out": result.json}.
It loads the folder with transformers, counts how many modules every target of every
modifier in the recipe matches (compressed-tensors' matcher, the one llm-compressor uses),
applies the recipe with llm-compressor's `oneshot` on the given token windows, and writes
each Linear module's zero fraction, the match counts and the versions to `out`.
Imports nothing from alphaprune: this venv pins an older transformers.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata


def target_matches(model, recipe_path: str) -> dict[str, dict[str, int]]:
    """{modifier class: {target: modules it matches}} for every modifier of the recipe."""
    import yaml
    from compressed_tensors.utils import match_named_modules

    recipe = yaml.safe_load(open(recipe_path))
    counts: dict[str, dict[str, int]] = {}
    for stage in recipe.values():
        for group in stage.values():
            for modifier, args in group.items():
                targets = args.get("targets", [])
                targets = [targets] if isinstance(targets, str) else targets
                counts[modifier] = {t: sum(1 for _ in match_named_modules(model, [t])) for t in targets}
    return counts


def zero_fractions(model) -> dict[str, float]:
    import torch

    return {
        name: float((module.weight == 0).float().mean())
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def main(job_path: str) -> int:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    job = json.load(open(job_path))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    matches = target_matches(model, job["recipe"])
    calib = Dataset.from_dict({"input_ids": job["calib"], "attention_mask": [[1] * len(w) for w in job["calib"]]})
    oneshot(
        model=model,
        dataset=calib,
        recipe=job["recipe"],
        num_calibration_samples=len(job["calib"]),
        max_seq_length=len(job["calib"][0]),
        shuffle_calibration_samples=False,
    )
    versions = {p: metadata.version(p) for p in ("llmcompressor", "compressed-tensors", "transformers", "torch")}
    result = {"matches": matches, "sparsity": zero_fractions(model), "versions": versions}
    json.dump(result, open(job["out"], "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
