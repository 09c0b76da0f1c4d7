"""Image files in, network input out: decoding any image to RGB, and DETR's resize + normalisation.

`load_image` (a file) and `decode_image` (a file's bytes: an upload) are the one place an
image is opened. Anything that stops a file from being
a usable RGB picture becomes an `ImageError` naming the file and the problem in one line, so
callers can report it and go on with the other files.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DEFAULT_MAX_PIXELS = 150_000_000
"""Largest width x height `load_image` decodes by default (a 10000x10000 photo passes; a
decompression bomb that claims 50000x50000 in a few kilobytes does not). Pillow's own guard
raises at 2 x `PIL.Image.MAX_IMAGE_PIXELS` (179 M); raise that too to go beyond it."""


class ImageError(Exception):
    """An image file that cannot be used; `str()` is one line: "PATH: problem"."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line, whatever the decoder said
        super().__init__(f"{self.path}: {self.problem}")


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> [H, W, 3] uint8.

    Alpha (RGBA, LA, palettes with transparency) is dropped, keeping the colour stored under
    transparent pixels, as `Image.convert("RGB")` in the original DETR pipeline does.
    High bit depths are scaled, not clipped: 16-bit 0..65535 -> 0..255 (x / 257, rounded);
    32-bit integer images are taken as 16-bit data when they fit (Pillow opens 16-bit PNGs
    as "I" or "I;16"), else scaled by their maximum; float ("F") images in 0..1 are scaled
    by 255, others clipped to 0..255.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if mode == "F":
            a = a.astype(np.float64)
            a = a * 255.0 if np.nanmax(a, initial=0.0) <= 1.0 else a
        else:
            a = a.astype(np.int64).clip(min=0)
            top = int(a.max(initial=0))
            a = a / 257.0 if top <= 65535 else a * (255.0 / top)
        gray = np.nan_to_num(a).round().clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow warns when converting such palettes straight to RGB
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.array(im)  # writable, unlike np.asarray of a PIL image


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to [H, W, 3] uint8 RGB, upright as its EXIF orientation says.

    Raises `ImageError` for a missing or unreadable file, a file that is not an image, a
    truncated or corrupt one (the whole image is decoded here, so damage found late in the
    file is caught too), and images over `max_pixels` pixels.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(path, "is a directory, not an image")
    return _decode(path, path, max_pixels, None)


def decode_image(data: bytes, name: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS,
                 formats: tuple[str, ...] | None = None) -> np.ndarray:
    """`load_image` of an image file's bytes (an upload): the same pixels, the same checks;
    `ImageError`s name `name`. formats: Pillow format names to try (None: all it knows)."""
    return _decode(io.BytesIO(data), name, max_pixels, formats)


