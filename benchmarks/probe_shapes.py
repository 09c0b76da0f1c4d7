"""How fast a fresh backbone learns the synthetic things' shapes, without DETR around it: the
backbone's C4 features (stride 16) pooled over each ground-truth thing's box (roi_align 3x3,
then the mean) into a linear 6-way classifier, trained with AdamW on the training scenes for a
time budget; prints the held-out accuracy of the thing instances every 200 steps.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/probe_shapes.py --backbone resnet18 --minutes 3
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/probe_shapes.py --backbone vgg_small --minutes 3

Boxes are given (no matching, no transformer), so this isolates the backbone's learning speed
(benchmarks/RESULTS.md, session 5). Scenes: 2000 for training (seed 0), 200 held out (seed 1),
128 px, batch 8, bfloat16 autocast, as the learning recipe.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_convert, roi_align

from panoptic_detr.data.images import normalize
from panoptic_detr.data.synth import THINGS, make_scene
from panoptic_detr.model.backbone import Backbone
from panoptic_detr.model.config import BACKBONE_CHANNELS


def scene(seed: int, index: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(normalised image [3, S, S], thing boxes xyxy [T, 4], shape classes [T])."""
    img, _, segments = make_scene(seed, index, (size, size))
    things = [s for s in segments if s["category_id"] <= len(THINGS)]
    xywh = torch.tensor([s["bbox"] for s in things], dtype=torch.float32).reshape(-1, 4)
    labels = torch.tensor([s["category_id"] - 1 for s in things], dtype=torch.long)
    return normalize(img), box_convert(xywh, "xywh", "xyxy"), labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="vgg_small", choices=["resnet18", "resnet34", "vgg_small"])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = Backbone(args.backbone, dilation=True, norm="group_norm")
    head = nn.Linear(BACKBONE_CHANNELS[args.backbone][2], len(THINGS))
    params = [*backbone.parameters(), *head.parameters()]
    for q in params:
        q.requires_grad_(True)  # the stem too: from scratch
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4, fused=True)
    train = [scene(0, i, 128) for i in range(2000)]
    val = [scene(1, i, 128) for i in range(200)]

    def forward(items):
        x = torch.stack([it[0] for it in items])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats, _ = backbone(x, torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.bool))
        pooled = roi_align(feats[2].float(), [it[1] for it in items], output_size=3, spatial_scale=1 / 16,
                           sampling_ratio=2, aligned=True)
        return head(pooled.mean((2, 3))), torch.cat([it[2] for it in items])

    def accuracy() -> float:
        backbone.eval()
        with torch.no_grad():
            hits = [forward(val[j:j + 20]) for j in range(0, len(val), 20)]
        backbone.train()
        return float(sum((lo.argmax(1) == y).sum() for lo, y in hits) / sum(len(y) for _, y in hits))

    rng = np.random.default_rng(0)
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < args.minutes * 60:
        logits, labels = forward([train[i] for i in rng.choice(len(train), 8, replace=False)])
        if not len(labels):
            continue
        nn.functional.cross_entropy(logits, labels).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 200 == 0:
            print(f"step {step:5d}  {time.perf_counter() - start:5.0f} s  held-out accuracy {accuracy():.3f}",
                  flush=True)
    print(f"{args.backbone}: {step} steps in {args.minutes:g} min, held-out thing accuracy {accuracy():.3f} "
          f"(chance {1 / len(THINGS):.3f})")


if __name__ == "__main__":
    main()
