"""Placing a model's modules across devices with accelerate's big-model placement.

    device_map = parse_device_map("balanced")            # or auto, sequential, or FILE.json
    device_map = parse_device_map("placement.json")      # {"model.layers.0": 0, "model.layers.1": "disk", ...}
    loaded = load_model(folder, device_map=device_map)   # alphaprune.models: transformers + accelerate
    first_device(loaded.model)                           # where input ids go (the embeddings' device)

A map names, per module prefix, a GPU index (or "cuda:N"), "cpu" or "disk" (weights kept in
an offload folder and read in for each forward pass). Activations follow each block's
device: the hooks accelerate installs move a module's inputs to its device, and the
block-by-block calibration (alphaprune/calibrate.py) moves each block's inputs and kwargs to
that block's device, as the reference code does with `hf_device_map`. Pruning rewrites
weights in place, so it needs every weight in memory: a map with "disk" is for evaluation
(to prune a model larger than memory use --offload disk, the streamed path).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from alphaprune.errors import UserError

STRATEGIES = ("auto", "balanced", "sequential")  # accelerate's own placements
_DEVICE = re.compile(r"^(cpu|disk|mps|cuda(:\d+)?|\d+)$")


def parse_device_map(text: str | None) -> str | dict | None:
    """A strategy name, or the map a JSON file holds (module prefix -> device); UserError if bad."""
    if text is None or text in STRATEGIES:
        return text
    path = Path(text).expanduser()
    if path.suffix.lower() != ".json" or not path.is_file():
        raise UserError(f"--device-map must be {', '.join(STRATEGIES)} or an existing FILE.json, not {text!r}")
    try:
        mapping = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the device map {path}: {exc}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"the device map {path} must be a JSON object: module prefix -> device")
    bad = [(k, v) for k, v in mapping.items() if not _DEVICE.match(str(v))]
    if bad:
        raise UserError(f"device map {path}: {bad[0][0]!r} -> {bad[0][1]!r} is not a GPU index, cuda:N, cpu or disk")
    return {k: int(v) if str(v).isdigit() else v for k, v in mapping.items()}


def has_disk(device_map) -> bool:
    """True when a map (as parsed, or as the model's hf_device_map) keeps weights on disk."""
    return isinstance(device_map, dict) and "disk" in device_map.values()


def first_device(model: nn.Module) -> torch.device:
    """Where a batch of input ids goes: the first module's device that holds real weights."""
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


def placement_key(model: nn.Module) -> str:
    """Where a model computes, for cache keys: "cpu", "cuda", or "map:<digest>" for a device map
    spanning more than one place (measured as its own placement, never taken from another's)."""
    import hashlib

    mapping = getattr(model, "hf_device_map", None)
    if isinstance(mapping, dict) and len({str(v) for v in mapping.values()}) > 1:
        return "map:" + hashlib.sha1(json.dumps(mapping, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return first_device(model).type


def module_device(module: nn.Module) -> torch.device | None:
    """The device a module computes on (its first real parameter's), None when all are on meta."""
    hook = getattr(module, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:  # accelerate's hook: disk- or cpu-offloaded weights computed here
        return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    for param in module.parameters():
        if param.device.type != "meta":
            return param.device
    return None


def stored_weight(module: nn.Module) -> torch.Tensor:
    """A module's weight; for one accelerate keeps on disk (meta in the module), the offloaded
    tensor its hook reads in at each forward pass."""
    weight = module.weight
    hook = getattr(module, "_hf_hook", None)
    if weight.device.type == "meta" and getattr(hook, "weights_map", None) is not None:
        return hook.weights_map["weight"]
    return weight


def refuse_offloaded_for_pruning(model: nn.Module) -> None:
    """Pruning writes weights in place: a model whose device map offloaded any weight (to disk,
    or to the CPU beside GPUs: accelerate then keeps them out of the modules) is refused."""
    if any(param.device.type == "meta" for param in model.parameters()):
        raise UserError(
            "this model's device map offloads weights (to disk, or to the CPU beside GPUs), and pruning "
            "rewrites every weight in memory: use a map that fits the devices (GPUs only, or cpu only), "
            "or --offload disk to prune block by block from the files"
        )
