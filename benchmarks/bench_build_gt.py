"""Images per second of `build-gt` from a semantic source at 640x480, and with the model sources.

Makes N synthetic 640x480 samples (JPEG photo, 12 polygon instances per image with overlaps,
a semantic PNG with 4 stuff classes), then times `build_gt` end to end: decoding, overlap
resolution, merging, PNG + preview writing, hard links, report.

    PYTHONPATH=src python benchmarks/bench_build_gt.py [--n 60] [--workers 1 2] [--no-previews]

`--models`: N synthetic scenes 256x256 (`data.synth`, as `bench_box_masks.py` makes them:
things as box-only COCO instances, stuff as semantic PNGs), built with the bundled models as
sources, each run through `runner.run_images` (`--batch-size`): the DETR demo model for the
stuff (`model:demo`), the Mask R-CNN stand-in for masks in the boxes and for things of its
own (`model:demo-maskrcnn`), and all three together (the seed's workflow). The models are
loaded before the clock starts.

    PYTHONPATH=src python benchmarks/bench_build_gt.py --models [--n 50] [--batch-size 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from panoptic_detr.gt import build_gt

H, W = 480, 640
STUFF = [(101, "sky"), (102, "ground"), (103, "wall"), (104, "vegetation")]
THINGS = [(1, "person"), (2, "car"), (3, "dog")]


def make_inputs(root: Path, n: int, seed: int = 0) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "semantic").mkdir()
    images, anns = [], []
    yy, xx = np.mgrid[0:H, 0:W]
    for i in range(n):
        photo = (128 + 60 * np.sin(xx[..., None] / rng.uniform(20, 60) + np.arange(3))
                 + rng.normal(0, 10, (H, W, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(photo).save(root / "images" / f"{i:06d}.jpg", quality=90)
        sem = np.full((H, W), 102, np.uint8)
        horizon = int(rng.integers(150, 300))
        sem[:horizon] = 101
        sem[horizon - 80 : horizon, : int(rng.integers(100, 400))] = 103
        sem[((yy - 400) / 60.0) ** 2 + ((xx - rng.integers(0, W)) / 120.0) ** 2 < 1] = 104
        sem[:5] = 255
        Image.fromarray(sem).save(root / "semantic" / f"{i:06d}.png")
        images.append({"id": i, "file_name": f"{i:06d}.jpg", "height": H, "width": W})
        for k in range(12):
            cx, cy = rng.uniform(40, W - 40), rng.uniform(40, H - 40)
            rx, ry = rng.uniform(15, 90), rng.uniform(15, 90)
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            poly = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1).reshape(-1)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": THINGS[k % 3][0],
                         "segmentation": [poly.round(1).tolist()], "iscrowd": 0})
    cats = [{"id": c, "name": nm, "isthing": 1} for c, nm in THINGS]
    data = {"images": images, "annotations": anns, "categories": cats}
    (root / "instances.json").write_text(json.dumps(data))
    labelmap = [{"id": c, "name": nm, "isthing": 0} for c, nm in STUFF]
    (root / "semantic" / "labelmap.json").write_text(json.dumps(labelmap))
    return root / "instances.json", root / "images", root / "semantic"


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def models(n: int, batch_size: int, previews: bool) -> None:
    """images/s of build_gt with the model sources (see the module docstring)."""
    import torch
    from bench_box_masks import inputs

    from panoptic_detr.gt.instance_model import InstanceModelSource
    from panoptic_detr.gt.sources import open_source

    stand_in = InstanceModelSource("demo-maskrcnn", device="cpu")
    detr = open_source("model:demo,device=cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pan, drawn, boxes, stuff = inputs(root, n, seed=11, size=256)
        semantic = f"semantic:{stuff}"
        runs = {
            "drawn masks + semantic stuff (no model)": dict(instances_json=drawn, stuff_from=semantic),
            "drawn masks + --stuff-from model:demo": dict(instances_json=drawn, stuff_from=detr),
            "boxes + --box-masks model:demo-maskrcnn + semantic": dict(
                instances_json=boxes, stuff_from=semantic, box_masks=stand_in),
            "boxes + --box-masks and --things-from the stand-in + semantic": dict(
                instances_json=boxes, stuff_from=semantic, box_masks=stand_in, things_from=stand_in),
            "boxes + --box-masks, --things-from the stand-in + model:demo": dict(
                instances_json=boxes, stuff_from=detr, box_masks=stand_in, things_from=stand_in),
        }
        print(f"{n} synthetic scenes 256x256, previews {'on' if previews else 'off'}, batch size "
              f"{batch_size}, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPU(s)")
        for k, (name, kwargs) in enumerate(runs.items()):
            t0, c0 = time.perf_counter(), _cpu()
            report = build_gt(images_dir=pan.parent / "images", out_dir=root / f"out{k}", previews=previews,
                              progress=False, log=lambda line: None, batch_size=batch_size, **kwargs)
            dt, cpu = time.perf_counter() - t0, _cpu() - c0
            assert report["images"]["processed"] == n, report["images"]
            print(f"{name:<64} {n / dt:6.2f} images/s wall, {1000 * cpu / n:7.1f} CPU ms/image")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-previews", dest="previews", action="store_false")
    ap.add_argument("--models", action="store_true", help="time the model sources instead (see above)")
    ap.add_argument("--batch-size", type=int, default=1)
    args = ap.parse_args()
    if args.models:
        models(args.n, args.batch_size, args.previews)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        instances, images, semantic = make_inputs(root / "in", args.n)
        print(f"{args.n} images {W}x{H}, 12 polygon instances each, semantic source; "
              f"previews {'on' if args.previews else 'off'}; {os.cpu_count()} CPU(s)")
        for run, workers in enumerate(args.workers):
            out = root / f"out{run}"
            t0, c0 = time.perf_counter(), _cpu()
            report = build_gt(instances, images, out, stuff_from=f"semantic:{semantic}", workers=workers,
                              previews=args.previews, progress=False, log=lambda line: None)
            dt, cpu = time.perf_counter() - t0, _cpu() - c0
            assert report["images"]["processed"] == args.n
            # CPU seconds per image tell the cost on a loaded machine, where wall time does not
            print(f"workers={workers}: {args.n / dt:.1f} images/s wall ({1000 * dt / args.n:.1f} ms/image), "
                  f"{1000 * cpu / args.n:.1f} CPU ms/image")


if __name__ == "__main__":
    main()
