"""Save a pruned model with its layer-wise sparsity ratios and an llm-compressor recipe.

    from alphaprune.export import save_pruned, load_ratios, llmcompressor_recipe
    ratios = {ref.name: 0.7 for ref in prunable_matrices(model)}   # usually the allocation
    folder = save_pruned(model, tokenizer, "out/smollm2-70", ratios, block_ratios,
                         {"pruner": "wanda", "pattern": "unstructured", "sparsity": 0.7, "ppl": 31.2})
    AutoModelForCausalLM.from_pretrained(folder)    # the same weights, zeros included
    load_ratios(folder).ratios                      # {matrix name: ratio}

The folder holds what `save_pretrained` writes (config.json, model.safetensors, the
tokenizer files), `alphaprune_ratios.json` (ratios per matrix, per block, the measured
zero fraction of every matrix, and `metadata` as given) and `recipe.yaml`, a recipe with
which llm-compressor prunes the dense model with the same layer-wise ratios.

The folder appears whole or not at all (alphaprune.atomic): everything is written into a
temporary sibling folder that is renamed at the end, so a kill leaves no half folder. An
existing target is replaced only when it is empty or a previous alphaprune export (it
holds `alphaprune_ratios.json`); anything else is refused.

The recipe format follows vllm-project/llm-compressor (main branch):
src/llmcompressor/recipe/recipe.py (`Recipe.from_dict`: top-level keys ending in
`_stage`, inside them keys ending in `_modifiers`, inside those `ModifierClassName: {args}`),
src/llmcompressor/modifiers/pruning/sparsegpt/sgpt_base.py at commit 09ff1d81
(`SparsityModifierBase`: `sparsity` may be a list; entry i applies to the i-th module that
`targets` matches, counted in `model.named_modules()` order, and the list length must equal
the number of matches; `mask_structure` "N:M" prunes N of every M weights, "0:0" is
unstructured), sparsegpt/base.py (`block_size` 128, `dampening_frac` 0.01), wanda/base.py,
magnitude/base.py and constant/base.py, and src/llmcompressor/utils/pytorch/module.py
(`get_layers`/`match_targets`: a target is an exact module name, a class name or "re:" +
regex). Older llm-compressor releases indexed the list over the decoder blocks instead;
`block_ratios` in the JSON serves those.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alphaprune import model_card, registry
from alphaprune.atomic import atomic_folder
from alphaprune.errors import UserError
from alphaprune.pruners import parse_pattern

RATIOS_FILE = "alphaprune_ratios.json"
RECIPE_FILE = "recipe.yaml"
FORMAT = "alphaprune-ratios/1"
IGNORE = ["re:.*lm_head"]  # never targeted anyway; guards a user who widens `targets`


@dataclass(frozen=True)
class ExportedRatios:
    """What `alphaprune_ratios.json` holds."""

    ratios: dict[str, float]  # target ratio per matrix, in model module order
    block_ratios: list[float]
    measured: dict[str, float]  # zero fraction of every matrix as saved
    metadata: dict


# ---------------------------------------------------------------- llm-compressor recipe


def llmcompressor_recipe(
    ratios: dict[str, float], pruner: str, pattern: str = "unstructured", dense: bool = False, **options
) -> str:
    """YAML text of an llm-compressor recipe that prunes each matrix in `ratios` to its ratio.

    `ratios` maps module names (`prunable_matrices(model)` names) to sparsities and must be
    in the model's module order: llm-compressor applies the i-th `sparsity` entry to the
    i-th module its `targets` match, in `model.named_modules()` order, whatever the order
    of `targets` (save_pruned sorts them). `pattern` is "unstructured" or "N:M" (prune N of
    every M weights; llm-compressor then ignores the ratios). `options` become extra modifier
    arguments (e.g. `offload_hessians=True`); SparseGPT gets `block_size` 128 and
    `dampening_frac` 0.01 unless given.

    The pruner's spec (alphaprune/pruning/) names its llm-compressor modifier and options:
    - a pruner with one ("sparsegpt": `SparseGPTModifier`, "wanda": `WandaPruningModifier`)
      gets a one-shot stage of it;
    - a pruner without one (magnitude: llm-compressor's MagnitudePruningModifier is a
      training-time schedule with one global sparsity) has no runnable recipe that
      reproduces it. The recipe instead holds a fine-tuning stage (`ConstantPruningModifier`
      on the pruned weights: keeps the exported zeros fixed during training) and, commented
      out, the one-shot stage with the ratios as a `WandaPruningModifier` (the calibrated
      pruner closest to it), for a user who wants to re-prune the dense model; the spec's
      note says why. With `dense` (ratios alone, for a model not pruned yet: `allocate`, the
      Allocation page) that one-shot stage is the recipe, with the note.
    """
    spec = registry.pruner(pruner)
    mask = _mask_structure(pattern)
    names, values = _check_ratios(ratios)
    header = _header(pruner, pattern, len(names))
    if "modifier" not in spec.recipe:
        note = list(spec.recipe.get("note", ()))
        if dense:  # nothing is pruned yet: the stand-in's one-shot stage is the recipe
            stage = _sparsity_stage(_standin(), names, values, mask, options)
            return "\n".join(header + [f"# {line}" for line in note] + stage) + "\n"
        return _keep_zeros_recipe(header, note, names, values, mask, options)
    options = {**spec.recipe.get("options", {}), **options}
    return "\n".join(header + _sparsity_stage(spec.recipe["modifier"], names, values, mask, options)) + "\n"


def _keep_zeros_recipe(header: list[str], note: list[str], names: list[str], values: list[float], mask: str,
                       options: dict) -> str:  # fmt: skip
    """A fine-tuning stage that keeps the exported zeros, and the one-shot stage commented out."""
    # llm-compressor matches module names (compressed-tensors' match_named_modules) and then
    # masks each module's `weight`: a parameter name ("...q_proj.weight") matches nothing.
    keep = {"start": 0, "targets": names}
    oneshot = _sparsity_stage(_standin(), names, values, mask, options)
    lines = (
        header
        + [f"# {line}" for line in note]
        + ["# The weights saved with this recipe are already pruned: the stage below keeps"]
        + ["# their zeros fixed while fine-tuning."]
        + _emit({"finetuning_stage": {"finetuning_modifiers": {"ConstantPruningModifier": keep}}})
        + ["", "# One-shot re-pruning of the dense model with these ratios: uncomment, and keep"]
        + ["# WandaPruningModifier or write SparseGPTModifier (which takes block_size, dampening_frac)."]
        + ["# " + line for line in oneshot]
    )
    return "\n".join(lines) + "\n"


def _standin() -> str:
    """The modifier a pruner without one gets: the default pruner's (Wanda's), the calibrated
    pruner closest to magnitude and RIA (both score |W|, RIA times activations as Wanda)."""
    return registry.pruner(registry.DEFAULT_PRUNER).recipe["modifier"]


def _header(pruner: str, pattern: str, count: int) -> list[str]:
    return [
        "# llm-compressor recipe written by alphaprune: layer-wise sparsity ratios",
        f"# pruner: {pruner}, pattern: {pattern}, {count} target modules.",
        "# sparsity[i] applies to the i-th target, counted in model.named_modules() order.",
    ]


def _sparsity_stage(modifier: str, names: list[str], values: list[float], mask: str, options: dict) -> list[str]:
    args = {"sparsity": values, "mask_structure": mask, **options, "targets": names, "ignore": IGNORE}
    lines = _emit({"sparsity_stage": {"sparsity_modifiers": {modifier: args}}})
    return _label_sparsities(lines, names)


def _label_sparsities(lines: list[str], names: list[str]) -> list[str]:
    """Name each sparsity entry's module in a trailing comment: the list is read by position."""
    start = next(i for i, line in enumerate(lines) if line.strip() == "sparsity:") + 1
    for k, name in enumerate(names):
        lines[start + k] += f"  # {name}"
    return lines