def _decode(source: Path | io.BytesIO, name: str | Path, max_pixels: int,
            formats: tuple[str, ...] | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # we apply our own size limit below; Pillow's warning would be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source, formats=formats)
    except FileNotFoundError:
        raise ImageError(name, "no such file") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except UnidentifiedImageError:
        raise ImageError(name, "not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"too many pixels (decompression-bomb guard): {e}") from None
    except OSError as e:
        raise ImageError(name, f"cannot read: {e}") from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise ImageError(name, f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                                   "(decompression-bomb guard; pass max_pixels to allow it)")
        if w == 0 or h == 0:
            raise ImageError(name, f"empty image ({w}x{h})")
        fmt = im.format or "image"
        try:
            # full decode now: truncation surfaces here (unless some other code has set
            # PIL.ImageFile.LOAD_TRUNCATED_IMAGES, which makes Pillow pad with grey instead)
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(name, f"truncated or corrupt {fmt} ({e})") from None
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # broken EXIF block: the pixels are fine, keep them as stored
            upright = im
        try:
            return _to_rgb(upright)
        except (OSError, ValueError) as e:
            raise ImageError(name, f"cannot convert {fmt} mode {upright.mode} to RGB ({e})") from None


def resize_shape(h: int, w: int, short: int, max_size: int | None) -> tuple[int, int]:
    """(h, w) after DETR's resize: shortest side to `short`, longest at most `max_size`.

    Same rounding as the original `datasets/transforms.py:get_size_with_aspect_ratio`, so
    inputs match the original pipeline pixel for pixel in size. One deviation: a side never
    shrinks below 1 pixel (the original gives 0 for strips thinner than 1/max_size).
    """
    size = short
    if max_size is not None:
        lo, hi = float(min(h, w)), float(max(h, w))
        if hi / lo * size > max_size:
            size = max(1, int(round(max_size * lo / hi)))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return max(1, int(size * h / w)), size
    return size, max(1, int(size * w / h))


def resize(image: np.ndarray, short: int = 800, max_size: int | None = 1333) -> np.ndarray:
    """[H, W, 3] uint8 -> [h, w, 3] uint8 with `resize_shape`, Pillow bilinear (antialiased),
    which is what torchvision's `F.resize` does on the PIL images of DETR's pipeline."""
    h, w = image.shape[:2]
    oh, ow = resize_shape(h, w, short, max_size)
    if (oh, ow) == (h, w):
        return image
    out = Image.fromarray(np.ascontiguousarray(image)).resize((ow, oh), Image.Resampling.BILINEAR)
    return np.array(out)


def normalize(image: np.ndarray) -> Tensor:
    """[H, W, 3] uint8 -> [3, H, W] float32, (x / 255 - ImageNet mean) / std."""
    a = np.ascontiguousarray(image)
    a = a if a.flags.writeable else a.copy()  # torch refuses to wrap read-only memory quietly
    t = torch.from_numpy(a).permute(2, 0, 1).to(torch.float32).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return t.sub_(mean).div_(std)


def preprocess(image: np.ndarray, short: int = 800, max_size: int | None = 1333) -> Tensor:
    """[H, W, 3] uint8 RGB -> [3, h, w] float32 network input (DETR resize + ImageNet norm)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"preprocess wants an [H, W, 3] uint8 image, got {image.dtype} {image.shape}")
    return normalize(resize(image, short, max_size))


ACCEPTED = ("a file path, a PIL image, a numpy array ([H, W, 3] uint8 RGB; [H, W] or [H, W, 1] "
            "grayscale and [H, W, 4] RGBA are converted; float in [0, 1] is scaled) or a torch "
            "tensor ([3, H, W] or [H, W, 3], uint8 or float in [0, 1])")
"""What `as_rgb` takes, for the messages of everything that takes an image."""


def as_rgb(image: Any, channel_order: str = "RGB") -> np.ndarray:
    """Any one image a user may hold -> [H, W, 3] uint8 RGB: a path (decoded by `load_image`),
    a PIL image (any mode, as `load_image` converts it), a numpy array or a torch tensor (see
    `ACCEPTED`). channel_order: "BGR" for arrays and tensors from OpenCV (ignored for files
    and PIL images, whose order is known). A 3-dim tensor is channels-first unless only its
    last dimension has 1, 3 or 4 entries. Raises TypeError for other types, ValueError for
    arrays of another shape or range.
    """
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    if isinstance(image, str | os.PathLike):
        return load_image(image)
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    if isinstance(image, Tensor):
        image = _tensor_to_hwc(image.detach().cpu())
    elif not isinstance(image, np.ndarray):
        raise TypeError(f"an image must be {ACCEPTED}; got {type(image).__module__}.{type(image).__name__}")
    rgb = _array_to_rgb(image)
    return np.ascontiguousarray(rgb[..., ::-1]) if channel_order == "BGR" else rgb


def _tensor_to_hwc(t: Tensor) -> np.ndarray:
    if t.ndim == 3 and t.shape[0] in (1, 3, 4):
        t = t.permute(1, 2, 0)  # CHW (the torch convention wins when both ends could be channels)
    elif t.ndim not in (2, 3):
        raise ValueError(f"an image tensor must be [3, H, W], [H, W, 3] or [H, W], got {tuple(t.shape)} "
                         "(a batch: pass a list of images)")
    if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
        t = t.float()
    return t.numpy()


def _array_to_rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise ValueError(f"an image array must be [H, W, 3] RGB, [H, W, 4] RGBA or [H, W] gray, "
                         f"got shape {a.shape}")
    if a.dtype != np.uint8:
        if a.dtype.kind == "f":
            lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
            if not (0.0 <= lo and hi <= 1.0):
                raise ValueError(f"a float image must be in [0, 1], got values from {lo:g} to {hi:g} "
                                 "(pass uint8 for 0..255)")
            a = np.round(np.nan_to_num(a) * 255.0).astype(np.uint8)
        elif a.dtype == np.bool_ or a.dtype.kind not in "iu":
            raise ValueError(f"an image array must be uint8 or float in [0, 1], got {a.dtype}")
        else:
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi > 255:
                raise ValueError(f"an integer image must be in 0..255, got {a.dtype} from {lo} to {hi}")
            a = a.astype(np.uint8)
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    return a[..., :3] if a.shape[2] == 4 else a
