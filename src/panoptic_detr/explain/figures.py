"""Figures of an `Explanation`: panels drawn with PIL, heat maps in inferno / viridis colours.

Every function returns a PIL image and writes nothing; `explain.report` puts them in files.
PIL composition instead of matplotlib figures keeps a report of tens of segments x M heads
to well under a second of drawing. Grids at stride s (C5 at 32, mask logits at 4) cover
the resized input the network saw, whose last cells may overhang its edge; they are
upsampled in input pixels, cropped to the input, and so land on the original image exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..viz import palette
from .core import Explanation, QueryInfo

BG = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
GAP = 6


@functools.lru_cache(maxsize=8)
def font(size: int = 13) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font: no font files needed on the machine (decoded once per size)."""
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


# matplotlib's "inferno" and "viridis" sampled at 17 evenly spaced points; interpolated they
# stay within 7/255 of the originals, and importing matplotlib would cost the explain command
# about a second.
_ANCHORS = {
    "inferno": "000003 0a0723 200c4a 3c0965 570f6d 70196e 892269 a32b61 bb3754 d14643 e45a31 f1721d "
               "f98e08 fbac10 f8cb34 f1e968 fcfea4",
    "viridis": "440154 47186a 472c7b 424085 3a528b 32628d 2c728e 26818e 20908c 1e9f88 28ae7f 3ebc73 "
               "5ec961 83d34b addc30 d7e219 fde724",
}


