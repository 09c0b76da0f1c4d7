"""Figures of an `Explanation`: panels drawn with PIL, heat colours from matplotlib colormaps.

Every function returns a PIL image and writes nothing; `explain_report` puts them in files.
PIL composition instead of matplotlib figures keeps a report of tens of segments x M heads
to well under a second of drawing. Grids at stride s (C5 at 32, mask logits at 4) cover
the resized input the network saw, whose last cells may overhang its edge; they are
upsampled in input pixels, cropped to the input, and so land on the original image exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .explain import Explanation, QueryInfo

BG = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
GAP = 6


def font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font: no font files needed on the machine."""
    return ImageFont.load_default(size=size)


def thumb_size(hw: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(h, w) scaled so that the longer side is `long_side` (aspect kept)."""
    h, w = hw
    s = long_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def resize(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """[H, W, C] uint8 -> [h, w, C] uint8 at `size` = (h, w)."""
    im = Image.fromarray(image)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(im.resize((size[1], size[0]), resample))


def sample_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W] array (ids, labels) sampled at the pixel centres of a (h, w) view: exact values,
    no blending between ids."""
    H, W = array.shape[:2]
    ys = ((np.arange(size[0]) + 0.5) * H / size[0]).astype(np.int64).clip(0, H - 1)
    xs = ((np.arange(size[1]) + 0.5) * W / size[1]).astype(np.int64).clip(0, W - 1)
    return array[ys[:, None], xs[None, :]]


def grid_to_view(grid: Tensor, stride: int, input_size: tuple[int, int], size: tuple[int, int],
                 nearest: bool = False) -> np.ndarray:
    """Place a [gh, gw] map of stride `stride` over the input on a view of `size` = (h, w).

    The grid covers gh * stride input rows (>= the input's h); upsample in view pixels, then
    crop what overhangs the input. Returns [h, w] float32.
    """
    ih, iw = input_size
    gh, gw = grid.shape
    full = (max(size[0], round(gh * stride * size[0] / ih)), max(size[1], round(gw * stride * size[1] / iw)))
    g = grid.detach().float().cpu()[None, None]
    up = F.interpolate(g, size=full, mode="nearest") if nearest else \
        F.interpolate(g, size=full, mode="bilinear", align_corners=False)
    return up[0, 0, : size[0], : size[1]].numpy()


def heat(values: np.ndarray, vmin: float | None = None, vmax: float | None = None,
         cmap: str = "inferno") -> np.ndarray:
    """[h, w] float -> [h, w, 3] uint8 through a matplotlib colormap (range min..max by default)."""
    lo = float(values.min()) if vmin is None else vmin
    hi = float(values.max()) if vmax is None else vmax
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    rgba = colormaps[cmap](np.clip(scaled, 0.0, 1.0), bytes=True)
    return np.ascontiguousarray(rgba[..., :3])


def blend(base: np.ndarray, top: np.ndarray, alpha: float | np.ndarray) -> np.ndarray:
    """Alpha-blend `top` over `base` ([h, w, 3] uint8); `alpha` scalar or [h, w] in 0..1."""
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    out = base.astype(np.float32) * (1 - a) + top.astype(np.float32) * a
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def dim(image: np.ndarray, keep: float = 0.45) -> np.ndarray:
    """A greyed, darker copy of an image, as a quiet backdrop for overlays."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True)
    return (grey * keep + 255 * (1 - keep) * 0.15).clip(0, 255).astype(np.uint8).repeat(3, axis=2)


def segment_colors(expl: Explanation) -> dict[int, tuple[int, int, int]]:
    """Segment id -> colour: the category colour, shifted a little per thing instance so that
    touching instances of one class stay apart."""
    out = {}
    for s in expl.result.segments_info:
        r, g, b = expl.categories.color(int(s["category_id"]))
        if s.get("isthing", True):
            rng = np.random.default_rng(int(s["id"]))
            r, g, b = (int(np.clip(c + rng.integers(-40, 41), 0, 255)) for c in (r, g, b))
        out[int(s["id"])] = (r, g, b)
    return out


def panoptic_view(expl: Explanation, size: tuple[int, int], alpha: float = 0.6) -> np.ndarray:
    """The image at `size` with every segment painted in its colour and outlined."""
    ids = sample_nearest(expl.result.id_map.numpy(), size)
    image = resize(expl.image, size)
    lut = np.zeros((int(ids.max()) + 1, 3), np.uint8)
    for sid, c in segment_colors(expl).items():
        if sid < len(lut):
            lut[sid] = c
    painted = blend(image, lut[ids], np.where(ids > 0, alpha, 0.0))
    edge = np.zeros(ids.shape, bool)
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    painted[edge] = (255, 255, 255)
    return painted


def caption(panel: np.ndarray | Image.Image, title: str, sub: str = "",
            width: int | None = None) -> Image.Image:
    """A panel with a title (and a muted second line) above it."""
    im = panel if isinstance(panel, Image.Image) else Image.fromarray(panel)
    f1, f2 = font(13), font(11)
    lines = 1 + bool(sub)
    w = max(im.width, width or 0)
    out = Image.new("RGB", (w, im.height + 17 * lines + 2), BG)
    d = ImageDraw.Draw(out)
    d.text((0, 0), title, fill=INK, font=f1)
    if sub:
        d.text((0, 17), sub, fill=MUTED, font=f2)
    out.paste(im, (0, 17 * lines + 2))
    return out


def row(panels: Sequence[Image.Image], gap: int = GAP, align_top: bool = True) -> Image.Image:
    """Panels side by side."""
    h = max(p.height for p in panels)
    w = sum(p.width for p in panels) + gap * (len(panels) - 1)
    out = Image.new("RGB", (w, h), BG)
    x = 0
    for p in panels:
        out.paste(p, (x, 0 if align_top else (h - p.height) // 2))
        x += p.width + gap
    return out


def column(panels: Sequence[Image.Image], gap: int = GAP) -> Image.Image:
    """Panels one under the other, left-aligned."""
    w = max(p.width for p in panels)
    h = sum(p.height for p in panels) + gap * (len(panels) - 1)
    out = Image.new("RGB", (w, h), BG)
    y = 0
    for p in panels:
        out.paste(p, (0, y))
        y += p.height + gap
    return out


def wrap(panels: Sequence[Image.Image], width: int, gap: int = GAP) -> Image.Image:
    """Panels in rows no wider than `width` (at least one a row)."""
    rows, cur, cur_w = [], [], 0
    for p in panels:
        if cur and cur_w + gap + p.width > width:
            rows.append(row(cur, gap))
            cur, cur_w = [], 0
        cur_w += p.width + (gap if cur else 0)
        cur.append(p)
    if cur:
        rows.append(row(cur, gap))
    return column(rows, gap)


def pad(im: Image.Image, margin: int = 10) -> Image.Image:
    out = Image.new("RGB", (im.width + 2 * margin, im.height + 2 * margin), BG)
    out.paste(im, (margin, margin))
    return out


def legend(entries: Sequence[tuple[tuple[int, int, int], str]], width: int = 220,
           max_rows: int = 40) -> Image.Image:
    """Colour swatches with their labels, one a line."""
    f = font(12)
    shown = list(entries[:max_rows])
    more = len(entries) - len(shown)
    out = Image.new("RGB", (width, 18 * (len(shown) + bool(more)) + 4), BG)
    d = ImageDraw.Draw(out)
    for i, (c, text) in enumerate(shown):
        d.rectangle((0, 18 * i + 3, 12, 18 * i + 15), fill=c, outline=INK)
        d.text((18, 18 * i + 2), text, fill=INK, font=f)
    if more:
        d.text((18, 18 * len(shown) + 2), f"... and {more} more", fill=MUTED, font=f)
    return out


def segment_label(expl: Explanation, segment_id: int) -> str:
    s = expl.segment_info(segment_id)
    return f"{segment_id}: {expl.categories.name(int(s['category_id']))}"


def legend_entries(expl: Explanation) -> list[tuple[tuple[int, int, int], str]]:
    colors = segment_colors(expl)
    out = []
    for s in expl.result.segments_info:
        q = expl.query_of_segment(int(s["id"]))
        out.append((colors[int(s["id"])], f"{segment_label(expl, int(s['id']))} ({q.score:.2f})"))
    return out


def box_view(expl: Explanation, q: QueryInfo, size: tuple[int, int],
             color: tuple[int, int, int] = (255, 60, 60)) -> np.ndarray:
    """The image at `size` with the query's predicted box."""
    im = Image.fromarray(resize(expl.image, size))
    sy, sx = size[0] / expl.image.shape[0], size[1] / expl.image.shape[1]
    x0, y0, x1, y1 = q.box
    ImageDraw.Draw(im).rectangle((x0 * sx, y0 * sy, x1 * sx, y1 * sy), outline=color, width=2)
    return np.asarray(im)


def attention_views(expl: Explanation, query: int, size: tuple[int, int]) -> list[Image.Image]:
    """One captioned panel per head: the head's attention over the image. Colours share one
    scale across the heads (the softmax is joint), and each caption gives the head's mass."""
    att = expl.attention_maps[query]  # M x h/32 x w/32
    vmax = float(att.max()) or 1.0
    base = dim(resize(expl.image, size))
    out = []
    for m in range(att.shape[0]):
        a = grid_to_view(att[m], expl.c5_stride, expl.input_size, size)
        panel = blend(base, heat(a, 0.0, vmax), np.clip(a / vmax, 0, 1) * 0.85 + 0.1)
        out.append(caption(panel, f"head {m}", f"mass {float(att[m].sum()):.0%}"))
    return out


def logits_view(expl: Explanation, query: int, size: tuple[int, int], title: str = "mask logits",
                sub: str = "") -> Image.Image:
    """The query's mask logits (before the argmax over queries) as a heat map over the image,
    their range in the caption."""
    logits = expl.mask_logits_of(query)
    if logits is None:
        return caption(np.full((*size, 3), 235, np.uint8), title, "not computed")
    v = grid_to_view(logits, 4, expl.input_size, size)
    lo, hi = float(logits.min()), float(logits.max())
    panel = blend(resize(expl.image, size), heat(v, lo, hi, cmap="viridis"), 0.8)
    return caption(panel, title, (sub + ", " if sub else "") + f"range {lo:.1f} .. {hi:.1f}")


def pixels_view(expl: Explanation, segment_id: int, size: tuple[int, int]) -> np.ndarray:
    """The segment's final pixels in its colour over a dimmed image."""
    color = segment_colors(expl)[segment_id]
    m = sample_nearest(expl.result.id_map.numpy(), size) == segment_id
    out = dim(resize(expl.image, size))
    out[m] = blend(out[m][None], np.array(color, np.uint8)[None, None].repeat(int(m.sum()), 1), 0.8)[0]
    return out


def overview_sheet(expl: Explanation, long_side: int = 360) -> Image.Image:
    """Input | C5 channel-norm heat map | final panoptic overlay | legend."""
    h, w = expl.image.shape[:2]
    size = thumb_size((h, w), long_side)
    ih, iw = expl.input_size
    c5 = grid_to_view(expl.c5_norm, expl.c5_stride, expl.input_size, size)
    gh, gw = expl.c5_norm.shape
    n_seg = len(expl.result.segments_info)
    entries = legend_entries(expl)
    panels = [
        caption(resize(expl.image, size), "input", f"{w} x {h} px (network saw {iw} x {ih})"),
        caption(blend(dim(resize(expl.image, size)), heat(c5), 0.75), "C5 activation (channel norm)",
                f"{gw} x {gh} grid, stride {expl.c5_stride}"),
        caption(panoptic_view(expl, size), "panoptic result",
                f"{n_seg} segment{'s' * (n_seg != 1)}" if n_seg else "no segment kept"),
        caption(legend(entries) if entries else legend([((235, 235, 235), "no segment kept")]), "legend"),
    ]
    return row(panels)


def segment_sheet(expl: Explanation, segment_id: int, long_side: int = 168) -> Image.Image:
    """One segment: box | M attention maps | mask logits | final pixels, with class and score."""
    q = expl.query_of_segment(segment_id)
    s = expl.segment_info(segment_id)
    size = thumb_size(expl.image.shape[:2], long_side)
    x0, y0, x1, y1 = q.box
    panels = [
        caption(box_view(expl, q, size, segment_colors(expl)[segment_id]), "box",
                f"{x1 - x0:.0f} x {y1 - y0:.0f} px"),
        logits_view(expl, q.index, size),
        caption(pixels_view(expl, segment_id, size), "final pixels", f"area {int(s['area'])} px"),
        *attention_views(expl, q.index, size),
    ]
    kind = "thing" if s.get("isthing", True) else "stuff"
    title = (f"segment {segment_label(expl, segment_id)} ({kind}) - query {q.index}, "
             f"score {q.score:.3f}")
    body = wrap(panels, width=max(7 * (size[1] + GAP), 1200))
    return column([caption_line(title, body.width), body])


def caption_line(text: str, width: int, size: int = 14, color: tuple[int, int, int] = INK) -> Image.Image:
    out = Image.new("RGB", (width, size + 8), BG)
    ImageDraw.Draw(out).text((0, 2), text, fill=color, font=font(size))
    return out


def arrow(width: int, height: int, text: str = "") -> Image.Image:
    """A right-pointing arrow with an optional label above it."""
    out = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(out)
    y = height // 2
    d.line((4, y, width - 6, y), fill=MUTED, width=3)
    d.polygon([(width - 2, y), (width - 14, y - 7), (width - 14, y + 7)], fill=MUTED)
    if text:
        f = font(11)
        for i, line in enumerate(text.split("\n")):
            d.text((4, y - 16 - 13 * (len(text.split("\n")) - 1 - i)), line, fill=MUTED, font=f)
    return out


def path_figure(expl: Explanation, segment_id: int, long_side: int = 220) -> Image.Image:
    """The whole path of one segment: image -> M attention maps (H/32) -> mask logits (H/4)
    -> segment at full size, each stage annotated with its size."""
    q = expl.query_of_segment(segment_id)
    H, W = expl.image.shape[:2]
    ih, iw = expl.input_size
    size = thumb_size((H, W), long_side)
    att = expl.attention_maps[q.index]
    M, gh, gw = att.shape
    logits = expl.mask_logits_of(q.index)
    lh, lw = (0, 0) if logits is None else logits.shape

    first = caption(box_view(expl, q, size, segment_colors(expl)[segment_id]), "image",
                    f"{W} x {H} -> resized {iw} x {ih}")
    # attention maps at their native grid: nearest upsampling shows the H/32 cells
    small = thumb_size((gh, gw), max(48, long_side // 2 - GAP))
    vmax = float(att.max()) or 1.0
    tiles = [Image.fromarray(heat(grid_to_view(att[m], 1, (gh, gw), small, nearest=True), 0, vmax))
             for m in range(M)]
    heads = wrap(tiles, width=2 * small[1] + GAP, gap=2)
    st = expl.c5_stride
    second = caption(heads, f"{M} attention maps", f"{M} heads x {gw} x {gh} (W/{st} x H/{st})",
                     width=2 * small[1] + GAP)
    third = logits_view(expl, q.index, size, sub=f"{lw} x {lh} (W/4 x H/4)")
    fourth = caption(pixels_view(expl, segment_id, size), f"segment {segment_label(expl, segment_id)}",
                     f"{W} x {H}, {int(expl.segment_info(segment_id)['area'])} px")
    h = max(p.height for p in (first, second, third, fourth))
    body = row([first, arrow(90, h, "query\nattention"), second, arrow(90, h, "FPN head\nx8"), third,
                arrow(110, h, "argmax over\nkept queries"), fourth], gap=4, align_top=False)
    title = (f"path of segment {segment_label(expl, segment_id)} (query {q.index}, "
             f"score {q.score:.3f})")
    return column([caption_line(title, body.width), body])


def dropped_rows(expl: Explanation) -> list[QueryInfo]:
    """Dropped queries ordered by reason (post-processing order), then best score."""
    order = {r: i for i, r in enumerate(("duplicated stuff", "<= 4 pixels", "below threshold", "no-object"))}
    return sorted(expl.dropped(), key=lambda q: (order.get(q.status, 9), -q.best_score, q.index))


def sheet(expl: Explanation, segments: Sequence[int], path_segment: int | None,
          max_segments: int = 4, figures: dict[str, Image.Image] | None = None) -> Image.Image:
    """One summary PNG: overview, the path figure, the first few segment sheets. `figures`
    may hold already drawn "overview", "path" and "segment_<id>" panels."""
    figures = figures or {}
    parts = [figures.get("overview") or overview_sheet(expl)]
    if path_segment is not None:
        parts.append(figures.get("path") or path_figure(expl, path_segment))
    else:
        n = len(expl.dropped())
        parts.append(caption_line(f"No segment kept: all {n} queries were dropped (see the report's "
                                  "table of dropped queries).", 900, color=(160, 30, 30)))
    parts += [figures.get(f"segment_{s}") or segment_sheet(expl, s) for s in list(segments)[:max_segments]]
    if len(segments) > max_segments:
        parts.append(caption_line(f"... {len(segments) - max_segments} more segments in the report",
                                  600, color=MUTED))
    return pad(column(parts, gap=14))
