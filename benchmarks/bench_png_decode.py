"""Decoding COCO panoptic PNGs to [H, W] id maps: ours (zlib-ng + libspng) vs PIL, pyspng,
torchvision.io and OpenCV.

    PYTHONPATH=src python benchmarks/bench_png_decode.py DIR_OF_PNGS [--n 200]

Prints ms per PNG (best of 3 passes over the files, one thread) for each decoder that
imports, plus the resident memory that importing it costs. Every decoder's id map is
checked against PIL's.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np


def ids_from_rgb(rgb: np.ndarray) -> np.ndarray:
    from panoptic_detr.data.panoptic_png import rgb_to_id

    return rgb_to_id(rgb)


def pil_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return ids_from_rgb(np.asarray(im))


def pil_rgbx(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGBX")).view("<u4")[..., 0]
    return a & np.uint32(0xFFFFFF)


def ours_fast(path: Path) -> np.ndarray:
    from panoptic_detr.data.panoptic_png import fast_decoder_available, read_panoptic_png

    if not fast_decoder_available():
        raise ImportError(name="zlib_ng/pyspng")
    return read_panoptic_png(path, np.uint32)


def ours_pil(path: Path) -> np.ndarray:
    from panoptic_detr.data.panoptic_png import read_panoptic_png

    return read_panoptic_png(path, np.uint32, fast=False)


def pyspng_plain(path: Path) -> np.ndarray:
    import pyspng

    return ids_from_rgb(pyspng.load(path.read_bytes()))


def torchvision_png(path: Path) -> np.ndarray:
    import torchvision.io as io

    return ids_from_rgb(io.decode_png(io.read_file(str(path))).permute(1, 2, 0).numpy())


def opencv(path: Path) -> np.ndarray:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return ids_from_rgb(bgr[..., ::-1])


DECODERS = {"PIL (RGB array)": pil_rgb, "PIL (RGBX view)": pil_rgbx,
            "read_panoptic_png(fast=False)": ours_pil, "read_panoptic_png (zlib-ng+spng)": ours_fast,
            "pyspng.load": pyspng_plain,
            "torchvision.io.decode_png": torchvision_png, "cv2.imread": opencv}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--only", default=None, help="one decoder name (to measure its import memory alone)")
    args = ap.parse_args()
    files = sorted(args.dir.glob("*.png"))[: args.n]
    ref = [pil_rgb(f) for f in files]
    for name, fn in DECODERS.items():
        if args.only and args.only != name:
            continue
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            fn(files[0])
        except ImportError as e:
            print(f"{name:28s} not available ({e.name})")
            continue
        mem = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            out = [fn(f) for f in files]
            best = min(best, time.perf_counter() - t)
        assert all(np.array_equal(a, b) for a, b in zip(out, ref, strict=True)), name
        print(f"{name:28s} {best / len(files) * 1e3:6.3f} ms/PNG   (+{mem:.0f} MB max RSS on first use)")


if __name__ == "__main__":
    main()
