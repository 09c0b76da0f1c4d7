"""COCO panoptic PNGs: [H, W] segment id maps to files and back, for every reader and writer.

The encoding: id = R + 256 G + 256^2 B in an 8-bit RGB PNG (ids < 2^24, 0 = void). R, G, B are
the three low bytes of the little-endian integer id, so both directions here are views of an
int32 buffer: no arithmetic and no int64 temporaries, which matter at 10^8 pixels.

Writing: Pillow reads the int32 buffer as RGBX directly, and deflates at level 1 (flat colour
regions compress ~150:1 even so, several times faster than the default level).

Reading: panoptic PNGs are flat colour regions that deflate ~150:1, and on such streams the
classic zlib inflate, which every common decoder (PIL, libpng in OpenCV and torchvision,
libspng) links, copies the short-distance matches byte by byte: it takes ~2 ms of a
640x480 PNG, more than all of the PQ maths. zlib-ng inflates the same stream ~30x
faster. No maintained decoder uses zlib-ng, so with the `fast-png` extra (zlib-ng +
pyspng) the PNG is taken apart here: its IDAT stream is inflated by zlib-ng and put
back as *stored* deflate blocks (a plain copy to inflate), and libspng (pyspng) undoes
the row filters and unpacks the pixels straight to RGBA, whose 4 bytes read as one
little-endian uint32 are the id plus the alpha byte. Without the extra, PIL decodes.
Both give identical maps (tests/test_panoptic_png.py; speed in
benchmarks/bench_png_decode.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

try:  # the `fast-png` extra
    import pyspng
    from zlib_ng import zlib_ng
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    pyspng = zlib_ng = None

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_LOW_24_BITS = np.uint32(0xFFFFFF)


def fast_decoder_available() -> bool:
    return pyspng is not None


def id_to_rgb(id_map: Any) -> np.ndarray:
    """[H, W] integer ids (numpy or torch; < 2^24) -> [H, W, 3] uint8 (a view, no copy of the ids)."""
    ids = _int32(id_map)
    return ids.view(np.uint8).reshape(*ids.shape, 4)[..., :3]


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3 or 4] uint8 -> [H, W] uint32 ids (a fourth channel, alpha, is ignored)."""
    rgb = np.asarray(rgb)
    rgbx = np.zeros((*rgb.shape[:-1], 4), np.uint8)
    rgbx[..., :3] = rgb[..., :3]
    return rgbx.view("<u4")[..., 0]


def write_panoptic_png(path: str | Path, id_map: Any, overwrite: bool = True, fsync: bool = True) -> Path:
    """Write an [H, W] id map (numpy or torch) as a COCO panoptic PNG, atomically (see
    `files.atomic_write` for `overwrite` and `fsync`)."""
    from .files import atomic_write  # the writer imported here: decoding needs it not

    data = panoptic_png_bytes(id_map)
    return atomic_write(path, lambda f: f.write(data), overwrite=overwrite, fsync=fsync)


def panoptic_png_bytes(id_map: Any) -> bytes:
    """The COCO panoptic PNG of an [H, W] id map (numpy or torch), as `write_panoptic_png` writes it."""
    import io

    from PIL import Image  # imported here: decoding needs it not

    ids = _int32(id_map)
    if ids.ndim != 2:
        raise ValueError(f"expected an [H, W] id map, got shape {tuple(ids.shape)}")
    h, w = ids.shape
    img = Image.frombytes("RGB", (w, h), memoryview(ids).cast("B"), "raw", "RGBX")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _int32(id_map: Any) -> np.ndarray:
    """C-contiguous little-endian int32 ids; larger integers keep their low bytes."""
    torch = sys.modules.get("torch")  # no torch loaded: no tensor to convert
    if torch is not None and isinstance(id_map, torch.Tensor):
        id_map = id_map.detach().to("cpu", torch.int32).numpy()
    return np.ascontiguousarray(id_map, dtype="<i4")


def read_panoptic_png(
    path: str | os.PathLike[str], dtype: DTypeLike = np.int64, fast: bool = True
) -> np.ndarray:
    """Decode a COCO panoptic PNG to an [H, W] id map of `dtype` (uint32 costs no conversion).

    fast: use zlib-ng + libspng when installed (PIL otherwise, and for unusual or damaged PNGs,
    so errors are PIL's). Raises OSError for unreadable files, ValueError for images that are
    not RGB(A).
    """
    ids = None
    if fast and pyspng is not None:
        with open(path, "rb") as f:
            data = f.read()
        try:
            ids = _decode_fast(data)
        except Exception:  # damaged or not a PNG: PIL decodes it or says what is wrong
            ids = None
    if ids is None:
        ids = _decode_pil(path)
    return ids.astype(dtype, copy=False)


def _decode_pil(path: str | os.PathLike[str]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("RGB", "RGBA"):
            raise ValueError(f"expected an RGB panoptic PNG, got mode {im.mode}")
        return rgb_to_id(np.asarray(im))


def _decode_fast(data: bytes) -> np.ndarray | None:
    """zlib-ng + libspng decoding of an 8-bit RGB(A) PNG; None for other PNGs."""
    if data[:8] != _SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError("not a PNG file")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth, color_type = data[24], data[25]
    if bit_depth != 8 or color_type not in (2, 6):  # 8-bit RGB or RGBA only; PIL does the rest
        return None
    view = memoryview(data)
    head, idat, tail = [], [], []
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos: pos + 4], "big")
        kind = data[pos + 4: pos + 8]
        end = pos + 12 + length
        if kind == b"IDAT":
            idat.append(view[pos + 8: end - 4])
        else:
            (tail if idat else head).append(view[pos:end])
        pos = end
        if kind == b"IEND":
            break
    if not idat:
        raise ValueError("PNG without image data")
    # The filtered rows, inflated into one buffer of the right size (a filter byte per row).
    raw = zlib_ng.decompress(b"".join(idat), bufsize=height * (1 + width * (3 if color_type == 2 else 4)))
    stored = _stored_zlib(memoryview(raw))
    crc = zlib_ng.crc32(b"IDAT")
    for piece in stored:
        crc = zlib_ng.crc32(piece, crc)
    size = sum(len(p) for p in stored)
    png = b"".join([_SIGNATURE, *head, size.to_bytes(4, "big"), b"IDAT", *stored, crc.to_bytes(4, "big"),
                    *tail])
    rgba = pyspng.load(png, format="RGBA")  # [H, W, 4] uint8, a fresh writable array
    ids = rgba.view("<u4")[..., 0]
    ids &= _LOW_24_BITS  # drop the alpha byte
    return ids


def _stored_zlib(raw: memoryview) -> list[bytes | memoryview]:
    """`raw` as the pieces of a zlib stream of stored (uncompressed) deflate blocks."""
    pieces: list[bytes | memoryview] = [b"\x78\x01"]  # zlib header: deflate, 32K window
    n = len(raw)
    for start in range(0, max(n, 1), 65535):
        block = raw[start: start + 65535]
        last = start + 65535 >= n
        # block header: BFINAL bit + type 00 (stored), then LEN and its complement NLEN
        size = len(block).to_bytes(2, "little") + (0xFFFF ^ len(block)).to_bytes(2, "little")
        pieces += [bytes([last]) + size, block]
    pieces.append(zlib_ng.adler32(raw).to_bytes(4, "big"))
    return pieces
