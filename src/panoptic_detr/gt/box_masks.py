"""Masks for box-only annotations (`--box-masks box|model:...`) and where each mask came from.

An annotation with a `bbox` and no `segmentation` (missing, null or an empty list) gets a mask
inside its box: `box` fills the rectangle (a baseline), an `InstanceModelSource` predicts one
with its mask head, the box as the proposal (`box_queries`: the boxes to ask it about). The
mask is stored in the annotation as an RLE, so every later step reads it like a drawn one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

DRAWN, BOX, MODEL_BOX, MODEL = "drawn", "box", "model_box", "model"
ORIGINS = (DRAWN, BOX, MODEL_BOX, MODEL)
"""Where a thing mask came from: drawn by a person (polygon / RLE), a box filled, a box given
to the instance model's mask head, an instance the model found on its own (`--things-from`)."""
MODEL_MADE = (MODEL_BOX, MODEL)


def is_box_only(ann: dict[str, Any]) -> bool:
    """True for an annotation with a usable bbox [x, y, w, h] and no segmentation."""
    box = ann.get("bbox")
    return (not ann.get("segmentation") and isinstance(box, list | tuple) and len(box) == 4
            and all(isinstance(v, int | float) for v in box) and box[2] > 0 and box[3] > 0)


def box_xyxy(bbox: Sequence[float], height: int, width: int) -> list[float]:
    """COCO [x, y, w, h] -> [x0, y0, x1, y1] clipped to the image."""
    x, y, w, h = (float(v) for v in bbox)
    return [min(max(x, 0.0), width), min(max(y, 0.0), height), min(max(x + w, 0.0), width),
            min(max(y + h, 0.0), height)]


def rectangle(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """[H, W] bool: the pixels whose centres lie in box [x0, y0, x1, y1]."""
    mask = np.zeros((height, width), bool)
    x0, y0, x1, y1 = box
    mask[int(np.ceil(y0 - 0.5)):int(np.ceil(y1 - 0.5)), int(np.ceil(x0 - 0.5)):int(np.ceil(x1 - 0.5))] = True
    return mask


def box_queries(anns: Sequence[dict[str, Any]], height: int, width: int) -> tuple[list[int], np.ndarray]:
    """(the indices of the box-only annotations, their boxes [N, 4] x0, y0, x1, y1 clipped to
    the image): what the instance model is asked for masks in, and `fill_box_masks` fills."""
    todo = [k for k, a in enumerate(anns) if is_box_only(a)]
    boxes = np.array([box_xyxy(anns[k]["bbox"], height, width) for k in todo], np.float32).reshape(-1, 4)
    return todo, boxes


def fill_box_masks(
    anns: Sequence[dict[str, Any]],
    height: int,
    width: int,
    box_masks: str | None,
    predicted: Sequence[np.ndarray] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The annotations with a mask in each box-only one (copies; the others unchanged) and the
    origin of each (`ORIGINS`), in order.

    box_masks: "box" (fill the rectangle), "model" (`predicted`: the instance model's [H, W]
    bool mask for each box of `box_queries`, in order; where one is empty, the box is filled),
    or None (box-only annotations left as they are: no pixel, reported as skipped).
    """
    out, origins = list(anns), [DRAWN] * len(anns)
    todo, boxes = box_queries(anns, height, width) if box_masks is not None else ([], None)
    if not todo:
        return out, origins
    if box_masks == "box":
        masks, origin = [rectangle(b, height, width) for b in boxes], BOX
    elif box_masks == "model" and predicted is not None and len(predicted) == len(todo):
        masks, origin = list(predicted), MODEL_BOX
    else:
        raise ValueError(f"box_masks must be 'box', or 'model' with a mask per box, got {box_masks!r}")
    for k, box, mask in zip(todo, boxes, masks, strict=True):
        if origin == MODEL_BOX and not mask.any():  # the model sees nothing there: keep the box
            mask, origins[k] = rectangle(box, height, width), BOX
        else:
            origins[k] = origin
        rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
        out[k] = {**anns[k], "segmentation": {"size": [height, width], "counts": rle["counts"].decode()}}
    return out, origins
