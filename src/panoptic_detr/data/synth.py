"""Synthetic COCO-panoptic scenes that a small model can learn: textured stuff, shaped things.

A scene is a background split into 2-4 stuff regions (warped Voronoi cells), each a
different stuff class with its own texture (sky gradient, grass streaks, water waves, brick
wall, sand speckle), under 0-10 thing instances of 6 shape classes (circle, square, triangle,
star, ring, cross) with random size (12-40 % of the short side by default), colour, texture
and rotation, drawn in z-order so later ones occlude earlier ones. Optionally a crowd region:
a cluster of small shapes of one class labelled as a single `iscrowd` segment.

The class is decided by the texture (stuff) or the outline (things), never by colour or
position. Every scene is a pure function of (seed, index): `make_scene` rebuilds any image of
a dataset alone, and datasets made from different seeds do not share images.
Segments that end up fully occluded or smaller than `min_area` pixels are not listed; their
visible pixels (if any) become void (id 0).

Written datasets: DIR/images/NNNNNN.jpg (JPEG, quality 90, 4:4:4), DIR/panoptic/NNNNNN.png (COCO
panoptic RGB ids) and DIR/panoptic.json, which `CocoPanoptic(DIR)` reads.
"""

from __future__ import annotations

import contextlib
import functools
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .files import atomic_write, write_json
from .panoptic_png import write_panoptic_png

THINGS = ["circle", "square", "triangle", "star", "ring", "cross"]
STUFF = ["sky", "grass", "water", "brick", "sand"]
_THING_COLORS = [(220, 20, 60), (0, 130, 200), (255, 180, 0), (145, 30, 180), (60, 180, 75), (240, 50, 230)]
_STUFF_COLORS = [(135, 190, 240), (80, 140, 40), (20, 80, 130), (150, 60, 40), (210, 190, 130)]


class SynthError(ValueError):
    """A parameter of `make_dataset` / `make_scene` out of its range (one line: name, value,
    range); `name` is the parameter's."""

    def __init__(self, name: str, value: Any, expected: str) -> None:
        super().__init__(f"{name}: {value!r} is out of range (expected {expected})")
        self.name, self.value, self.expected = name, value, expected


def check_params(size: tuple[int, int], crowd_prob: float, max_things: int,
                 thing_size: tuple[float, float]) -> None:
    """SynthError unless the scene parameters are in range (NaN never is)."""
    if len(size) != 2 or not all(isinstance(v, int) and v >= 16 for v in size):
        raise SynthError("size", size, "(height, width), each a whole number >= 16")
    if not (isinstance(crowd_prob, int | float) and 0 <= crowd_prob <= 1):
        raise SynthError("crowd_prob", crowd_prob, "a probability from 0 to 1")
    if isinstance(max_things, bool) or not isinstance(max_things, int) or max_things < 0:
        raise SynthError("max_things", max_things, "a whole number >= 0")
    low, high = thing_size
    if not 0 < low <= high <= 1:
        raise SynthError("thing_size", thing_size, "(low, high) fractions with 0 < low <= high <= 1")


def synth_categories() -> list[dict[str, Any]]:
    """COCO `categories` of the synthetic scenes: things 1-6, stuff 7-11 (class index = id)."""
    cats = [
        {"id": i + 1, "name": n, "isthing": 1, "color": list(_THING_COLORS[i]), "supercategory": "shape"}
        for i, n in enumerate(THINGS)
    ]
    cats += [
        {"id": len(THINGS) + i + 1, "name": n, "isthing": 0, "color": list(_STUFF_COLORS[i]),
         "supercategory": "background"}
        for i, n in enumerate(STUFF)
    ]
    return cats


# --- stuff textures: functions of pixel coordinates (1-D arrays of one region's pixels) ---

def _f32(*values) -> np.ndarray:
    return np.asarray(values, np.float32)


def _noise(rng, shape: int | tuple[int, ...], sigma: float) -> np.ndarray:
    """Uniform noise of standard deviation `sigma`, [n, 1] (or `shape`): cheaper than normal."""
    shape = (shape, 1) if isinstance(shape, int) else shape
    u = rng.random(shape, dtype=np.float32)
    u -= 0.5
    u *= np.float32(sigma * 12**0.5)
    return u


def _sky(rng, ys, xs, h, w, s):
    top = _f32(0.30, 0.50, 0.90) + rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    bottom = _f32(0.75, 0.85, 1.00) + rng.uniform(-0.05, 0.0, 3).astype(np.float32)
    t = (ys.astype(np.float32) / max(h - 1, 1))[:, None]
    return top + (bottom - top) * t + _noise(rng, ys.size, 0.008)


