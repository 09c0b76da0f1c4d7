"""Pictures of panoptic results: a palette, flat colour maps and labelled overlays.

Imports only `structures` and numpy/scipy/PIL: every function takes arrays and returns arrays;
writing files is the caller's business (`data/files.py`).

Legibility follows detectron2's `Visualizer`: each segment is labelled inside itself (class,
instance number, score), thing instances get colours of their own, outlines are drawn in two
tones so they show on any background, and font size and line width grow with the image, so a
3000 px photo reads as well as a 256 px thumbnail.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .structures import Categories, PanopticResult

# Well-separated colours for thing instances (Sasha Trubetskoy's 20 distinct colours, the
# hardest-to-confuse first); the 21st instance on starts again, shaded.
THING_COLORS = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)
_SHADES = (0, -45, 45, -80, 80, -25, 25, -110, 110, -60, 60)
_DARK = (16, 16, 16)
_LIGHT = (255, 255, 255)
_LEGEND_BG = (32, 32, 32)
_LABEL_BG = (0, 0, 0, 170)  # translucent black behind label text


def palette(result: PanopticResult, categories: Categories) -> dict[int, tuple[int, int, int]]:
    """Segment id -> RGB colour: stuff in its category's colour, each thing instance in a colour
    of its own (`THING_COLORS` in order, so neighbours of one class differ as much as two
    classes do); always distinct within an image."""
    colors: dict[int, tuple[int, int, int]] = {}
    used: set[tuple[int, int, int]] = set()
    things = 0
    for s in result.segments_info:
        if categories.isthing(int(s["category_id"])):
            base, k = THING_COLORS[things % len(THING_COLORS)], things // len(THING_COLORS)
            things += 1
        else:
            base, k = categories.color(int(s["category_id"])), 0
        while True:
            shift = _SHADES[k % len(_SHADES)] + 7 * (k // len(_SHADES))
            color = tuple(int(v) for v in np.clip(np.array(base) + shift, 0, 255))
            if color not in used:
                break
            k += 1
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
    top = int(max(ids.max(), id_map.max(initial=0)))
    if ids.min() >= 0 and top < 1 << 20:  # the usual ids: a lookup table, one gather per pixel
        lut = np.zeros((top + 1, 3), np.uint8)
        lut[ids] = cols
        listed = np.zeros(top + 1, bool)
        listed[ids] = True
        safe = id_map.clip(min=0)
        return lut[safe], listed[safe] & (id_map >= 0)
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


# -- sizes, fonts and label places ----------------------------------------------------------

def font_size(h: int, w: int) -> int:
    """Label and legend font size in pixels for an [h, w] picture: 2.1% of its longer side,
    at least 10 (about detectron2's size on a 640 px image, twice it on a photo)."""
    return max(10, round(0.021 * max(h, w)))


def line_width(h: int, w: int) -> int:
    """Outline width in pixels: 1 up to ~800 px, 5 at 3000 px."""
    return max(1, round(max(h, w) / 600))


@functools.lru_cache(maxsize=16)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib, a dependency) at `size` pixels; Pillow's bundled
    scalable font where that file is missing."""
    spec = importlib.util.find_spec("matplotlib")  # its path only: matplotlib is not imported
    if spec is not None and spec.submodule_search_locations:
        name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
        path = Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / name
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def label_anchor(mask: np.ndarray) -> tuple[int, int]:
    """(y, x) of the point of `mask` ([H, W] bool, not empty) farthest from its border: where a
    label sits inside the segment, even a ring's or an L's (whose centroid is outside)."""
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    crop = np.pad(mask[y0 : ys.max() + 1, x0 : xs.max() + 1], 1)  # the crop's edge is a border too
    dist = ndimage.distance_transform_edt(crop)
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(y0 + y - 1), int(x0 + x - 1)


@dataclass
class _Entry:
    """One segment's colour and text, for its label and its legend line."""

    id: int
    color: tuple[int, int, int]
    text: str
    area: int


def _entries(result: PanopticResult, categories: Categories, pal: dict[int, tuple[int, int, int]]
             ) -> list[_Entry]:
    """Per segment: "name", "name 2" for the 2nd instance of a thing class seen more than once,
    then the score as a percentage when there is one."""
    counts: dict[int, int] = {}
    for s in result.segments_info:
        counts[int(s["category_id"])] = counts.get(int(s["category_id"]), 0) + 1
    seen: dict[int, int] = {}
    out = []
    for s in result.segments_info:
        cat = int(s["category_id"])
        seen[cat] = seen.get(cat, 0) + 1
        text = categories.name(cat)
        if counts[cat] > 1 and categories.isthing(cat):
            text += f" {seen[cat]}"
        if s.get("score") is not None:
            text += f" {float(s['score']):.0%}"
        out.append(_Entry(int(s["id"]), pal[int(s["id"])], text, int(s.get("area", 0))))
    return out


def legend_rows(result: PanopticResult, categories: Categories) -> list[tuple[str, tuple[int, int, int]]]:
    """(text, colour) per segment, as `overlay` labels and lists them: "name", "name 2" for the
    2nd instance of a thing class seen more than once, the score when there is one."""
    return [(e.text, e.color) for e in _entries(result, categories, palette(result, categories))]


# -- the overlay -----------------------------------------------------------------------------

