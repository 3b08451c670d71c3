"""Atomic writes: a file or a folder appears under its name whole, or not at all.

Everything is written under a temporary sibling name `.NAME.PID-RANDOM.tmp` and renamed
onto NAME at the end (a rename within one folder is atomic on POSIX and Windows). A kill
(SIGKILL, Ctrl-C, a power cut) leaves at most such a temporary: readers never open those
names, and the next write of the same NAME deletes the ones whose process is gone (POSIX;
elsewhere they stay). With Ctrl-C the writer deletes its own on the way out.

    from alphaprune import atomic
    atomic.write_text(path, text)               # also write_bytes
    with atomic.atomic_file(path, "wb") as f:   # any writer that takes a file handle
        np.savez(f, ...)
    with atomic.atomic_folder(folder) as tmp:   # fill tmp; it becomes `folder` at the end
        model.save_pretrained(tmp)

A folder that already exists is replaced (`replace=True`: moved aside, the new one renamed
in, the old one deleted; if a kill strikes between the two renames, the next write puts the
old folder back first) or kept (`replace=False`: for caches whose content is the same
whoever writes it, so a concurrent reader never sees its folder vanish).
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_OLD = ".old"  # suffix of a replaced folder between the two renames of a publish


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name != "posix":  # Windows' os.kill(pid, 0) sends Ctrl-C: never ask
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but not ours, or no way to tell: keep its files
        return True
    return True


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries of writes to `path` whose process has died; returns them.

    A folder moved aside by a publish that was killed before the new folder came in is
    renamed back to `path` (when `path` is still missing) instead: nothing stored is lost."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)-[0-9a-f]+\.tmp(\.old)?$")
    removed = []
    for leftover in path.parent.glob(glob.escape(f".{path.name}.") + "*.tmp*"):
        match = pattern.match(leftover.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if match.group(2) and not path.exists():
            try:
                os.replace(leftover, path)
                continue
            except OSError:
                pass
        _remove(leftover)
        removed.append(leftover)
    return removed


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kw) -> Iterator:
    """An open file whose content replaces `path` when the block ends without error.

    `mode` is "w" or "wb"; `open_kw` go to open() (encoding, newline). On any exception,
    KeyboardInterrupt included, `path` is left as it was and the temporary is deleted."""
    path = Path(path)
    clean_stale(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, mode, **open_kw) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_file(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path, "wb") as handle:
        handle.write(data)
    return Path(path)


@contextmanager
def atomic_folder(target: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """A new empty folder to fill; it becomes `target` when the block ends without error.

    An existing `target` is replaced (`replace=True`) or kept and the new folder dropped
    (`replace=False`). On any exception the temporary folder is deleted."""
    target = Path(target)
    clean_stale(target)
    tmp = _temp_path(target)
    tmp.mkdir()
    try:
        yield tmp
        _publish(tmp, target, replace)
    except BaseException:
        _remove(tmp)
        raise


def _publish(tmp: Path, target: Path, replace: bool) -> None:
    """Rename the finished folder `tmp` onto `target`."""
    if not replace:
        try:
            os.rename(tmp, target)  # refused when `target` exists and is not empty
        except OSError:
            if not target.is_dir():
                raise
            _remove(tmp)  # another writer published first: keep theirs
        return
    old = tmp.with_name(tmp.name + _OLD) if target.exists() else None
    if old is not None:
        os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old, target)
        raise
    if old is not None:
        _remove(old)
