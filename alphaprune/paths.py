"""Where alphaprune keeps files: one place for the cache and data folders.

- cache (eigenvalues, analyses, dequantized GGUF models): $ALPHAPRUNE_CACHE, else
  $XDG_CACHE_HOME/alphaprune, else ~/.cache/alphaprune
- data (the run history database): $ALPHAPRUNE_DATA, else $XDG_DATA_HOME/alphaprune,
  else ~/.local/share/alphaprune
"""

from __future__ import annotations

import os
from pathlib import Path


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
