"""On-disk cache of analyses, keyed by a fingerprint of the weights.

The fingerprint is a SHA-1 over every analysed matrix's bytes (with its name and shape),
hashed on a few threads (hashlib releases the GIL): ~0.2 s for SmolLM2-135M here. An
entry is one `.npz` file (every eigenvalue array plus the metrics as JSON) written with
alphaprune.atomic (a temporary name, then a rename), so a kill never leaves half an entry.

    fp = weights_fingerprint(refs)
    entry = load_entry(key)          # None when absent or unreadable
    save_entry(key, records, eigenvalues)
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from alphaprune.arch import MatrixRef
from alphaprune.atomic import atomic_file
from alphaprune.paths import cache_dir


def _matrix_digest(ref: MatrixRef) -> bytes:
    w = ref.module.weight.detach()
    if w.device.type != "cpu":
        w = w.cpu()
    w = w.contiguous()
    h = hashlib.sha1(f"{ref.name}|{tuple(w.shape)}|{w.dtype}".encode())
    h.update(memoryview(w.view(torch.uint8).reshape(-1).numpy()))
    return h.digest()


def weights_fingerprint(refs: list[MatrixRef]) -> str:
    """A hex digest that changes whenever any analysed weight changes."""
    with ThreadPoolExecutor(max(2, os.cpu_count() or 2)) as pool:
        digests = list(pool.map(_matrix_digest, refs))
    return hashlib.sha1(b"".join(digests)).hexdigest()


def _entry_path(key: str) -> Path:
    return cache_dir() / "analyses" / f"{key}.npz"


def load_entry(key: str) -> tuple[list[dict], dict[str, np.ndarray]] | None:
    """(metric records, name -> eigenvalues), or None if the entry is missing or broken."""
    path = _entry_path(key)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            records = json.loads(str(data["__records__"]))
            evals = {r["name"]: np.asarray(data[f"ev:{r['name']}"]) for r in records}
        return records, evals
    except (OSError, ValueError, KeyError):  # a corrupt entry is recomputed, not fatal
        return None


def save_entry(key: str, records: list[dict], evals: dict[str, np.ndarray]) -> Path | None:
    """Write one entry atomically; a read-only or full disk only skips the cache."""
    path = _entry_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"ev:{name}": ev for name, ev in evals.items()}
        with atomic_file(path, "wb") as handle:
            np.savez(handle, __records__=np.asarray(json.dumps(records)), **arrays)
        return path
    except OSError:
        return None
