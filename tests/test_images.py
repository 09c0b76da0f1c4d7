"""Image decoding (every awkward kind of file) and DETR preprocessing parity with the original."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_detr.data.images import (
    ImageError,
    load_image,
    normalize,
    preprocess,
    resize_shape,
)
from panoptic_detr.structures import PaddedBatch


def test_preprocess_matches_original_pipeline(reference):
    """Resize (shortest 256, longest <= 384), normalise and pad the two reference photos."""
    official = torch.load(reference / "official_outputs.pt", weights_only=True)
    names = sorted(p.name for p in (reference / "images").glob("*.jpg"))
    assert names == official["images"]
    images = [preprocess(load_image(reference / "images" / n), short=256, max_size=384) for n in names]
    batch = PaddedBatch.from_images(images)
    assert torch.equal(batch.mask, official["input_mask"])
    diff = (batch.images.double() - official["input"]).abs()
    # measured: max 0, mean 0 -- Pillow bilinear on uint8 then float32 maths is the original path
    assert diff.max().item() <= 1e-6, diff.max().item()


@pytest.mark.parametrize(
    "h, w, short, max_size, expected",
    [
        (427, 640, 256, 384, (256, 383)),  # int() truncation of 383.7
        (360, 640, 256, 384, (216, 384)),  # the long side caps: short side becomes round(216.0)
        (640, 427, 256, 384, (383, 256)),
        (800, 800, 800, 1333, (800, 800)),
        (480, 640, 800, 1333, (800, 1066)),
        (1, 1, 800, 1333, (800, 800)),
        (10, 10000, 800, 1333, (1, 1000)),  # original: round(1.333) = 1, then int(1 * 1000)
        (1, 20000, 800, 1333, (1, 20000)),  # original would give 0 rows; we keep 1
    ],
)
def test_resize_shape_original_rounding(h, w, short, max_size, expected):
    assert resize_shape(h, w, short, max_size) == expected


def test_preprocess_normalisation_and_shape():
    img = np.full((30, 40, 3), 128, np.uint8)
    t = preprocess(img, short=15, max_size=100)
    assert t.shape == (3, 15, 20) and t.dtype == torch.float32
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(t.mean(dim=(1, 2)), expected)
    assert torch.equal(normalize(img), preprocess(img, short=30, max_size=None))  # no-op resize
    with pytest.raises(ValueError, match="uint8"):
        preprocess(img.astype(np.float32))


def _save(path, im: Image.Image, **kw):
    im.save(path, **kw)
    return path


def _check_rgb(a: np.ndarray, shape):
    assert a.dtype == np.uint8 and a.shape == (*shape, 3) and a.flags.writeable


def test_exif_orientation_is_honoured(tmp_path):
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :16, 0] = 255  # stored: left half red, right half blue
    a[:, 16:, 2] = 255
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(tmp_path / "rot.jpg", im, exif=exif, quality=95)
    out = load_image(path)
    _check_rgb(out, (32, 16))
    assert out[:14, :, 0].mean() > 200 and out[:14, :, 2].mean() < 50  # the left became the top
    assert out[18:, :, 2].mean() > 200 and out[18:, :, 0].mean() < 50


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "1", "P", "PA"])
def test_modes_become_rgb(tmp_path, mode):
    src = Image.new("RGB", (7, 5), (200, 100, 50))
    src.putpixel((0, 0), (255, 255, 255))
    im = src.convert(mode) if mode not in ("PA",) else src.convert("P")
    if mode == "PA":
        im.info["transparency"] = 0  # a palette with a transparent entry
    path = _save(tmp_path / f"x_{mode}.png", im)
    out = load_image(path)
    _check_rgb(out, (5, 7))
    expected = np.asarray(Image.open(path).convert("RGBA").convert("RGB"))
    np.testing.assert_array_equal(out, expected)
    if mode == "1":
        assert set(np.unique(out)) <= {0, 255}


def test_rgba_drops_alpha_keeping_colour(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    a[..., :3] = (10, 20, 30)
    a[..., 3] = 0  # fully transparent: the stored colour stays (documented choice)
    out = load_image(_save(tmp_path / "a.png", Image.fromarray(a, "RGBA")))
    assert (out == (10, 20, 30)).all()


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_scaled_not_clipped(tmp_path, mode):
    vals = np.array([[0, 257 * 100, 65535, 30000]], np.uint16)
    im = Image.fromarray(vals) if mode == "I;16" else Image.fromarray(vals.astype(np.int32), "I")
    out = load_image(_save(tmp_path / ("g16.png" if mode == "I;16" else "g32.tif"), im))
    _check_rgb(out, (1, 4))
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255, round(30000 / 257)])
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_cmyk_jpeg(tmp_path):
    path = _save(tmp_path / "c.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), quality=95)
    out = load_image(path)
    _check_rgb(out, (8, 8))
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60  # red


def test_tiny_and_huge(tmp_path):
    out = load_image(_save(tmp_path / "one.png", Image.new("RGB", (1, 1), (1, 2, 3))))
    assert out.shape == (1, 1, 3) and tuple(out[0, 0]) == (1, 2, 3)
    assert preprocess(out).shape == (3, 800, 800)
    # 10000 x 10000 is over Pillow's default warning limit (89 M pixels) but must load
    big = _save(tmp_path / "big.png", Image.new("1", (10000, 10000), 1))
    out = load_image(big)
    assert out.shape == (10000, 10000, 3) and out[5000, 5000, 0] == 255
    with pytest.raises(ImageError, match="decompression-bomb"):
        load_image(big, max_pixels=10_000_000)


def test_truncated_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    good = _save(tmp_path / "good.jpg", Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)))
    data = good.read_bytes()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt JPEG") as e:
        load_image(bad)
    assert e.value.path == str(bad) and "\n" not in str(e.value) and str(e.value).startswith(str(bad))


def test_corrupt_header_and_not_an_image(tmp_path):
    rng = np.random.default_rng(1)
    good = _save(tmp_path / "good.jpg", Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)))
    data = bytearray(good.read_bytes())
    data[2:40] = b"\x00" * 38  # wreck the JPEG header segments
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt|not an image|cannot read"):
        load_image(bad)
    text = tmp_path / "notes.jpg"
    text.write_text("hello, not a picture")
    with pytest.raises(ImageError, match="not an image"):
        load_image(text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="not an image"):
        load_image(empty)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)



def test_image_zoo(tmp_path):
    """Every kind of file in the shared zoo: loads to RGB of the expected size, or fails with
    one line naming the file."""
    from image_zoo import write_image_zoo

    for name, expected in write_image_zoo(tmp_path).items():
        path = tmp_path / name
        if expected is None:
            with pytest.raises(ImageError) as e:
                load_image(path)
            assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
        else:
            _check_rgb(load_image(path), expected)
