"""Uploaded files: size-limited, stored under the cache folder by content, zips unpacked safely.

Every upload of the app passes through here (alphaprune/ui/session.py calls it; no
Streamlit in this module, so it is tested like the library):

- a file over the limit (the server's `server.maxUploadSize`, .streamlit/config.toml) is
  refused before it is read;
- a file is written once, atomically, to cache_dir()/uploads/<kind>/<sha1>/<its name>;
- a .zip of a model folder is unpacked next to it only when no member escapes the folder
  (absolute paths, `..`), none is a symbolic link and the unpacked size stays under
  UNPACKED_FACTOR x the limit (a zip bomb is refused); it is unpacked under a temporary
  name and renamed, so a half-unpacked folder is never used.

    check_size("model.gguf", 300 * 2**20, limit_mb=200, instead="give its path")  # UserError
    path = save_upload("notes.txt", data, "texts")
    spec = model_spec(save_upload("model.zip", data, "models"), limit_mb=1024)  # folder with config.json
"""

from __future__ import annotations

import hashlib
import re
import shutil
import stat
import zipfile
from pathlib import Path

from alphaprune import atomic
from alphaprune.errors import UserError
from alphaprune.paths import cache_dir

UNPACKED_FACTOR = 4  # safetensors barely compress: a zip that grows more than this is suspect
MB = 2**20


def check_size(name: str, size: int, limit_mb: int, instead: str) -> None:
    """UserError when an upload is over the limit; `instead` says what to do then."""
    if size > limit_mb * MB:
        raise UserError(f"{name} is {size / MB:.0f} MB, over the upload limit of {limit_mb} MB; {instead}")


def _safe_name(name: str) -> str:
    """The file name of an upload without any folder part ('../x' -> 'x')."""
    base = re.split(r"[\\/]", name)[-1].replace("\0", "")
    return base if base not in ("", ".", "..") else "upload"


def save_upload(name: str, data: bytes, kind: str) -> Path:
    """The upload written under cache_dir()/uploads/<kind>/<sha1 of data>/<name>; its path.

    Written atomically (alphaprune.atomic): two sessions uploading the same file at once
    each write their own temporary, and the same bytes end under the one name."""
    digest = hashlib.sha1(data).hexdigest()[:16]
    target = cache_dir() / "uploads" / kind / digest / _safe_name(name)
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(target, data)
        except OSError as exc:
            raise UserError(
                f"cannot keep the upload {_safe_name(name)} in {target.parent} ({exc.strerror or exc}): "
                "set ALPHAPRUNE_CACHE to a writable folder with free space"
            ) from None
    return target


def _check_member(info: zipfile.ZipInfo, root: Path, zip_name: str) -> None:
    """UserError for a member that would land outside `root` or is a symbolic link."""
    name = info.filename
    parts = re.split(r"[\\/]", name)
    outside = name.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", name)
    if outside or not (root / name).resolve().is_relative_to(root.resolve()):
        raise UserError(
            f"{zip_name} holds {name!r}, a path outside its folder; "
            "zip the model folder itself (no '..' or absolute paths)"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UserError(f"{zip_name} holds a symbolic link ({name}); zip the files themselves, not links to them")


def _check_archive(archive: zipfile.ZipFile, root: Path, zip_name: str, limit_mb: int) -> None:
    """Every member safe, and the whole unpacked size within bounds and on the disk."""
    members = archive.infolist()
    for info in members:
        _check_member(info, root, zip_name)
    unpacked = sum(info.file_size for info in members)
    if unpacked > UNPACKED_FACTOR * limit_mb * MB:
        raise UserError(
            f"{zip_name} unpacks to {unpacked / MB:.0f} MB, more than {UNPACKED_FACTOR} x the upload limit; "
            "give the model folder's path instead"
        )
    free = shutil.disk_usage(root.parent).free
    if unpacked > free:
        raise UserError(
            f"{zip_name} unpacks to {unpacked / MB:.0f} MB but {free / MB:.0f} MB are free; free some space"
        )


def unpack_zip(path: Path, limit_mb: int) -> Path:
    """The folder a checked .zip is unpacked into (next to it, once; atomically, and a folder
    another session unpacked from the same upload meanwhile is kept)."""
    folder = path.with_suffix("")
    if folder.is_dir():
        return folder
    try:
        with zipfile.ZipFile(path) as archive:
            _check_archive(archive, folder, path.name, limit_mb)
            with atomic.atomic_folder(folder, replace=False) as tmp:
                archive.extractall(tmp)
    except zipfile.BadZipFile:
        raise UserError(f"{path.name} is not a readable zip archive; zip the model folder again") from None
    except OSError as exc:
        raise UserError(f"cannot unpack {path.name}: {exc.strerror or exc}") from None
    return folder


def model_spec(path: Path, limit_mb: int) -> str:
    """A saved model upload -> what load_model takes: the .gguf path, or the unpacked folder."""
    suffix = path.suffix.lower()
    if suffix == ".gguf":
        return str(path)
    if suffix != ".zip":
        raise UserError(f"{path.name} is neither a .gguf file nor a .zip of a model folder; upload one of those")
    folder = unpack_zip(path, limit_mb)
    configs = sorted(folder.rglob("config.json"), key=lambda p: (len(p.parts), str(p)))
    if not configs:
        raise UserError(f"{path.name} holds no config.json; zip the folder that save_pretrained wrote")
    return str(configs[0].parent)  # the shallowest one: the model folder itself
