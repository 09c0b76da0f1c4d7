"""Seconds to draw one labelled overlay (`viz.overlay`: tint, two-tone outlines, labels,
legend) at 256, 1024, 2048 (the runner's cap for overlay files) and 3000 px on the longer
side; a scene of 4 stuff regions and 12 things, drawn to scale.

    PYTHONPATH=src python benchmarks/bench_overlay.py [--repeat 3]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from timing import median_time

from panoptic_detr.structures import Categories, PanopticResult
from panoptic_detr.viz import overlay


def scene(h: int, w: int) -> tuple[np.ndarray, PanopticResult]:
    rng = np.random.default_rng(0)
    ids = np.ones((h, w), np.int64)
    ids[h // 2 :, : w // 2], ids[: h // 2, w // 2 :], ids[h // 2 :, w // 2 :] = 2, 3, 4
    yy, xx = np.mgrid[:h, :w]
    for k in range(12):  # things: discs
        cy, cx, r = rng.random() * h, rng.random() * w, (0.04 + 0.06 * rng.random()) * min(h, w)
        ids[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 5 + k
    infos = [{"id": i, "category_id": [184, 187, 193, 199][i - 1] if i <= 4 else 1, "isthing": i > 4,
              "score": 0.9, "area": int((ids == i).sum())} for i in range(1, 17)]
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, PanopticResult(torch.from_numpy(ids), [s for s in infos if s["area"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cats = Categories.coco_panoptic()
    for side in (256, 1024, 2048, 3000):
        h, w = side * 3 // 4, side
        image, result = scene(h, w)
        t = median_time(lambda: overlay(image, result, cats), args.repeat)  # noqa: B023
        print(f"{w}x{h}: {t:.3f} s per overlay ({len(result.segments_info)} segments)")


if __name__ == "__main__":
    main()
