"""Per-segment statistics of panoptic id maps (pure, no files; the PNG encoding of id maps is
`data/panoptic_png.py`)."""

from __future__ import annotations

import torch
from torch import Tensor


def segment_stats(id_map: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Area and COCO bbox of every id in `ids` ([S] int64) within `id_map` ([H, W]).

    Returns (area [S] int64, bbox [S, 4] int64 as [x, y, w, h]; zeros for absent ids).
    Vectorised over segments: one pass over the pixels for areas, one per axis for boxes.
    """
    s = int(ids.numel())
    dev = id_map.device  # every helper tensor on the id map's device (post-processing on CUDA)
    if s == 0:
        return (torch.zeros(0, dtype=torch.int64, device=dev),
                torch.zeros((0, 4), dtype=torch.int64, device=dev))
    flat = id_map.reshape(-1)
    sorted_ids, order = torch.sort(ids)
    pos = torch.searchsorted(sorted_ids, flat).clamp_(max=s - 1)
    hit = sorted_ids[pos] == flat
    idx = torch.where(hit, order[pos], s)  # s = no listed segment
    area = torch.bincount(idx, minlength=s + 1)[:s]
    h, w = id_map.shape
    ys = torch.arange(h, device=dev).view(h, 1).expand(h, w).reshape(-1)
    xs = torch.arange(w, device=dev).view(1, w).expand(h, w).reshape(-1)
    big = max(h, w) + 1
    y0 = torch.full((s + 1,), big, dtype=torch.int64, device=dev).scatter_reduce(0, idx, ys, "amin")[:s]
    x0 = torch.full((s + 1,), big, dtype=torch.int64, device=dev).scatter_reduce(0, idx, xs, "amin")[:s]
    y1 = torch.full((s + 1,), -1, dtype=torch.int64, device=dev).scatter_reduce(0, idx, ys, "amax")[:s]
    x1 = torch.full((s + 1,), -1, dtype=torch.int64, device=dev).scatter_reduce(0, idx, xs, "amax")[:s]
    bbox = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1)
    bbox[area == 0] = 0
    return area, bbox
