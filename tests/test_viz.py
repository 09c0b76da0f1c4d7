"""Palette, colour maps and overlays: shapes, distinct instance colours, outlines, void kept."""

from __future__ import annotations

import numpy as np
import torch

from panoptic_detr.structures import Categories, PanopticResult
from panoptic_detr.viz import colorize, outlines, overlay, palette


def scene() -> tuple[np.ndarray, PanopticResult, Categories]:
    """A 40x60 picture: a void strip on the left, stuff on the rest, two persons and a car."""
    ids = torch.full((40, 60), 1, dtype=torch.int64)  # stuff: sky
    ids[:, :10] = 0  # void
    ids[5:15, 15:25] = 2  # person
    ids[5:15, 30:40] = 3  # person
    ids[25:35, 40:55] = 4  # car
    cats = Categories.coco_panoptic()
    infos = [
        {"id": 1, "category_id": 187, "isthing": False},
        {"id": 2, "category_id": 1, "isthing": True},
        {"id": 3, "category_id": 1, "isthing": True},
        {"id": 4, "category_id": 3, "isthing": True},
    ]
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    return image, PanopticResult(ids, infos), cats


def test_palette_distinct_shades_per_instance():
    _, result, cats = scene()
    pal = palette(result, cats)
    assert pal[2] == cats.color(1)  # first instance: the category colour
    assert pal[3] != pal[2]  # second person: another shade
    assert len(set(pal.values())) == 4


def test_colorize_shape_and_colors():
    _, result, cats = scene()
    rgb = colorize(result, cats)
    pal = palette(result, cats)
    assert rgb.shape == (40, 60, 3) and rgb.dtype == np.uint8
    assert (rgb[:, :10] == 0).all()
    assert tuple(rgb[30, 45]) == pal[4]
    assert tuple(rgb[20, 20]) == pal[1]


def test_overlay_blends_outlines_and_keeps_void():
    image, result, cats = scene()
    out = overlay(image, result, cats, alpha=0.5)
    h, w = out.shape[:2]
    assert out.dtype == np.uint8 and h >= 40 and w > 60  # legend on the right
    body = out[:40, :60]
    assert np.array_equal(body[:, :10], image[:, :10])  # void untouched
    edge = outlines(result.id_map.numpy())
    assert edge[5, 20] and edge[14, 20] and not edge[10, 20] and not edge[:, :10].any()
    assert (body[edge] == 255).all()  # outlines drawn
    pal = palette(result, cats)
    expect = np.round(0.5 * image[10, 20].astype(np.float32) + 0.5 * np.array(pal[2], np.float32))
    assert np.array_equal(body[10, 20], expect.astype(np.uint8))  # translucent colour inside
    # the legend panel carries the class colours as swatches
    legend = out[:, 60:].reshape(-1, 3)
    for color in (pal[1], pal[2], pal[4]):
        assert (legend == np.array(color, np.uint8)).all(1).any()
    plain = overlay(image, result, cats, legend=False)
    assert plain.shape == image.shape and np.array_equal(plain, body)


def test_overlay_empty_result_is_the_image():
    image = np.full((3, 1, 3), 7, np.uint8)
    empty = PanopticResult(torch.zeros((3, 1), dtype=torch.int64), [])
    assert np.array_equal(overlay(image, empty, Categories.coco_panoptic()), image)
