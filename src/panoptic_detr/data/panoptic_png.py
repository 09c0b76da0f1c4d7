"""Decoding COCO panoptic PNGs to [H, W] uint32 id maps, fast (numpy only, no torch).

Panoptic PNGs are flat colour regions that deflate ~150:1, and on such streams the
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

import numpy as np

try:  # the `fast-png` extra
    import pyspng
    from zlib_ng import zlib_ng
except ImportError:  # pragma: no cover - exercised where the extra is not installed
    pyspng = zlib_ng = None

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fast_decoder_available() -> bool:
    return pyspng is not None


def read_id_map(path: str | os.PathLike[str], fast: bool = True) -> np.ndarray:
    """Decode a COCO panoptic PNG to an [H, W] uint32 id map (id = R + 256 G + 256^2 B).

    fast: use zlib-ng + libspng when installed (PIL otherwise or for unusual PNGs).
    Raises OSError/ValueError for unreadable files and non-RGB images.
    """
    if fast and pyspng is not None:
        with open(path, "rb") as f:
            data = f.read()
        ids = _decode_fast(data)
        if ids is not None:
            return ids
    return _decode_pil(path)


def _decode_pil(path: str | os.PathLike[str]) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("RGB", "RGBA"):
            raise ValueError(f"expected an RGB panoptic PNG, got mode {im.mode}")
        rgb = np.asarray(im)  # [H, W, 3 or 4] uint8
    ids = rgb[..., 0].astype(np.uint32)
    ids |= rgb[..., 1].astype(np.uint32) << 8
    ids |= rgb[..., 2].astype(np.uint32) << 16
    return ids


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
    ids &= np.uint32(0xFFFFFF)  # drop the alpha byte
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
