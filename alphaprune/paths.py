"""Where alphaprune keeps files: one place for the cache and data folders.

- cache (eigenvalues, analyses, dequantized GGUF models): $ALPHAPRUNE_CACHE, else
  $XDG_CACHE_HOME/alphaprune, else ~/.cache/alphaprune
- data (the run history database): $ALPHAPRUNE_DATA, else $XDG_DATA_HOME/alphaprune,
  else ~/.local/share/alphaprune

`check_writable(folder, env)` refuses, before any work, a folder that is a file, lies under
a file, or cannot be written, naming the variable that moves it.
"""

from __future__ import annotations

import os
from pathlib import Path

from alphaprune.errors import UserError


def _folder(env: str, xdg: str, fallback: str) -> Path:
    if os.environ.get(env):
        return Path(os.environ[env]).expanduser()
    base = os.environ.get(xdg) or str(Path.home() / fallback)
    return Path(base).expanduser() / "alphaprune"


def cache_dir() -> Path:
    """The cache folder (created on demand by whoever writes to it)."""
    return _folder("ALPHAPRUNE_CACHE", "XDG_CACHE_HOME", ".cache")


def data_dir() -> Path:
    """The data folder for files a user keeps (the run history)."""
    return _folder("ALPHAPRUNE_DATA", "XDG_DATA_HOME", ".local/share")


def check_writable(folder: Path, env: str) -> None:
    """UserError unless `folder` is (or can be created as) a writable folder. Creates nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:  # the nearest existing ancestor
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"lies under the file {existing}"
        raise UserError(f"the folder {folder} {where}: set {env} to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {existing} (permission denied): set {env} to a writable folder")
