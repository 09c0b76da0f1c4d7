"""data/panoptic_png.py: the zlib-ng + libspng decoder gives exactly PIL's id maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from panoptic_detr.data import panoptic_png
from panoptic_detr.data.files import read_panoptic_png
from panoptic_detr.data.panoptic_png import read_id_map

FAST = panoptic_png.fast_decoder_available()
fast_only = pytest.mark.skipif(not FAST, reason="the fast-png extra is not installed")


def reference_pngs(reference):
    return sorted((reference / "pq").glob("*/*/*.png"))


def test_reference_pngs_decode_like_pil(reference):
    files = reference_pngs(reference)
    assert len(files) == 8
    for f in files:
        if FAST:  # the fast path takes them (not the PIL fallback)
            assert panoptic_png._decode_fast(f.read_bytes()) is not None
        want = read_panoptic_png(f)
        for fast in (True, False):
            got = read_id_map(f, fast=fast)
            assert got.dtype == np.uint32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


def write(path, array, **save):
    Image.fromarray(array).save(path, **save)
    return path


@fast_only
@pytest.mark.parametrize("kind", ["flat", "noise", "rgba", "level0", "level9", "tiny"])
def test_fast_decoder_equals_pil(tmp_path, kind):
    rng = np.random.default_rng(0)
    h, w = (1, 1) if kind == "tiny" else (300, 500)
    ids = rng.integers(0, 2**24, size=(h, w))
    if kind != "noise":  # flat regions, the usual panoptic PNG
        blocks = rng.integers(0, 2**24, size=(h // 50 + 1, w // 50 + 1))
        ids = np.repeat(np.repeat(blocks, 50, 0), 50, 1)[:h, :w]
    rgb = np.stack([ids & 255, ids >> 8 & 255, ids >> 16], -1).astype(np.uint8)
    save = {"compress_level": {"level0": 0, "level9": 9}.get(kind, 6)}
    if kind == "rgba":
        rgb = np.concatenate([rgb, rng.integers(0, 256, (h, w, 1), dtype=np.uint8)], -1)
    path = write(tmp_path / "a.png", rgb, **save)
    if kind == "noise":  # large enough for PIL to split the image data into several IDAT chunks
        assert path.read_bytes().count(b"IDAT") > 1
    got = read_id_map(path)
    np.testing.assert_array_equal(got, read_id_map(path, fast=False))
    np.testing.assert_array_equal(got, ids)


def test_other_pngs_fall_back_or_fail_clearly(tmp_path):
    grey = write(tmp_path / "grey.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="expected an RGB panoptic PNG"):
        read_id_map(grey)
    palette = tmp_path / "p.png"
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).convert("P").save(palette)
    with pytest.raises(ValueError, match="mode P"):
        read_id_map(palette)
    truncated = tmp_path / "t.png"
    good = write(tmp_path / "good.png", np.full((40, 40, 3), 9, np.uint8)).read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(Exception):  # noqa: B017 - zlib, libspng and PIL each raise their own
        read_id_map(truncated)
    (tmp_path / "x.png").write_bytes(b"not a png at all")
    with pytest.raises(Exception):  # noqa: B017
        read_id_map(tmp_path / "x.png")
