"""Palette, colour maps and overlays: distinct instance colours, two-tone outlines, labels inside
their segments at a size that reads at any resolution, a legend, void kept."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage

from panoptic_detr.structures import Categories, PanopticResult
from panoptic_detr.viz import (
    colorize,
    font_size,
    label_anchor,
    legend_rows,
    line_width,
    outlines,
    overlay,
    palette,
)


def scene(h: int = 40, w: int = 60) -> tuple[np.ndarray, PanopticResult, Categories]:
    """A picture: a void strip on the left, stuff on the rest, two persons and a car (the
    layout of a 40x60 one, scaled to h x w)."""
    ids = torch.full((40, 60), 1, dtype=torch.int64)  # stuff: sky
    ids[:, :10] = 0  # void
    ids[5:15, 15:25] = 2  # person
    ids[5:15, 30:40] = 3  # person
    ids[25:35, 40:55] = 4  # car
    ids = ids[torch.arange(h) * 40 // h][:, torch.arange(w) * 60 // w]
    cats = Categories.coco_panoptic()
    infos = [
        {"id": 1, "category_id": 187, "isthing": False, "score": 0.9},
        {"id": 2, "category_id": 1, "isthing": True, "score": 0.99},
        {"id": 3, "category_id": 1, "isthing": True, "score": 0.8},
        {"id": 4, "category_id": 3, "isthing": True, "score": 0.7},
    ]
    for s in infos:
        s["area"] = int((ids == s["id"]).sum())
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, PanopticResult(ids, infos), cats


def test_palette_stuff_in_its_colour_things_each_their_own():
    _, result, cats = scene()
    pal = palette(result, cats)
    assert pal[1] == cats.color(187)  # stuff: the category colour
    assert len(set(pal.values())) == 4
    # five instances of one class: five colours as far apart as two classes' (not shades of one)
    ids = torch.arange(5).view(1, 5) + 1
    rings = PanopticResult(ids, [{"id": i, "category_id": 1, "isthing": True} for i in range(1, 6)])
    colors = np.array(list(palette(rings, cats).values()), np.float64)
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(colors, 2)]
    assert min(gaps) > 90


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
    out = overlay(image, result, cats, alpha=0.5, labels=False)
    h, w = out.shape[:2]
    assert out.dtype == np.uint8 and h == 40 and w > 60  # legend on the right
    body = out[:40, :60]
    assert np.array_equal(body[:, :10], image[:, :10])  # void untouched
    edge = outlines(result.id_map.numpy())
    assert edge[5, 20] and edge[14, 20] and not edge[10, 20] and not edge[:, :10].any()
    drawn = body[edge]  # one pixel wide here: light on dark pixels, dark on light ones
    assert ((drawn == 255).all(1) | (drawn == 16).all(1)).all()
    pal = palette(result, cats)
    expect = np.round(0.5 * image[10, 20].astype(np.float32) + 0.5 * np.array(pal[2], np.float32))
    assert np.array_equal(body[10, 20], expect.astype(np.uint8))  # translucent colour inside
    legend = out[:, 60:].reshape(-1, 3)  # the legend carries every segment's colour
    for color in pal.values():
        assert (legend == np.array(color, np.uint8)).all(1).any()
    plain = overlay(image, result, cats, legend=False, labels=False)
    assert plain.shape == image.shape and np.array_equal(plain, body)


@pytest.mark.parametrize("shade", [0, 255])
def test_outlines_contrast_with_any_background(shade):
    for side in (256, 3000):
        _, result, cats = scene(side * 3 // 4, side)
        image = np.full((*result.size, 3), shade, np.uint8)
        out = overlay(image, result, cats, alpha=0.0, legend=False, labels=False)
        width = line_width(*result.size)
        edge = outlines(result.id_map.numpy())
        band = ndimage.binary_dilation(edge, iterations=(width + 1) // 2) if width > 1 else edge
        drawn = out[band & (result.id_map.numpy() != 0)]
        other = 255 - shade  # the opposite tone is drawn, wherever the band is
        assert (np.abs(drawn.astype(int) - other) < 20).all(1).mean() > 0.3
    assert line_width(192, 256) == 1 and line_width(2250, 3000) == 5


def test_labels_on_a_3000_px_image_are_at_least_1_5_percent_high():
    h, w = 2250, 3000
    ids = torch.ones((h, w), dtype=torch.int64)  # one segment: no outlines, so light ink = text
    result = PanopticResult(ids, [{"id": 1, "category_id": 187, "isthing": False, "score": 0.93,
                                   "area": h * w}])
    image = np.full((h, w, 3), 100, np.uint8)
    out = overlay(image, result, Categories.coco_panoptic(), legend=False)
    ink = (out >= 250).all(2)
    rows, cols = np.nonzero(ink)
    assert rows.size > 0
    glyph_h = rows.max() - rows.min() + 1
    assert glyph_h >= 0.015 * h, glyph_h
    assert abs((rows.min() + rows.max()) / 2 - h / 2) < 0.05 * h  # inside, near the centre
    assert font_size(h, w) >= 0.02 * w and font_size(192, 256) == 10


def test_label_anchor_is_inside_even_for_a_ring():
    yy, xx = np.mgrid[:100, :100]
    r = np.hypot(yy - 50, xx - 50)
    ring = (r > 25) & (r < 40)
    y, x = label_anchor(ring)
    assert ring[y, x] and not ring[50, 50]  # the centroid is in the hole
    assert 30 < r[y, x] < 35  # mid-way through the band


def test_every_segment_is_labelled_or_listed():
    image, result, cats = scene(192, 256)
    out = overlay(image, result, cats)
    with_labels, without = out[:, :256], overlay(image, result, cats, legend=False, labels=False)
    changed = (with_labels != without).any(2)
    assert changed[:, 40:].mean() > 0.02  # labels were drawn over the picture
    assert out.shape[1] > 256  # and the legend lists all four


def test_overlay_empty_result_is_the_image():
    image = np.full((3, 1, 3), 7, np.uint8)
    empty = PanopticResult(torch.zeros((3, 1), dtype=torch.int64), [])
    assert np.array_equal(overlay(image, empty, Categories.coco_panoptic()), image)


def test_legend_rows_name_number_and_score_each_segment():
    _, result, cats = scene()
    pal = palette(result, cats)
    sky = "sky-other-merged"
    assert legend_rows(result, cats) == [(f"{sky} 90%", pal[1]), ("person 1 99%", pal[2]),
                                         ("person 2 80%", pal[3]), ("car 70%", pal[4])]
    for s in result.segments_info:
        del s["score"]  # ground truth: no scores
    assert [text for text, _ in legend_rows(result, cats)] == [sky, "person 1", "person 2", "car"]
