"""On-disk cache of analyses, keyed by a fingerprint of the weights.

The fingerprint is a SHA-1 over every analysed matrix's bytes (with its name and shape),
hashed on a few threads (hashlib releases the GIL): ~0.2 s for SmolLM2-135M here. Weights
read from checkpoint files hash as their float32 values, like a float32 model in memory,
so both analysis paths share entries. An entry is one `.npz` file (every eigenvalue array
plus the metrics as JSON) written with alphaprune.atomic (a temporary name, then a
rename), so a kill never leaves half an entry.

    fp = weights_fingerprint(refs)   # files: weights_fingerprint(refs, read, as_dtype=torch.float32)
    entry = load_entry(key)          # None when absent or unreadable
    save_entry(key, records, eigenvalues)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from alphaprune.arch import MatrixRef
from alphaprune.atomic import atomic_file
from alphaprune.paths import cache_dir

_CHUNK_BYTES = 1 << 24  # a weight cast for hashing is cast 16 MB at a time


def tensor_digest(name: str, weight: torch.Tensor, as_dtype: torch.dtype | None = None) -> bytes:
    """SHA-1 of one weight (its name, shape, dtype and bytes), as if cast to `as_dtype`.

    The cast goes a block of rows at a time, so a bf16 weight read from a file hashes like
    the float32 weight of a model in memory without a float32 copy of it all."""
    w = weight.detach()
    dtype = as_dtype or w.dtype
    h = hashlib.sha1(f"{name}|{tuple(w.shape)}|{dtype}".encode())
    rows = w.reshape(-1, w.shape[-1]) if w.dim() > 1 else w.reshape(1, -1)  # (rows, cols), a view
    step = max(1, _CHUNK_BYTES // max(1, rows.shape[1] * dtype.itemsize))
    for start in range(0, rows.shape[0], step):
        block = rows[start : start + step].to(device="cpu", dtype=dtype).contiguous()
        h.update(memoryview(block.view(torch.uint8).reshape(-1).numpy()))
    return h.digest()


def _module_weight(ref: MatrixRef) -> torch.Tensor:
    from alphaprune.placement import stored_weight  # a device map may keep it on disk

    return stored_weight(ref.module)


def weights_fingerprint(
    refs: list[MatrixRef],
    read: Callable[[MatrixRef], torch.Tensor] = _module_weight,
    as_dtype: torch.dtype | None = None,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> str:
    """A hex digest that changes whenever any analysed weight changes.

    `read(ref)` gives the weight in its module's layout (default: the module's own). With
    a reader of checkpoint files and as_dtype=torch.float32 the digest is the one of the
    float32 model in memory. `progress(done)` after each matrix.
    """

    def digest(ref: MatrixRef) -> bytes:
        return tensor_digest(ref.name, read(ref), as_dtype)

    digests = []
    with ThreadPoolExecutor(threads or max(2, os.cpu_count() or 2)) as pool:
        for done, d in enumerate(pool.map(digest, refs), start=1):
            digests.append(d)
            if progress is not None:
                progress(done)
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
