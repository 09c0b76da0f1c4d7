"""A tiny DETR whose queries are confident about several classes, and its checkpoint file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from panoptic_detr.data.images import preprocess
from panoptic_detr.loading import CHECKPOINT_FORMAT, Pretrained
from panoptic_detr.model import PRESETS, build_model
from panoptic_detr.structures import Categories, PaddedBatch

CATEGORIES = [
    {"id": 1, "name": "ball", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "cube", "isthing": 1, "color": [0, 80, 200]},
    {"id": 3, "name": "grass", "isthing": 0, "color": [60, 180, 60]},
    {"id": 4, "name": "sky", "isthing": 0, "color": [120, 200, 250]},
]
QUERY_CLASSES = [1, 2, 3, 4, 3, 1]  # 6 queries, stuff class 3 twice


def tiny_pretrained(dtype: torch.dtype = torch.float32, **overrides) -> Pretrained:
    """The "tiny" preset (with config `overrides`) and a class head that gives each query its
    own confident class (random heads give every query the same class: their decoder outputs
    barely differ)."""
    torch.manual_seed(0)
    config = PRESETS["tiny"].with_overrides(**overrides) if overrides else PRESETS["tiny"]
    model = build_model(config).eval()
    probe = preprocess(np.full((48, 72, 3), 128, np.uint8), 64, 96)
    with torch.no_grad():
        hs = model.detect(PaddedBatch.from_images([probe])).hs[-1, 0]  # N x d
        dev = hs - hs.mean(0)
        dev = dev / dev.norm(dim=1, keepdim=True)
        weight = torch.zeros_like(model.class_embed.weight)
        for q, c in enumerate(QUERY_CLASSES):
            weight[c] += 40 * dev[q]
        model.class_embed.weight.copy_(weight)
        model.class_embed.bias.zero_()
    categories = Categories(CATEGORIES, num_classes=config.num_classes)
    return Pretrained(model.to(dtype), config, categories, "tiny test model")


def save_checkpoint(path: Path, pretrained: Pretrained) -> Path:
    torch.save({"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(pretrained.config),
                "categories": CATEGORIES, "model": pretrained.model.float().state_dict()}, path)
    return path


def picture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful [h, w, 3] uint8 picture (blobs, not noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = np.zeros((h, w, 3))
    for _ in range(4):
        cy, cx, r = rng.random(3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 + 0.2 * r))
        out += blob[..., None] * rng.random(3)
    return (255 * out / out.max()).astype(np.uint8)
