"""Whole training-step throughput: masks for matched queries only vs for all queries.

One step = detect + matching + mask head + losses (with aux) + backward + AdamW step, on
random images with `--segments` ground-truth segments each (random ellipses), R50 panoptic
preset (100 queries) at `--size` px. "All queries" is the original trainer's way: the full
forward computes every query's mask (the model's direct formulation), the loss selects the
matched ones. Prints images/s of both modes and the speed-up.

    PYTHONPATH=src python benchmarks/bench_train_step.py --device cuda --batch 8 --size 512
"""

from __future__ import annotations

import argparse
import time

import torch

from panoptic_detr.model import PRESETS, build_model
from panoptic_detr.ops.boxes import masks_to_boxes_xyxy, xyxy_to_cxcywh
from panoptic_detr.structures import PaddedBatch, Target
from panoptic_detr.train.criterion import SetCriterion
from panoptic_detr.train.model_with_loss import ModelWithLoss


def random_targets(
    n_images: int, size: int, segments: int, num_classes: int, g: torch.Generator
) -> list[Target]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for _ in range(n_images):
        c = torch.rand(segments, 2, generator=g) * size
        r = (torch.rand(segments, 2, generator=g) * 0.2 + 0.05) * size
        masks = ((yy - c[:, 0, None, None]) / r[:, 0, None, None]) ** 2 + (
            (xx - c[:, 1, None, None]) / r[:, 1, None, None]
        ) ** 2 < 1  # S x H x W
        boxes = xyxy_to_cxcywh(masks_to_boxes_xyxy(masks) / size)
        labels = torch.randint(1, num_classes, (segments,), generator=g)
        crowd = torch.zeros(segments, dtype=torch.bool)
        out.append(Target(masks=masks, labels=labels, boxes=boxes, iscrowd=crowd,
                          area=masks.sum((1, 2)).float(), size=(size, size)))
    return out


def throughput(preset: str, all_queries: bool, args: argparse.Namespace) -> float:
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = PRESETS[preset]
    model = build_model(cfg).to(device).train()
    step = ModelWithLoss(model, SetCriterion(cfg.num_classes), all_query_masks=all_queries)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-4)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    batch = PaddedBatch.from_images(list(images)).to(device)
    targets = [t.to(device) for t in random_targets(args.batch, args.size, args.segments, cfg.num_classes, g)]
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def one_step() -> None:
        with amp:
            losses = step(batch, targets)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.batch * args.steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="detr_r50_panoptic")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--segments", type=int, default=10, help="ground-truth segments per image")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bf16", action="store_true")
    args = p.parse_args()
    matched = throughput(args.preset, False, args)
    every = throughput(args.preset, True, args)
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else f"cpu x {torch.get_num_threads()}"
    print(f"{args.preset} {args.size}px batch {args.batch} {args.segments} segments/image, {name}"
          f"{', bf16' if args.bf16 else ''}")
    print(f"matched queries only: {matched:.2f} images/s")
    print(f"all queries:          {every:.2f} images/s")
    print(f"speed-up:             {matched / every:.2f}x")


if __name__ == "__main__":
    main()
