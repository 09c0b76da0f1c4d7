"""Audit overlays of built ground truth: annotated pixels vs pixels labelled by the source.

Annotated segments are painted in solid class colour with a white outline around each
instance; source pixels get a translucent fill of their class colour over the photo; void
pixels show the photo darkened. A glance tells what a person drew and what a model guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

SOURCE_ALPHA = 0.45
VOID_DIM = 0.5


def draw_preview(
    image: np.ndarray,
    id_map: np.ndarray,
    segments_info: Sequence[dict[str, Any]],
    annotated: np.ndarray,
    colors: dict[int, Sequence[int]],
) -> np.ndarray:
    """image [H, W, 3] uint8, id_map [H, W] (0 = void), annotated [H, W] bool,
    colors: category id -> (r, g, b). Returns [H, W, 3] uint8."""
    lut = np.zeros((int(id_map.max(initial=0)) + 1, 3), dtype=np.uint8)
    for s in segments_info:
        lut[int(s["id"])] = colors.get(int(s["category_id"]), (255, 0, 255))
    photo = Image.fromarray(np.ascontiguousarray(image))
    color = Image.fromarray(lut[id_map])
    # PIL's C loops: translucent everywhere, then solid where annotated, dimmed where void
    out = Image.blend(photo, color, SOURCE_ALPHA)
    out.paste(color, mask=_mask(annotated))
    out.paste(photo.point(lambda v: int(v * VOID_DIM)), mask=_mask(id_map == 0))
    arr = np.asarray(out).copy()
    arr[_outline(np.where(annotated, id_map, 0)) & annotated] = 255
    return arr


def _mask(m: np.ndarray) -> Image.Image:
    return Image.fromarray(m.astype(np.uint8) * 255)


def _outline(ids: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels with a 4-neighbour of another id."""
    edge = np.zeros(ids.shape, dtype=bool)
    dy = ids[1:] != ids[:-1]
    dx = ids[:, 1:] != ids[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge
