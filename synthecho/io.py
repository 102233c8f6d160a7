"""Atomic file writes and hashing.

Every file a stage produces is written to a temporary name in the same folder and renamed into place,
so a crash never leaves a half-written file that a rerun would mistake for finished work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is renamed onto `path`, on error deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            # mkstemp creates 0600 files; published files get the usual permissions (umask applied).
            os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys, no whitespace)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(canonical.encode("utf-8"))


def sha256_folder(folder: str | os.PathLike, pattern: str = "*") -> str:
    """Hash of every file under `folder` matching `pattern` (relative path + file hash), order-independent."""
    folder = Path(folder)
    entries = sorted(
        f"{p.relative_to(folder).as_posix()}:{sha256_file(p)}"
        for p in folder.rglob(pattern)
        if p.is_file() and not p.name.startswith(".")
    )
    return sha256_bytes("\n".join(entries).encode("utf-8"))


def sha256_model_folder(folder: str | os.PathLike) -> str:
    """Hash of the model files a sampler loads from a trained folder (checkpoints and reports excluded)."""
    folder = Path(folder)
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and "checkpoints" not in p.relative_to(folder).parts
        and p.suffix in {".safetensors", ".json", ".txt", ".model"}
        and not p.name.startswith(".")
    )
    listing = "\n".join(f"{p.relative_to(folder).as_posix()}:{sha256_file(p)}" for p in files)
    return sha256_bytes(listing.encode())
