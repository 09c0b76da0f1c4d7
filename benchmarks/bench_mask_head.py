"""The network alone on one 800x1066 image: `detect`, then the mask head for K queries.

    PYTHONPATH=src python benchmarks/bench_mask_head.py [--threads 2] [--repeat 3] \
        [--channels-last] [--fuse-bn]

R50 panoptic preset with random weights (timings do not depend on the values). For K = 0, 10,
20, 100 kept queries it times `predict_masks` (the fast path: lay1 split into a per-image
feature part and a per-query attention part, adapters broadcast, fused 2x upsample-add), and
once the original's direct formulation for all 100 queries (`model(batch)`'s mask head), the
way the original runs it. Median wall time of `repeat` runs after one warm-up.
"""

from __future__ import annotations

import argparse

import torch
from timing import median_time

from panoptic_detr.model import PRESETS, build_model
from panoptic_detr.structures import PaddedBatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1066), metavar=("H", "W"))
    parser.add_argument("--channels-last", action="store_true", help="model and input channels-last")
    parser.add_argument("--fuse-bn", action="store_true", help="frozen BN folded into the convolutions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format

    torch.manual_seed(0)
    model = build_model(PRESETS["detr_r50_panoptic"]).eval()
    if args.fuse_bn:
        model.backbone.fuse_batchnorm()
    model.to(memory_format=fmt)
    h, w = args.size
    images = torch.randn(1, 3, h, w).contiguous(memory_format=fmt)
    batch = PaddedBatch(images, torch.zeros(1, h, w, dtype=torch.bool))

    print(f"torch {torch.__version__}, {args.threads} threads, {h}x{w}, {fmt}, fuse_bn={args.fuse_bn}")
    with torch.inference_mode():
        t = median_time(lambda: model.backbone(batch.images, batch.mask), args.repeat)
        print(f"backbone        {t:.3f} s")
        print(f"detect          {median_time(lambda: model.detect(batch), args.repeat):.3f} s")
        det = model.detect(batch)
        for k in (0, 10, 20, 100):
            t = median_time(lambda k=k: model.predict_masks(det, [torch.arange(k)]), args.repeat)
            print(f"masks K={k:<3d}     {t:.3f} s")

        def direct() -> None:
            att = model.bbox_attention(det.hs[-1], det.memory, det.padding)
            model.mask_head(det.src_proj, att, det.fpns)

        print(f"masks direct    {median_time(direct, args.repeat):.3f} s  (all 100, original formulation)")


if __name__ == "__main__":
    main()
