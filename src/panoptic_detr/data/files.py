"""Atomic file writes, and the JSON and PNG files written through them.

Every output of the project goes through here: written to a temporary file in the same
folder, flushed, then renamed over the target, so an interrupted run never leaves a
half-written file behind and a reader never sees one.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image


def atomic_write(
    path: str | Path, write: Callable[[IO[bytes]], Any], overwrite: bool = True, fsync: bool = True
) -> Path:
    """Call `write(f)` on a temporary file beside `path`, then rename it to `path`.

    With `overwrite=False` an existing `path` raises FileExistsError before anything is written.
    `fsync=False` skips flushing to the disk before the rename: still atomic for readers and
    against an interrupted process, not against a power cut; for bulk writes of many small
    files, where the fsync would cost more than making the file.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path}: exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private (0600); give it the mode open() would have
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any, overwrite: bool = True, indent: int | None = None,
               fsync: bool = True) -> Path:
    data = json_bytes(obj, indent)
    return atomic_write(path, lambda f: f.write(data), overwrite=overwrite, fsync=fsync)


def write_bytes_inside(folder: str | Path, name: str, data: bytes, fsync: bool = True) -> Path:
    """Write `data` to folder/name atomically. `name` came from another process: one that
    leads out of `folder` (absolute, or through "..") raises OSError."""
    if Path(name).is_absolute() or ".." in Path(name).parts:
        raise OSError(f"{name}: not a path inside {folder}")
    return atomic_write(Path(folder) / name, lambda f: f.write(data), fsync=fsync)


def json_bytes(obj: Any, indent: int | None = None) -> bytes:
    """The JSON file of `obj`, as `write_json` writes it."""
    return json.dumps(obj, indent=indent).encode()


def write_png(
    path: str | Path, array: np.ndarray, overwrite: bool = True, compress_level: int = 1, fsync: bool = True
) -> Path:
    """Write an [H, W] or [H, W, 3|4] uint8 array as PNG (fast compression by default)."""
    data = png_bytes(array, compress_level)
    return atomic_write(path, lambda f: f.write(data), overwrite=overwrite, fsync=fsync)


def png_bytes(array: np.ndarray, compress_level: int = 1) -> bytes:
    """The PNG file of an [H, W] or [H, W, 3|4] uint8 array, as `write_png` writes it."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()
