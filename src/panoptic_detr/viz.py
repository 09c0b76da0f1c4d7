"""Pictures of panoptic results: a palette, flat colour maps and overlays with a legend.

Imports only `structures` and numpy/PIL: every function takes arrays and returns arrays;
writing files is the caller's business (`data/files.py`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .structures import Categories, PanopticResult

# brightness steps for the 2nd, 3rd, ... instance of a thing class: darker, lighter, ...
_SHADES = (0, -45, 45, -80, 80, -25, 25, -110, 110, -60, 60)
_OUTLINE = (255, 255, 255)
_LEGEND_BG = (32, 32, 32)
_LEGEND_TEXT = (235, 235, 235)


def palette(result: PanopticResult, categories: Categories) -> dict[int, tuple[int, int, int]]:
    """Segment id -> RGB colour: the category's colour, with distinct shades for the instances
    of one thing class (first instance unchanged) and always distinct within an image."""
    colors: dict[int, tuple[int, int, int]] = {}
    used: set[tuple[int, int, int]] = set()
    seen: dict[int, int] = {}
    for s in result.segments_info:
        cat = int(s["category_id"])
        n = seen.get(cat, 0)
        seen[cat] = n + 1
        base = np.array(categories.color(cat), dtype=np.int64)
        step = 0
        while True:
            k = n + step
            shift = _SHADES[k % len(_SHADES)] + 7 * (k // len(_SHADES))
            color = tuple(int(v) for v in np.clip(base + shift, 0, 255))
            if color not in used:
                break
            step += 1
        used.add(color)
        colors[int(s["id"])] = color
    return colors


def _color_lut(result: PanopticResult, categories: Categories) -> tuple[np.ndarray, np.ndarray]:
    """(ids [S] sorted, colours [S, 3] uint8) of the segments."""
    pal = palette(result, categories)
    ids = np.array(sorted(pal), dtype=np.int64)
    cols = np.array([pal[i] for i in ids], dtype=np.uint8).reshape(-1, 3)
    return ids, cols


def _segment_colors(id_map: np.ndarray, ids: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel colour [H, W, 3] and a mask [H, W] of pixels that belong to a listed segment."""
    if ids.size == 0:
        return np.zeros((*id_map.shape, 3), np.uint8), np.zeros(id_map.shape, bool)
    pos = np.searchsorted(ids, id_map).clip(max=ids.size - 1)
    hit = ids[pos] == id_map
    return np.where(hit[..., None], cols[pos], 0).astype(np.uint8), hit


def colorize(result: PanopticResult, categories: Categories) -> np.ndarray:
    """[H, W, 3] uint8: every segment in its palette colour, void (id 0) black."""
    id_map = result.id_map.cpu().numpy()
    ids, cols = _color_lut(result, categories)
    return _segment_colors(id_map, ids, cols)[0]


def outlines(id_map: np.ndarray) -> np.ndarray:
    """[H, W] bool: segment pixels (id != 0) with a 4-neighbour of another id."""
    edge = np.zeros(id_map.shape, bool)
    dy = id_map[1:] != id_map[:-1]
    dx = id_map[:, 1:] != id_map[:, :-1]
    edge[1:] |= dy
    edge[:-1] |= dy
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    return edge & (id_map != 0)


def overlay(
    image: np.ndarray, result: PanopticResult, categories: Categories, alpha: float = 0.5,
    legend: bool = True,
) -> np.ndarray:
    """Blend the segments' colours into `image` ([H, W, 3] uint8, the result's size), draw the
    segment outlines and, with `legend`, a panel on the right naming the classes.

    Void pixels keep the image's colour. Returns [H', W', 3] uint8: H' = max(H, legend height),
    W' = W + legend width; without a legend, [H, W, 3].
    """
    if image.shape[:2] != result.size or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"overlay wants an [H, W, 3] image of the result's size {result.size}, "
                         f"got {image.shape}")
    id_map = result.id_map.cpu().numpy()
    ids, cols = _color_lut(result, categories)
    color, inside = _segment_colors(id_map, ids, cols)
    out = image.astype(np.float32)
    blend = (1 - alpha) * out + alpha * color.astype(np.float32)
    out = np.where(inside[..., None], blend, out)
    out[outlines(id_map) & inside] = _OUTLINE
    out = out.round().clip(0, 255).astype(np.uint8)
    if not legend or not result.segments_info:
        return out
    pal = {int(i): tuple(int(v) for v in c) for i, c in zip(ids, cols, strict=True)}
    return _with_legend(out, result, categories, pal)


def _legend_entries(result: PanopticResult, categories: Categories, pal: dict) -> list[tuple[str, tuple]]:
    """One line per category, in order of first appearance: name (x count for things)."""
    order: list[int] = []
    count: dict[int, int] = {}
    first_id: dict[int, int] = {}
    for s in result.segments_info:
        cat = int(s["category_id"])
        if cat not in count:
            order.append(cat)
            first_id[cat] = int(s["id"])
        count[cat] = count.get(cat, 0) + 1
    lines = []
    for cat in order:
        name = categories.name(cat)
        if count[cat] > 1:
            name += f" x{count[cat]}"
        lines.append((name, pal[first_id[cat]]))
    return lines


def _with_legend(image: np.ndarray, result: PanopticResult, categories: Categories, pal: dict) -> np.ndarray:
    font = ImageFont.load_default()
    entries = _legend_entries(result, categories, pal)
    pad, swatch, line = 6, 12, 16
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(int(probe.textlength(name, font=font)) for name, _ in entries)
    legend_w = pad * 3 + swatch + text_w
    legend_h = pad * 2 + line * len(entries)
    h, w = image.shape[:2]
    canvas = Image.new("RGB", (w + legend_w, max(h, legend_h)), _LEGEND_BG)
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, color) in enumerate(entries):
        y = pad + i * line
        draw.rectangle([w + pad, y + 1, w + pad + swatch - 1, y + swatch], fill=tuple(color),
                       outline=_OUTLINE)
        draw.text((w + 2 * pad + swatch, y), name, fill=_LEGEND_TEXT, font=font)
    return np.asarray(canvas).copy()