def _mask_structure(pattern: str) -> str:
    """alphaprune's pattern -> llm-compressor's mask_structure (both mean: prune N of every M)."""
    nm = parse_pattern(pattern)
    return "0:0" if nm is None else f"{nm[0]}:{nm[1]}"


def _check_ratios(ratios: dict[str, float]) -> tuple[list[str], list[float]]:
    if not ratios:
        raise UserError("no sparsity ratios to export: allocate ratios for the prunable matrices first")
    values = [float(v) for v in ratios.values()]
    bad = [name for name, v in zip(ratios, values, strict=True) if not 0.0 <= v <= 1.0]
    if bad:
        raise UserError(f"sparsity ratios must lie in [0, 1]; {bad[0]} has {ratios[bad[0]]}")
    return list(ratios), values


# ---------------------------------------------------------------- a tiny YAML emitter


def _emit(mapping: dict, indent: int = 0) -> list[str]:
    """Block-style YAML for nested dicts of scalars and lists (all this module writes)."""
    pad = " " * indent
    lines: list[str] = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key}:"] + _emit(value, indent + 2)
        elif isinstance(value, (list, tuple)) and value:
            lines += [f"{pad}{key}:"] + [f"{pad}  - {_scalar(item)}" for item in value]
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{key}: []")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return lines


