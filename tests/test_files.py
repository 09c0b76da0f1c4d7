"""Atomic writes: content lands whole, nothing is left behind, fsync only when asked."""

from __future__ import annotations

import os

import numpy as np
import pytest

from panoptic_detr.data import files
from panoptic_detr.data.files import atomic_write
from panoptic_detr.data.panoptic_png import read_panoptic_png, write_panoptic_png


@pytest.mark.parametrize("fsync", [True, False])
def test_atomic_write_fsync_flag(tmp_path, monkeypatch, fsync):
    calls, real = [], os.fsync
    monkeypatch.setattr(files.os, "fsync", lambda fd: calls.append(fd) or real(fd))
    path = atomic_write(tmp_path / "a" / "x.bin", lambda f: f.write(b"abc"), fsync=fsync)
    assert path.read_bytes() == b"abc" and len(calls) == int(fsync)
    ids = np.array([[0, 1, 70000], [256, 2**24 - 1, 5]], np.int64)
    write_panoptic_png(tmp_path / "p.png", ids, fsync=fsync)
    assert np.array_equal(read_panoptic_png(tmp_path / "p.png"), ids) and len(calls) == 2 * int(fsync)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "p.png", "x.bin"]
    with pytest.raises(FileExistsError):
        atomic_write(path, lambda f: f.write(b"new"), overwrite=False, fsync=fsync)
    assert path.read_bytes() == b"abc"


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os

    from panoptic_detr.data.files import write_json

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
