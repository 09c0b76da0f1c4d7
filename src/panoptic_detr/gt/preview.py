"""Audit overlays of built ground truth: annotated pixels vs pixels labelled by the source.

Annotated segments are painted in solid colour with a white outline around each instance;
thing masks a model made (predicted in an annotated box, or found by the instance model) are
solid too but outlined in yellow; source pixels get a translucent fill of their colour over
the photo; void pixels show the photo darkened. A glance tells what a person drew and what a
model guessed. Colours are those of `viz` (stuff in its class colour, each thing instance in
its own), and a legend on the right names every segment, "(source)" after those the source
labelled, "crowd" on crowd regions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..structures import Categories, PanopticResult
from ..viz import add_legend, legend_rows, outlines, palette

SOURCE_ALPHA = 0.45
VOID_DIM = 0.5
MODEL_OUTLINE = (255, 210, 0)


def draw_preview(
    image: np.ndarray,
    id_map: np.ndarray,
    segments_info: Sequence[dict[str, Any]],
    annotated: np.ndarray,
    categories: Categories,
    model_made: np.ndarray | None = None,
    legend: bool = True,
) -> np.ndarray:
    """image [H, W, 3] uint8, id_map [H, W] (0 = void), annotated [H, W] bool, model_made [H, W]
    bool (annotated pixels whose mask a model made: yellow outlines).
    Colours are `viz.palette`'s. Returns [H, W, 3] uint8, with `legend` [H, W + legend, 3]
    (`viz.add_legend`)."""
    result = PanopticResult(torch.from_numpy(np.asarray(id_map)), list(segments_info))
    pal = palette(result, categories)
    lut = np.zeros((int(id_map.max(initial=0)) + 1, 3), dtype=np.uint8)
    for seg_id, rgb in pal.items():
        lut[seg_id] = rgb
    photo = Image.fromarray(np.ascontiguousarray(image))
    if len(lut) <= 256:  # the usual case: a palette image, coloured in C
        color = Image.fromarray(id_map.astype(np.uint8))
        color.putpalette(lut.reshape(-1).tolist())  # L -> P
        color = color.convert("RGB")
    else:
        color = Image.fromarray(lut[id_map])
    # PIL's C loops: translucent everywhere, then solid where annotated, dimmed where void
    out = Image.blend(photo, color, SOURCE_ALPHA)
    out.paste(color, mask=_mask(annotated))
    out.paste(photo.point(lambda v: int(v * VOID_DIM)), mask=_mask(id_map == 0))
    arr = np.asarray(out).copy()
    edges = outlines(np.where(annotated, id_map, 0)) & annotated
    arr[edges] = 255
    if model_made is not None:
        arr[edges & model_made] = MODEL_OUTLINE
    if not legend:
        return arr
    drawn = set(np.unique(id_map[annotated]).tolist())
    rows = [(text + (" crowd" if s.get("iscrowd") else "") + ("" if int(s["id"]) in drawn else " (source)"),
             color) for (text, color), s in zip(legend_rows(result, categories), segments_info, strict=True)]
    return add_legend(arr, rows)


def _mask(m: np.ndarray) -> Image.Image:
    return Image.fromarray(m.astype(np.uint8) * 255)
