"""Reading and checking a COCO-panoptic dataset on one core: `CocoPanoptic[i]` and `check`.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_data.py [--n 100] [--size 640x480]

Uses a synthetic dataset written to a temporary folder (seed 0, crowd_prob 0.2).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from panoptic_detr.data.check import check_dataset
from panoptic_detr.data.coco_panoptic import CocoPanoptic
from panoptic_detr.data.synth import make_dataset


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--size", default="640x480", help="WxH")
    a = p.parse_args()
    torch.set_num_threads(1)
    w, h = (int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(tmp, a.n, seed=0, size=(h, w), crowd_prob=0.2, progress=False)
        ds = CocoPanoptic(tmp)
        ds[0]  # warm-up
        t = time.perf_counter()
        segments = sum(len(ds[i][1]) for i in range(len(ds)))
        get = (time.perf_counter() - t) / len(ds) * 1000
        t = time.perf_counter()
        problems, _ = check_dataset(tmp, progress=False)
        chk = (time.perf_counter() - t) / len(ds) * 1000
        t = time.perf_counter()
        check_dataset(tmp, progress=False, decode_images=False)
        chk_fast = (time.perf_counter() - t) / len(ds) * 1000
    assert not problems
    print(f"{a.size}, n={a.n}, {segments / a.n:.1f} segments/image: CocoPanoptic[i] {get:.1f} ms, "
          f"check {chk:.1f} ms/image (--no-decode {chk_fast:.1f} ms)")


if __name__ == "__main__":
    main()