def _grass(rng, ys, xs, h, w, s):
    base = _f32(0.20, 0.55, 0.15) * np.float32(rng.uniform(0.8, 1.2))
    blade = max(3, int(6 * s))  # vertical dashes like blades of grass
    table = rng.random((h // blade + 2, w), dtype=np.float32)
    offset = rng.integers(0, blade, w)
    v = table[(ys + offset[xs]) // blade, xs]
    return base * (0.55 + 0.7 * v)[:, None] + _noise(rng, ys.size, 0.03)


def _water(rng, ys, xs, h, w, s):
    base = _f32(0.10, 0.35, 0.55) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    f = rng.uniform(0.25, 0.4) / s
    phase = rng.uniform(0, 2 * np.pi, 2)
    yf, xf = ys.astype(np.float32), xs.astype(np.float32)
    wave = np.sin(yf * f + 3.0 * np.sin(xf * (f * 0.3) + phase[0]) + phase[1])
    return base * (0.8 + 0.3 * wave)[:, None] + 0.15 * (wave > 0.9)[:, None]


def _brick(rng, ys, xs, h, w, s):
    bh, bw = max(4, int(rng.integers(8, 13) * s)), max(8, int(rng.integers(16, 25) * s))
    mortar = max(1, int(2 * s))
    row = ys // bh
    xo = xs + (row % 2) * (bw // 2)  # running bond: every other row shifted by half a brick
    col = xo // bw
    shade = rng.uniform(0.75, 1.15, (h // bh + 2, w // bw + 3)).astype(np.float32)[row, col]
    brick = _f32(0.62, 0.26, 0.18) * shade[:, None]
    is_mortar = ((ys % bh) < mortar) | ((xo % bw) < mortar)
    return np.where(is_mortar[:, None], _f32(0.78, 0.76, 0.70), brick)


def _sand(rng, ys, xs, h, w, s):
    base = _f32(0.86, 0.76, 0.52) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    dune = 0.06 * np.sin((xs.astype(np.float32) * 0.3 + ys) * (rng.uniform(0.05, 0.1) / s))
    return base * (1 + dune)[:, None] + _noise(rng, ys.size, 0.06)


_STUFF_TEXTURES = [_sky, _grass, _water, _brick, _sand]


# --- thing shapes: inside tests on local coordinates (u, v), the shape's radius being 1 ---

def _star_inside(u, v):
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    sector = 2 * np.pi / 5
    a = np.abs(np.mod(phi + np.pi / 2, sector) - sector / 2)  # fold into one half-spike
    px, py = rho * np.cos(a), rho * np.sin(a)
    ix, iy = 0.45 * np.cos(sector / 2), 0.45 * np.sin(sector / 2)  # inner vertex; outer is (1, 0)
    return (ix - 1) * py - iy * (px - 1) >= 0  # on the centre's side of the spike's edge


_SHAPES = [
    lambda u, v: u * u + v * v <= 1,  # circle
    lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.7,  # square (corners stay inside radius 1)
    lambda u, v: (v >= -0.5) & (0.866 * u + 0.5 * v <= 0.5) & (-0.866 * u + 0.5 * v <= 0.5),  # triangle
    _star_inside,
    lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.3),  # ring
    lambda u, v: ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)) & (np.maximum(np.abs(u), np.abs(v)) <= 0.95),
]


def _hsv_color(rng) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(0.5, 1.0), rng.uniform(0.55, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _thing_texture(rng, u, v, color):
    """[n, 3] colours of a thing's pixels: one of solid, stripes, checker, radial shading."""
    kind = rng.integers(4)
    f = rng.uniform(3, 6)
    if kind == 0:
        m = np.full(u.shape, 1.0)
    elif kind == 1:
        m = 0.6 + 0.4 * (np.sin(u * f * np.pi) > 0)
    elif kind == 2:
        m = 0.6 + 0.4 * ((np.floor(u * f / 2) + np.floor(v * f / 2)) % 2)
    else:
        m = 1.1 - 0.5 * np.hypot(u, v)
    return color * m[:, None]


def _draw_shape(rng, labels, image, label, cls, cy, cx, radius, color):
    """Paint one rotated shape of class `cls` (radius in pixels) into `labels` and `image`."""
    h, w = labels.shape
    r = int(np.ceil(radius))
    y0, y1 = max(0, int(cy) - r), min(h, int(cy) + r + 1)
    x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r + 1)
    theta = rng.uniform(0, 2 * np.pi)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = (yy + 0.5 - cy) / radius, (xx + 0.5 - cx) / radius
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    inside = _SHAPES[cls](u, v)
    labels[y0:y1, x0:x1][inside] = label
    image[y0:y1, x0:x1][inside] = _thing_texture(rng, u[inside], v[inside], color)


def _stuff_layout(rng, h, w, s):
    """[h, w] region index (0..k-1) from a Voronoi partition in warped coordinates."""
    k = int(rng.integers(2, 5))
    sites = rng.uniform(0, 1, (k, 2)) * (h, w)
    for _ in range(20):  # spread the sites so no region is a sliver
        d = np.hypot(*(sites[:, None] - sites[None]).transpose(2, 0, 1)) + np.eye(k) * 1e9
        if d.min() > 0.3 * min(h, w):
            break
        sites = rng.uniform(0, 1, (k, 2)) * (h, w)
    amp, f, ph = rng.uniform(6, 14) * s, rng.uniform(0.02, 0.05) / s, rng.uniform(0, 2 * np.pi, 2)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    wy = ys + np.float32(amp) * np.sin(xs * np.float32(f) + np.float32(ph[0]))  # wavy borders
    wx = xs + np.float32(amp) * np.sin(ys * np.float32(f) + np.float32(ph[1]))  # [h, w] broadcast
    sites = sites.astype(np.float32)
    dist = (wy[None] - sites[:, 0, None, None]) ** 2 + (wx[None] - sites[:, 1, None, None]) ** 2
    return dist.argmin(0), k


def make_scene(
    seed: int,
    index: int,
    size: tuple[int, int] = (256, 256),
    *,
    crowd_prob: float = 0.0,
    max_things: int = 10,
    thing_size: tuple[float, float] = (0.12, 0.40),
    min_area: int = 16,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Render scene `index` of the dataset with `seed`; `size` is (height, width).

    Returns (image [H, W, 3] uint8, id_map [H, W] int64 with 0 = void, segments_info: COCO
    dicts id/category_id/iscrowd/area/bbox). Ids are random 24-bit numbers (they exercise all
    three channels of the PNG encoding). The crowd region and the ids draw from their own
    random streams, so `crowd_prob` only adds a crowd region to a scene: the pixels outside
    it stay the same (the segment ids do not).
    """
    h, w = size
    s = min(h, w) / 256.0  # texture scale, so scenes look alike at any size
    rng = np.random.default_rng([seed, index])
    crowd_rng = np.random.default_rng([seed, index, 1])
    image = np.empty((h * w, 3), np.float32)
    cats: list[tuple[int, int]] = [(0, 0)]  # label -> (category id, iscrowd); label 0 = void

    region, k = _stuff_layout(rng, h, w, s)
    labels = (region + 1).astype(np.int32)  # stuff labels 1..k cover the whole image
    flat = region.ravel()
    for r, cls in enumerate(rng.choice(len(STUFF), k, replace=False)):
        idx = np.flatnonzero(flat == r)
        image[idx] = _STUFF_TEXTURES[cls](rng, idx // w, idx % w, h, w, s)
        cats.append((len(THINGS) + int(cls) + 1, 0))
    image = image.reshape(h, w, 3)

    if crowd_rng.random() < crowd_prob:  # below the things: they may stand in front of it
        cls = int(crowd_rng.integers(len(THINGS)))
        cy, cx = crowd_rng.uniform(0.2, 0.8) * h, crowd_rng.uniform(0.2, 0.8) * w
        color = _hsv_color(crowd_rng)
        for _ in range(int(crowd_rng.integers(6, 16))):
            oy, ox = crowd_rng.normal(0, 0.08 * min(h, w), 2)
            radius = crowd_rng.uniform(0.02, 0.04) * min(h, w)
            _draw_shape(crowd_rng, labels, image, len(cats), cls, cy + oy, cx + ox, radius, color)
        cats.append((cls + 1, 1))

    lo, hi = thing_size
    for _ in range(int(rng.integers(0, max_things + 1))):
        cls = int(rng.integers(len(THINGS)))
        radius = rng.uniform(lo, hi) * min(h, w) / 2
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        _draw_shape(rng, labels, image, len(cats), cls, cy, cx, radius, _hsv_color(rng))
        cats.append((cls + 1, 0))

    # visible area of every label; occluded or tiny segments leave the list, pixels to void
    area = np.bincount(labels.ravel(), minlength=len(cats))
    keep = area >= min_area
    keep[0] = False
    ids = np.zeros(len(cats), np.int64)
    ids[keep] = _unique_ids(np.random.default_rng([seed, index, 2]), int(keep.sum()))
    id_map = ids[labels]

    image *= 255
    image += _noise(rng, (h, w, 1), 0.01 * 255)  # a little sensor noise, all channels alike
    image += 0.5
    img = image.clip(0, 255, out=image).astype(np.uint8)
    kept = np.nonzero(keep)[0]
    boxes = _label_boxes(labels, len(cats))[kept]
    segments = [
        {"id": int(ids[lab]), "category_id": cats[lab][0], "iscrowd": cats[lab][1],
         "area": int(area[lab]), "bbox": b}
        for lab, b in zip(kept.tolist(), boxes.tolist(), strict=True)
    ]
    return img, id_map, segments


def _label_boxes(labels: np.ndarray, n: int) -> np.ndarray:
    """[n, 4] COCO boxes [x, y, w, h] of labels 0..n-1 in an [H, W] label map (0 if absent)."""
    h, w = labels.shape
    rows = np.zeros((n, h), bool)
    cols = np.zeros((n, w), bool)
    rows[labels, np.arange(h)[:, None]] = True
    cols[labels, np.arange(w)[None, :]] = True
    y0, x0 = rows.argmax(1), cols.argmax(1)
    y1, x1 = h - rows[:, ::-1].argmax(1), w - cols[:, ::-1].argmax(1)
    out = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)
    out[~rows.any(1)] = 0
    return out


def _unique_ids(rng, n: int) -> np.ndarray:
    ids = np.unique(rng.integers(1, 2**24, n + 8))  # sorted, so shuffle to avoid id ~ z-order
    while ids.size < n:  # practically never: collisions among 2^24
        ids = np.unique(np.concatenate([ids, rng.integers(1, 2**24, n)]))
    return rng.permutation(ids)[:n]


def _jpeg_bytes(image: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    # 4:4:4 chroma: the thin colour edges of the textures and shapes survive
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _write_scene(out: Path, seed: int, size: tuple[int, int], crowd_prob: float, max_things: int,
                 thing_size: tuple[float, float], index: int) -> tuple[dict, dict]:
    """Draw scene `index` and write its image and panoptic PNG under `out`; its JSON entries."""
    img, id_map, segments = make_scene(seed, index, size, crowd_prob=crowd_prob, max_things=max_things,
                                        thing_size=thing_size)
    name = f"{index:06d}"
    data = _jpeg_bytes(img)
    # atomic but not fsynced: the fsyncs would cost as much as making the scenes
    atomic_write(out / "images" / f"{name}.jpg", lambda f: f.write(data), fsync=False)
    write_panoptic_png(out / "panoptic" / f"{name}.png", id_map, fsync=False)
    return ({"id": index, "file_name": f"{name}.jpg", "height": size[0], "width": size[1]},
            {"image_id": index, "file_name": f"{name}.png", "segments_info": segments})


def make_dataset(
    out: str | Path,
    n: int,
    seed: int = 0,
    size: tuple[int, int] = (256, 256),
    *,
    crowd_prob: float = 0.0,
    max_things: int = 10,
    thing_size: tuple[float, float] = (0.12, 0.40),
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write `n` scenes as a COCO-panoptic dataset under `out` (layout in the module doc).

    Refuses a non-empty `out` unless `overwrite`. Every file is written atomically and the
    JSON last (and fsynced), so a dataset with a JSON is complete, power cuts aside.
    `size` is (height, width); `crowd_prob`, `max_things` and `thing_size` go to `make_scene`.
    `workers`: processes drawing the scenes (default: one per CPU this process may use, from
    256 scenes on); a scene depends on (seed, index) only, so the files are the same whatever
    the number. Returns the JSON's path. A parameter out of range is a `SynthError`, before
    anything is written.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SynthError("n", n, "a whole number of images >= 1")
    check_params(tuple(size), crowd_prob, max_things, tuple(thing_size))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: folder is not empty (pass --overwrite to write into it)")
    from tqdm import tqdm

    from ..parallel import pool_context, usable_cores

    if workers is None:
        workers = usable_cores() if n >= 256 else 1
    draw = functools.partial(_write_scene, out, seed, tuple(size), crowd_prob, max_things, tuple(thing_size))
    images, annotations = [], []
    with contextlib.ExitStack() as stack:
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            pool = stack.enter_context(ProcessPoolExecutor(workers, mp_context=pool_context()))
            scenes = pool.map(draw, range(n), chunksize=16)
        else:
            scenes = map(draw, range(n))
        for image, annotation in tqdm(scenes, total=n, desc="synth", unit="img", disable=not progress):
            images.append(image)
            annotations.append(annotation)
    return write_json(out / "panoptic.json", {
        "info": {"description": f"panoptic-detr synthetic scenes, seed {seed}", "seed": seed},
        "images": images,
        "annotations": annotations,
        "categories": synth_categories(),
    })