def _scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UserError(f"cannot write the non-finite number {value} into a recipe")
        text = repr(value)
        # YAML 1.1 (PyYAML, which llm-compressor uses) reads 1e-05 as a string: keep a dot.
        return text.replace("e", ".0e", 1) if "e" in text and "." not in text else text
    # Single quotes keep "2:4" a string (unquoted, YAML 1.1 reads it as the base-60 int 124).
    return "'" + str(value).replace("'", "''") + "'"


# ---------------------------------------------------------------- saving


def save_pruned(
    model: nn.Module,
    tokenizer,
    directory: str | os.PathLike,
    ratios: dict[str, float],
    block_ratios: list[float],
    metadata: dict,
) -> Path:
    """Write model, tokenizer (skipped when None), ratios JSON and recipe into `directory`.

    `ratios` maps module names of `model` to their sparsity; `metadata` is stored as given
    (pruner, allocation, sparsity, epsilon, pattern, perplexities ...), and its "pruner"
    (default registry.WEIGHTS_ONLY, magnitude) and "pattern" (default "unstructured") choose the recipe.
    Returns the folder. Raises UserError when the target is a file or a foreign folder,
    or when writing fails for lack of space or permission (nothing is left behind).
    """
    target = Path(directory).expanduser().resolve()
    check_save_folder(target)
    ordered = _in_module_order(model, ratios)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write into {target.parent}: {exc.strerror or exc}") from exc
    try:
        with atomic_folder(target) as tmp:  # the folder appears whole or not at all
            _save_model(model, tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            write_export_files(tmp, ordered, block_ratios, _zero_fractions(model, ordered), metadata)
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return target


def write_export_files(folder: Path, ratios: dict, block_ratios, measured: dict, metadata: dict) -> None:
    """The recipe and the ratios JSON of an export, into the (temporary) folder being written
    with the model; the streamed save (alphaprune/stream.py) calls it before publishing."""
    pruner, pattern = str(metadata.get("pruner", registry.WEIGHTS_ONLY)), str(metadata.get("pattern", "unstructured"))
    record = {
        "format": FORMAT,
        "metadata": metadata,
        "ratios": ratios,
        "block_ratios": [float(r) for r in block_ratios],
        "measured": measured,
    }
    (Path(folder) / RECIPE_FILE).write_text(llmcompressor_recipe(ratios, pruner, pattern))
    both_generations(Path(folder))
    plain = json.loads(json.dumps(metadata, default=_jsonable))  # tensors and numpy scalars as numbers
    model_card.write_card(Path(folder), ratios, record["block_ratios"], measured, plain)
    # Written last: its presence marks a complete alphaprune export.
    (Path(folder) / RATIOS_FILE).write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")


def both_generations(folder: Path) -> None:
    """Make a folder transformers 5 wrote readable by transformers 4.x too, meaning unchanged.

    - config.json: 5 keeps RoPE's base in `rope_parameters`; 4.x reads a top-level
      `rope_theta` and silently falls back to 10000 without one (+4.8% perplexity on the
      default model, whose base is 100000). Both keys are written; 5 reads the nested one.
    - tokenizer_config.json: 5 names its fast tokenizer class `TokenizersBackend`, which 4.x
      cannot import; `PreTrainedTokenizerFast` is the same class in 5 and exists in 4.x.
    """
    config_path, tok_path = folder / "config.json", folder / "tokenizer_config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        rope = config.get("rope_parameters")
        if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in config:
            config["rope_theta"] = rope["rope_theta"]
            config_path.write_text(json.dumps(config, indent=2) + "\n")
    if tok_path.is_file():
        tok = json.loads(tok_path.read_text())
        if tok.get("tokenizer_class") == "TokenizersBackend":
            tok["tokenizer_class"] = "PreTrainedTokenizerFast"
            tok_path.write_text(json.dumps(tok, indent=2) + "\n")


def save_result(result, tokenizer, directory: str | os.PathLike) -> Path:
    """save_pruned for a pipeline.PruneResult: its pruned model and ratios, with the run's
    own settings and measured numbers as the metadata (the CLI and the app save the same)."""
    meta = {k: v for k, v in result.to_dict().items() if k in ("model", "ppl_before", "ppl_after", "actual_sparsity")}
    meta.update(result.config.to_dict())
    ratios, blocks = result.allocation.ratios, result.allocation.block_ratios
    return save_pruned(result.model, tokenizer, directory, ratios, blocks, meta)


def load_ratios(directory: str | os.PathLike) -> ExportedRatios:
    """Read `alphaprune_ratios.json` from an export folder."""
    path = Path(directory).expanduser() / RATIOS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: give a folder written by alphaprune's save_pruned") from exc
    return ExportedRatios(
        ratios=record["ratios"],
        block_ratios=record["block_ratios"],
        measured=record.get("measured", {}),
        metadata=record.get("metadata", {}),
    )


def check_save_folder(target: Path) -> None:
    """UserError unless `target` is new, empty, or a folder this module wrote before."""
    if target.is_file() or (target.exists() and not target.is_dir()):
        raise UserError(f"{target} is a file: give a folder path for the pruned model")
    if target.is_dir() and any(target.iterdir()) and not (target / RATIOS_FILE).is_file():
        raise UserError(
            f"{target} is a non-empty folder not written by alphaprune (no {RATIOS_FILE}): give a new or empty folder"
        )


def _in_module_order(model: nn.Module, ratios: dict[str, float]) -> dict[str, float]:
    """Ratios sorted as model.named_modules() lists them: llm-compressor reads the list by position."""
    position = {name: i for i, (name, _) in enumerate(model.named_modules())}
    unknown = [name for name in ratios if name not in position]
    if unknown:
        raise UserError(
            f"ratio for {unknown[0]!r}, which is not a module of the model: "
            "use the names prunable_matrices(model) gives"
        )
    return {name: float(ratios[name]) for name in sorted(ratios, key=position.__getitem__)}


@torch.no_grad()
def _zero_fractions(model: nn.Module, ratios: dict[str, float]) -> dict[str, float]:
    modules = dict(model.named_modules())
    return {name: float((modules[name].weight == 0).float().mean()) for name in ratios}


def _save_model(model: nn.Module, folder: Path) -> None:
    """save_pretrained (safetensors; tied weights stored once), also for GGUF-loaded models.

    A model read from a GGUF file keeps transformers' GGUF quantizer although its weights
    are plain dequantized tensors, and save_pretrained refuses such a model: hide the
    quantizer and its config entry while saving (the saved config then loads as a normal
    float model), and restore them afterwards.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if getattr(method, "value", method) != "gguf":
        _save_pretrained(model, folder)
        return
    saved = {key: getattr(model, key) for key in ("hf_quantizer", "is_quantized", "quantization_method")}
    config_entry = model.config.__dict__.pop("quantization_config", None)
    try:
        model.hf_quantizer, model.is_quantized, model.quantization_method = None, False, None
        _save_pretrained(model, folder)
    finally:
        for key, value in saved.items():
            setattr(model, key, value)
        if config_entry is not None:
            model.config.quantization_config = config_entry


def _save_pretrained(model: nn.Module, folder: Path) -> None:
    try:
        model.save_pretrained(folder)  # transformers 5 always writes safetensors
    except ValueError as exc:  # e.g. a quantization method transformers cannot serialize
        raise UserError(f"cannot save this model: {str(exc).splitlines()[0][:200]}") from exc


def _jsonable(value):
    """json.dumps fallback for metadata: numpy/torch scalars as numbers, anything else as text."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
