"""data/panoptic_png.py, the COCO panoptic PNG codec: the zlib-ng + libspng decoder gives
exactly PIL's id maps, and the writer gives exactly the bytes of PIL saving the RGB array."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_detr.data import panoptic_png
from panoptic_detr.data.panoptic_png import id_to_rgb, read_panoptic_png, rgb_to_id, write_panoptic_png

FAST = panoptic_png.fast_decoder_available()
fast_only = pytest.mark.skipif(not FAST, reason="the fast-png extra is not installed")


def reference_pngs(reference):
    return sorted((reference / "pq").glob("*/*/*.png"))


def pil_ids(path):
    """The COCO definition, computed independently: id = R + 256 G + 256^2 B."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB")).astype(np.int64)
    return a[..., 0] + 256 * a[..., 1] + 65536 * a[..., 2]


def random_ids(h=37, w=53, seed=0, high=2**24):
    return np.random.default_rng(seed).integers(0, high, size=(h, w))


def test_reference_pngs_decode_like_pil(reference):
    files = reference_pngs(reference)
    assert len(files) == 8
    for f in files:
        if FAST:  # the fast path takes them (not the PIL fallback)
            assert panoptic_png._decode_fast(f.read_bytes()) is not None
        want = pil_ids(f)
        for fast in (True, False):
            got = read_panoptic_png(f, np.uint32, fast=fast)
            assert got.dtype == np.uint32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
            assert read_panoptic_png(f, fast=fast).dtype == np.int64


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
    got = read_panoptic_png(path)
    np.testing.assert_array_equal(got, read_panoptic_png(path, fast=False))
    np.testing.assert_array_equal(got, ids)


def test_other_pngs_fall_back_or_fail_clearly(tmp_path):
    grey = write(tmp_path / "grey.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="expected an RGB panoptic PNG"):
        read_panoptic_png(grey)
    palette = tmp_path / "p.png"
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).convert("P").save(palette)
    with pytest.raises(ValueError, match="mode P"):
        read_panoptic_png(palette)
    truncated = tmp_path / "t.png"
    good = write(tmp_path / "good.png", np.full((40, 40, 3), 9, np.uint8)).read_bytes()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(Exception):  # noqa: B017 - zlib, libspng and PIL each raise their own
        read_panoptic_png(truncated)
    (tmp_path / "x.png").write_bytes(b"not a png at all")
    with pytest.raises(Exception):  # noqa: B017
        read_panoptic_png(tmp_path / "x.png")


@pytest.mark.parametrize("kind", ["numpy int64", "numpy uint32", "torch int64", "torch int32", "strided"])
def test_writer_bytes_equal_pil_saving_the_rgb_array(tmp_path, kind):
    """The RGBX view of the int32 ids makes exactly the file PIL makes of the [H, W, 3] array."""
    ids = random_ids()
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)
    want = io.BytesIO()
    Image.fromarray(rgb).save(want, format="PNG", compress_level=1)
    given = {"numpy int64": ids, "numpy uint32": ids.astype(np.uint32), "torch int64": torch.from_numpy(ids),
             "torch int32": torch.from_numpy(ids).int(), "strided": np.asfortranarray(ids)}[kind]
    path = write_panoptic_png(tmp_path / "p.png", given)
    assert path.read_bytes() == want.getvalue()
    np.testing.assert_array_equal(read_panoptic_png(path), ids)


def test_writer_keeps_the_low_24_bits_and_is_atomic(tmp_path):
    ids = np.array([[0, 1, 2**24 + 5], [2**31 + 7, 255, 65536]], np.int64)
    path = write_panoptic_png(tmp_path / "p.png", ids)
    np.testing.assert_array_equal(read_panoptic_png(path), ids & (2**24 - 1))
    with pytest.raises(FileExistsError):
        write_panoptic_png(path, ids, overwrite=False)
    with pytest.raises(ValueError, match=r"expected an \[H, W\] id map"):
        write_panoptic_png(tmp_path / "q.png", ids[None])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_rgb_id_round_trip():
    ids = random_ids(17, 9, seed=1)
    rgb = id_to_rgb(ids)
    assert rgb.shape == (17, 9, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 1], ids // 256 % 256)
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)
    np.testing.assert_array_equal(id_to_rgb(torch.from_numpy(ids)), rgb)
    rgba = np.concatenate([rgb, np.full((17, 9, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(rgb_to_id(rgba), ids)


def test_damaged_files_end_in_the_usual_errors(tmp_path):
    """The fast decoder hands what it cannot take to PIL, so callers catch OSError/ValueError."""
    path = write_panoptic_png(tmp_path / "p.png", random_ids())
    data = path.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    for bad in (cut, tmp_path / "x.png"):
        if bad.name == "x.png":
            bad.write_bytes(b"not a png at all")
        with pytest.raises((OSError, ValueError, SyntaxError)):
            read_panoptic_png(bad)
    with pytest.raises(FileNotFoundError):
        read_panoptic_png(tmp_path / "absent.png")