def _lut(name: str) -> np.ndarray:
    """[256, 3] uint8 colour table of a colormap in `_ANCHORS`."""
    anchors = np.array([[int(h[i:i + 2], 16) for i in (0, 2, 4)] for h in _ANCHORS[name].split()], float)
    x = np.linspace(0, 1, 256)
    xp = np.linspace(0, 1, len(anchors))
    return np.stack([np.interp(x, xp, anchors[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


_LUTS = {name: _lut(name) for name in _ANCHORS}


def heat(values: np.ndarray, vmin: float | None = None, vmax: float | None = None,
         cmap: str = "inferno") -> np.ndarray:
    """[h, w] float -> [h, w, 3] uint8 through a colormap ("inferno" or "viridis"), range
    min..max of the values by default."""
    lo = float(values.min()) if vmin is None else vmin
    hi = float(values.max()) if vmax is None else vmax
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return _LUTS[cmap][(np.clip(scaled, 0.0, 1.0) * 255 + 0.5).astype(np.intp)]


def colorbar(width: int, lo: float, hi: float, cmap: str = "inferno", fmt: str = "{:.2g}") -> Image.Image:
    """A horizontal colour bar `width` wide: the colormap from `lo` (left) to `hi` (right),
    the two values written under its ends, for the heat map above it."""
    bar_h, f = 8, font(10)
    strip = heat(np.tile(np.linspace(0.0, 1.0, max(2, width)), (bar_h, 1)), 0.0, 1.0, cmap)
    out = Image.new("RGB", (width, bar_h + 14), BG)
    out.paste(Image.fromarray(strip), (0, 0))
    d = ImageDraw.Draw(out)
    d.text((0, bar_h + 1), fmt.format(lo), fill=MUTED, font=f)
    d.text((width, bar_h + 1), fmt.format(hi), fill=MUTED, font=f, anchor="ra")
    return out


def with_colorbar(panel: np.ndarray, lo: float, hi: float, cmap: str = "inferno",
                  fmt: str = "{:.2g}") -> Image.Image:
    """`panel` ([h, w, 3] uint8) over its colour bar."""
    return column([Image.fromarray(panel), colorbar(panel.shape[1], lo, hi, cmap, fmt)], gap=2)


def draw_box(im: Image.Image, xyxy: tuple[float, float, float, float], color: tuple[int, int, int],
             width: int = 2) -> None:
    """In place: a box in `color` between a white and a dark line, so that it shows on any
    background, a segment of its own colour included."""
    x0, y0, x1, y1 = xyxy
    d = ImageDraw.Draw(im)
    d.rectangle((x0 - 2, y0 - 2, x1 + 2, y1 + 2), outline=(255, 255, 255), width=1)
    d.rectangle((x0 - 1, y0 - 1, x1 + 1, y1 + 1), outline=INK, width=1)
    d.rectangle((x0, y0, x1, y1), outline=color, width=width)


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


def caption_line(text: str, width: int, size: int = 14, color: tuple[int, int, int] = INK) -> Image.Image:
    """One line of text, at least `width` wide and as wide as the text needs."""
    width = max(width, int(font(size).getlength(text)) + 4)
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



def segment_colors(expl: Explanation) -> dict[int, tuple[int, int, int]]:
    """Segment id -> colour, the same as `predict`'s overlays (`viz.palette`)."""
    return palette(expl.result, expl.categories)


def dropped_rows(expl: Explanation) -> list[QueryInfo]:
    """Dropped queries ordered by reason (post-processing order), then best score."""
    order = {r: i for i, r in enumerate(("duplicated stuff", "<= 4 pixels", "below threshold", "no-object"))}
    return sorted(expl.dropped(), key=lambda q: (order.get(q.status, 9), -q.best_score, q.index))


class Figures:
    """The figures of one explanation. Colours, the image and the id map at each display size
    are computed once and shared by all panels (a report draws hundreds)."""

    def __init__(self, expl: Explanation):
        self.e = expl
        self.colors = segment_colors(expl)
        self._ids = expl.result.id_map.cpu().numpy()
        self._cache: dict[tuple[str, tuple[int, int]], np.ndarray] = {}

    def image(self, size: tuple[int, int]) -> np.ndarray:
        """[h, w, 3] the input image at `size` (a shared array: copy before drawing on it)."""
        key = ("image", size)
        if key not in self._cache:
            self._cache[key] = resize(self.e.image, size)
        return self._cache[key]

    def dimmed(self, size: tuple[int, int]) -> np.ndarray:
        key = ("dim", size)
        if key not in self._cache:
            self._cache[key] = dim(self.image(size))
        return self._cache[key]

    def ids(self, size: tuple[int, int]) -> np.ndarray:
        """[h, w] the segment id map sampled at `size`."""
        key = ("ids", size)
        if key not in self._cache:
            self._cache[key] = sample_nearest(self._ids, size)
        return self._cache[key]

    def label(self, segment_id: int) -> str:
        s = self.e.segment_info(segment_id)
        return f"{segment_id}: {self.e.categories.name(int(s['category_id']))}"

    def legend_entries(self) -> list[tuple[tuple[int, int, int], str]]:
        out = []
        for s in self.e.result.segments_info:
            sid = int(s["id"])
            out.append((self.colors[sid], f"{self.label(sid)} ({self.e.segment_score(sid):.2f})"))
        return out

    # ---- panels ----------------------------------------------------------------------------

    def panoptic(self, size: tuple[int, int], alpha: float = 0.6) -> np.ndarray:
        """The image at `size` with every segment painted in its colour and outlined."""
        ids = self.ids(size)
        lut = np.zeros((int(ids.max()) + 1, 3), np.uint8)
        for sid, c in self.colors.items():
            if sid < len(lut):
                lut[sid] = c
        painted = blend(self.image(size), lut[ids], np.where(ids > 0, alpha, 0.0))
        edge = np.zeros(ids.shape, bool)
        edge[1:] |= ids[1:] != ids[:-1]
        edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
        painted[edge] = (255, 255, 255)
        return painted

    def box(self, q: QueryInfo, size: tuple[int, int],
            color: tuple[int, int, int] = (255, 60, 60)) -> np.ndarray:
        """The image at `size` with the query's predicted box."""
        im = Image.fromarray(self.image(size))  # PIL copies the array
        sy, sx = size[0] / self.e.image.shape[0], size[1] / self.e.image.shape[1]
        x0, y0, x1, y1 = q.box
        draw_box(im, (x0 * sx, y0 * sy, x1 * sx, y1 * sy), color)
        return np.asarray(im)

    def attention(self, query: int, size: tuple[int, int]) -> list[Image.Image]:
        """One captioned panel per head: the head's attention over the image. Colours share one
        scale across the heads (the softmax is joint); each caption gives the head's mass."""
        att = self.e.attention_maps[query]  # M x h/32 x w/32
        mass = att.sum(dim=(1, 2)).tolist()
        vmax = float(att.max()) or 1.0
        out = []
        for m in range(att.shape[0]):
            a = grid_to_view(att[m], self.e.c5_stride, self.e.input_size, size)
            panel = blend(self.dimmed(size), heat(a, 0.0, vmax), np.clip(a / vmax, 0, 1) * 0.85 + 0.1)
            out.append(caption(with_colorbar(panel, 0.0, vmax), f"head {m}", f"mass {mass[m]:.0%}"))
        return out

    def logits(self, query: int, size: tuple[int, int], title: str = "mask logits",
               sub: str = "") -> Image.Image:
        """The query's mask logits (before the argmax over queries) as a heat map over the
        image, their range in the caption."""
        logits = self.e.mask_logits_of(query)
        if logits is None:
            return caption(np.full((*size, 3), 235, np.uint8), title, "not computed")
        v = grid_to_view(logits, 4, self.e.input_size, size)
        lo, hi = float(v.min()), float(v.max())
        panel = blend(self.image(size), heat(v, lo, hi, cmap="viridis"), 0.8)
        return caption(with_colorbar(panel, lo, hi, "viridis", "{:.1f}"), title,
                       (sub + ", " if sub else "") + f"range {lo:.1f} .. {hi:.1f}")

    def pixels(self, segment_id: int, size: tuple[int, int]) -> np.ndarray:
        """The segment's final pixels in its colour over a dimmed image."""
        m = self.ids(size) == segment_id
        color = np.array(self.colors[segment_id], np.uint8)
        return np.where(m[..., None], blend(self.dimmed(size), color[None, None], 0.8), self.dimmed(size))

    # ---- sheets ----------------------------------------------------------------------------

    def overview(self, long_side: int = 360) -> Image.Image:
        """Input | C5 channel-norm heat map | final panoptic overlay | legend."""
        e = self.e
        h, w = e.image.shape[:2]
        size = thumb_size((h, w), long_side)
        ih, iw = e.input_size
        c5 = grid_to_view(e.c5_norm, e.c5_stride, e.input_size, size)
        gh, gw = e.c5_norm.shape
        n_seg = len(e.result.segments_info)
        entries = self.legend_entries() or [((235, 235, 235), "no segment kept")]
        return row([
            caption(self.image(size), "input", f"{w} x {h} px (network saw {iw} x {ih})"),
            caption(with_colorbar(blend(self.dimmed(size), heat(c5), 0.75), float(c5.min()), float(c5.max())),
                    "C5 activation (channel norm)",
                    f"{gw} x {gh} grid, stride {e.c5_stride}"),
            caption(self.panoptic(size), "panoptic result",
                    f"{n_seg} segment{'s' * (n_seg != 1)}" if n_seg else "no segment kept"),
            caption(legend(entries), "legend"),
        ])

    def segment(self, segment_id: int, long_side: int = 168) -> Image.Image:
        """One segment: box | mask logits | final pixels | M attention maps, class and score."""
        q = self.e.query_of_segment(segment_id)
        s = self.e.segment_info(segment_id)
        size = thumb_size(self.e.image.shape[:2], long_side)
        x0, y0, x1, y1 = q.box
        panels = [
            caption(self.box(q, size, self.colors[segment_id]), "box", f"{x1 - x0:.0f} x {y1 - y0:.0f} px"),
            self.logits(q.index, size),
            caption(self.pixels(segment_id, size), "final pixels", f"area {int(s['area'])} px"),
            *self.attention(q.index, size),
        ]
        kind = "thing" if s.get("isthing", True) else "stuff"
        title = (f"segment {self.label(segment_id)} ({kind}) - query {q.index}, "
                 f"score {self.e.segment_score(segment_id):.3f}")
        body = wrap(panels, width=max(7 * (size[1] + GAP), 1200))
        return column([caption_line(title, body.width), body])

    def dropped(self, q: QueryInfo, long_side: int = 140) -> Image.Image:
        """A dropped query whose mask logits were computed: box | mask logits | attention maps,
        with its reason and best class."""
        size = thumb_size(self.e.image.shape[:2], long_side)
        x0, y0, x1, y1 = q.box
        panels = [caption(self.box(q, size, (150, 150, 150)), "box", f"{x1 - x0:.0f} x {y1 - y0:.0f} px"),
                  self.logits(q.index, size), *self.attention(q.index, size)]
        into = f" into segment {q.segment_id}" if q.segment_id is not None else ""
        title = (f"query {q.index}: {q.status}{into} - best class {self.e.categories.name(q.best_class)} "
                 f"{q.best_score:.3f}")
        body = wrap(panels, width=max(8 * (size[1] + GAP), 1200))
        return column([caption_line(title, body.width, color=MUTED), body])

    def path(self, segment_id: int, long_side: int = 220) -> Image.Image:
        """The whole path of one segment: image -> M attention maps (H/32) -> mask logits
        (H/4) -> segment at full size, each stage annotated with its size."""
        e = self.e
        q = e.query_of_segment(segment_id)
        H, W = e.image.shape[:2]
        ih, iw = e.input_size
        size = thumb_size((H, W), long_side)
        att = e.attention_maps[q.index]
        M, gh, gw = att.shape
        logits = e.mask_logits_of(q.index)
        lh, lw = (0, 0) if logits is None else logits.shape

        first = caption(self.box(q, size, self.colors[segment_id]), "image",
                        f"{W} x {H} -> resized {iw} x {ih}")
        # attention maps at their native grid: nearest upsampling shows the H/32 cells
        small = thumb_size((gh, gw), max(48, long_side // 2 - GAP))
        vmax = float(att.max()) or 1.0
        tiles = [Image.fromarray(heat(grid_to_view(att[m], 1, (gh, gw), small, nearest=True), 0, vmax))
                 for m in range(M)]
        st = e.c5_stride
        maps = wrap(tiles, width=2 * small[1] + GAP, gap=2)
        second = caption(column([maps, colorbar(maps.width, 0.0, vmax)], gap=2), f"{M} attention maps",
                         f"{M} heads x {gw} x {gh} (W/{st} x H/{st})", width=2 * small[1] + GAP)
        third = self.logits(q.index, size, sub=f"{lw} x {lh} (W/4 x H/4)")
        fourth = caption(self.pixels(segment_id, size), f"segment {self.label(segment_id)}",
                         f"{W} x {H}, {int(e.segment_info(segment_id)['area'])} px")
        h = max(p.height for p in (first, second, third, fourth))
        body = row([first, arrow(90, h, "query\nattention"), second,
                    arrow(90, h, f"FPN head\nx{st // 4}"), third,
                    arrow(110, h, "argmax over\nkept queries"), fourth], gap=4, align_top=False)
        title = (f"path of segment {self.label(segment_id)} (query {q.index}, "
                 f"score {e.segment_score(segment_id):.3f})")
        return column([caption_line(title, body.width), body])

    def sheet(self, segments: Sequence[int], path_segment: int | None, max_segments: int = 4,
              drawn: dict[str, Image.Image] | None = None) -> Image.Image:
        """One summary PNG: overview, the path figure, the first few segment sheets. `drawn`
        may hold already drawn "overview", "path" and "segment_<id>" panels."""
        drawn = drawn or {}
        meta = self.e.meta
        title = (f"{meta.get('image', 'image')} - weights: {meta.get('weights', '?')} - "
                 f"threshold {self.e.threshold:g}")
        parts = [caption_line(title, 900, size=16), drawn.get("overview") or self.overview()]
        if path_segment is not None:
            parts.append(drawn.get("path") or self.path(path_segment))
        else:
            n = len(self.e.dropped())
            parts.append(caption_line(f"No segment kept: all {n} queries were dropped (see the report's "
                                      "table of dropped queries).", 900, color=(160, 30, 30)))
        parts += [drawn.get(f"segment_{s}") or self.segment(s) for s in list(segments)[:max_segments]]
        if len(segments) > max_segments:
            parts.append(caption_line(f"... {len(segments) - max_segments} more segments in the report",
                                      600, color=MUTED))
        return pad(column(parts, gap=14))
