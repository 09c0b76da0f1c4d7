"""Box conversions and overlaps. Boxes are [..., 4] tensors; DETR predicts normalised cxcywh.

The two conversions are written out here (torchvision's `box_convert` arithmetic, the same
numbers) rather than imported: post-processing needs one, and a process that runs an exported
model (ONNX Runtime, OpenVINO) should not import torchvision for it (its extension is ~170 MB of
resident memory with torch's CUDA build). `generalized_box_iou` (training) is torchvision's,
imported when first called.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cxcywh_to_xyxy", "xyxy_to_cxcywh", "generalized_box_iou", "masks_to_boxes_xyxy"]


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """[..., 4] (cx, cy, w, h) -> [..., 4] (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """[..., 4] (x0, y0, x1, y1) -> [..., 4] (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[N, M] generalised IoU of [N, 4] and [M, 4] (x0, y0, x1, y1) boxes (torchvision's)."""
    from torchvision.ops import generalized_box_iou as giou

    return giou(boxes1, boxes2)


def masks_to_boxes_xyxy(masks: Tensor) -> Tensor:
    """[S, H, W] bool -> [S, 4] float (x0, y0, x1, y1) in pixels, pixel edges inclusive of the
    last pixel (x1 = last column + 1); empty masks give zeros."""
    s = masks.shape[0]
    out = torch.zeros((s, 4), dtype=torch.float32, device=masks.device)
    if s == 0:
        return out
    rows = masks.any(dim=2)  # S x H
    cols = masks.any(dim=1)  # S x W
    nonempty = rows.any(dim=1)
    h, w = masks.shape[1:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).amin(dim=1)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x0 = torch.where(cols, ar_w, w).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    out[:] = torch.stack([x0, y0, x1, y1], dim=1).float()
    out[~nonempty] = 0
    return out