def overlay(
    image: np.ndarray, result: PanopticResult, categories: Categories, alpha: float = 0.5,
    legend: bool = True, labels: bool = True,
) -> np.ndarray:
    """Blend the segments' colours into `image` ([H, W, 3] uint8, the result's size), outline
    them in two tones (dark and light, so they show on any background), label each segment
    inside itself with `labels` (class, instance number, score; a label that would cover
    another is left to the legend) and, with `legend`, add a panel on the right listing every
    segment. Font and line width scale with the image (`font_size`, `line_width`).

    Void pixels keep the image's colour. Returns [H', W', 3] uint8: W' = W + legend width, H' = H
    (more only for a picture lower than one legend line); without a legend (or segments),
    [H, W, 3].
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[:2] != result.size:
        raise ValueError(f"overlay wants an [H, W, 3] image of the result's size {result.size}, "
                         f"got {image.shape}")
    h, w = result.size
    id_map = result.id_map.cpu().numpy()
    ids, cols = _color_lut(result, categories)
    color, inside = _segment_colors(id_map, ids, cols)
    out = image.astype(np.float32)
    blend = (1 - alpha) * out + alpha * color.astype(np.float32)
    out = np.where(inside[..., None], blend, out).round().clip(0, 255).astype(np.uint8)
    _draw_outlines(out, id_map, inside, line_width(h, w))
    if not result.segments_info:
        return out
    pal = {int(i): tuple(int(v) for v in c) for i, c in zip(ids, cols, strict=True)}
    entries = _entries(result, categories, pal)
    size = font_size(h, w)
    if labels:
        out = _draw_labels(out, id_map, entries, size)
    return add_legend(out, [(e.text, e.color) for e in entries]) if legend else out


def _draw_outlines(out: np.ndarray, id_map: np.ndarray, inside: np.ndarray, width: int) -> None:
    """In place: a dark band `width` wide along every segment border with a light core (one
    pixel on small pictures: light on dark pixels, dark on light ones)."""
    edge = outlines(id_map) & inside
    if width < 3:
        if width == 2:
            edge = ndimage.binary_dilation(edge) & inside
        lum = out[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        out[edge & (lum < 128)] = _LIGHT
        out[edge & (lum >= 128)] = _DARK
        return
    # `edge` is 2 px thick (both sides of a border): the halo 2 + 2 * ((width + 1) // 2) px,
    # the core half of it, so the dark shows on light images and the light on dark ones
    halo = ndimage.binary_dilation(edge, iterations=(width + 1) // 2) & inside
    core = ndimage.binary_dilation(edge, iterations=(width - 3) // 2) & inside if width >= 5 else edge
    out[halo] = _DARK
    out[core] = _LIGHT


def _draw_labels(out: np.ndarray, id_map: np.ndarray, entries: list[_Entry], size: int) -> np.ndarray:
    """Each segment's text on a translucent dark box, centred on its `label_anchor`, largest
    segments first; labels that would overlap one already placed are skipped (the legend has
    them). The anchor is found on a map of at most ~512 px a side (fast at any size)."""
    h, w = id_map.shape
    step = max(1, -(-max(h, w) // 512))
    small = id_map[::step, ::step]
    fnt = font(size, bold=True)
    pad = max(2, size // 5)
    canvas = Image.fromarray(out).convert("RGBA")
    layer = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    placed: list[tuple[int, int, int, int]] = []
    for e in sorted(entries, key=lambda e: -e.area):
        mask = small == e.id
        if not mask.any():
            continue
        y, x = label_anchor(mask)
        cy, cx = y * step + step // 2, x * step + step // 2
        left, top, right, bottom = draw.textbbox((0, 0), e.text, font=fnt)
        bar = max(2, size // 4)  # a bar in the segment's colour ties the label to it
        bw, bh = right - left + 2 * pad + bar, bottom - top + 2 * pad
        x0 = int(min(max(cx - bw // 2, 0), max(w - bw, 0)))
        y0 = int(min(max(cy - bh // 2, 0), max(h - bh, 0)))
        box = (x0, y0, x0 + bw, y0 + bh)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            continue
        placed.append(box)
        draw.rectangle(box, fill=_LABEL_BG)
        draw.rectangle((x0, y0, x0 + bar - 1, y0 + bh), fill=(*e.color, 255))
        draw.text((x0 + bar + pad - left, y0 + pad - top), e.text, font=fnt, fill=(*_LIGHT, 255))
    return np.asarray(Image.alpha_composite(canvas, layer).convert("RGB")).copy()


def add_legend(image: np.ndarray, rows: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """`image` ([H, W, 3] uint8) with a dark panel on the right: one line per (text, colour) row
    (a swatch, then the text), in columns when they do not fit the image's height; font as
    `font_size` gives for the image. Returns [max(H, one line), W + panel width, 3] uint8."""
    if not rows:
        return image
    h, w = image.shape[:2]
    size = font_size(h, w)
    fnt = font(size)
    pad, line = max(4, size // 2), round(size * 1.35)
    swatch = size
    per_col = max(1, (h - 2 * pad) // line)
    columns = [rows[i : i + per_col] for i in range(0, len(rows), per_col)]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = [pad * 2 + swatch + max(int(probe.textlength(text, font=fnt)) for text, _ in col)
              for col in columns]
    lines = min(len(rows), per_col)
    canvas = Image.new("RGB", (w + sum(widths) + pad, max(h, 2 * pad + lines * line)), _LEGEND_BG)
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = w + pad
    for col, width in zip(columns, widths, strict=True):
        for i, (text, color) in enumerate(col):
            y = pad + i * line
            draw.rectangle([x, y + (line - swatch) // 2, x + swatch - 1, y + (line + swatch) // 2 - 1],
                           fill=tuple(color), outline=_LIGHT)
            draw.text((x + swatch + pad, y + line // 2), text, fill=(235, 235, 235), font=fnt, anchor="lm")
        x += width
    return np.asarray(canvas).copy()
