"""COCO instance annotations <-> panoptic id maps (pure array code, pycocotools for masks).

The rule for overlapping instances, used everywhere in the project (`build-gt`, `convert`):

* `order="area"` (default): the smaller instance is drawn on top, so a cup on a table keeps
  its pixels and the table keeps the rest. Equal areas: the later annotation is on top.
* `order="annotation"`: annotations are drawn in file order, later on top (the order of
  layers in most annotation tools).
* Crowd annotations always lie below every non-crowd instance: a crowd region groups many
  objects, an instance inside it is the more specific label.
* After resolution, an instance that lost pixels to an instance above it and keeps fewer
  than `min_area` pixels is a fragment: it is dropped (its pixels go to what lies beneath,
  or void) and reported. An instance that lost nothing is never dropped, however small:
  someone annotated it on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

ORDERS = ("area", "annotation")
VOID = 255
BoxMask = tuple[tuple[slice, slice], np.ndarray]
"""A mask kept as its bounding box (row slice, column slice) and the bool crop inside it."""


def decode_segmentation(segmentation: Any, height: int, width: int) -> tuple[np.ndarray | None, list[str]]:
    """Decode one COCO `segmentation` (polygons, compressed or uncompressed RLE) to a mask.

    Returns (mask [H, W] bool or None when nothing usable is left, problems): each problem is
    a short phrase (degenerate polygon skipped, polygon clipped, RLE of another size, ...).
    """
    problems: list[str] = []
    if isinstance(segmentation, dict):
        size = segmentation.get("size")
        counts = segmentation.get("counts")
        if size is None or counts is None:
            return None, ["RLE without 'size' or 'counts'"]
        if [int(s) for s in size] != [height, width]:
            return None, [f"RLE size {list(size)} differs from the image size [{height}, {width}]"]
        if isinstance(counts, list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
        try:
            return mask_utils.decode(rle).astype(bool), problems
        except Exception as e:  # corrupt counts string
            return None, [f"RLE cannot be decoded ({e})"]
    if not isinstance(segmentation, list):
        return None, [f"segmentation of type {type(segmentation).__name__} is neither polygons nor RLE"]
    polygons = []
    for k, poly in enumerate(segmentation):
        try:
            pts = np.asarray(poly, dtype=np.float64).reshape(-1) if isinstance(poly, list) else np.zeros(0)
        except (TypeError, ValueError):  # not a flat list of numbers
            pts = np.zeros(0)
        if pts.size < 6 or pts.size % 2 or not np.isfinite(pts).all():
            problems.append(f"polygon {k}: degenerate ({pts.size // 2} points), skipped")
            continue
        xs, ys = pts[0::2], pts[1::2]
        if xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height:
            problems.append(f"polygon {k}: partly outside the {width}x{height} image, clipped")
        polygons.append((k, pts.tolist()))
    if not polygons:
        return None, problems
    rles = mask_utils.frPyObjects([p for _, p in polygons], height, width)
    areas = mask_utils.area(rles)
    kept = []
    for (k, _), rle, a in zip(polygons, rles, areas, strict=True):
        if a == 0:
            problems.append(f"polygon {k}: no pixel inside the image (degenerate or outside), skipped")
        else:
            kept.append(rle)
    if not kept:
        return None, problems
    return mask_utils.decode(mask_utils.merge(kept)).astype(bool), problems


def decode_annotations(
    anns: Sequence[dict[str, Any]], height: int, width: int, cropped: bool = False
) -> tuple[np.ndarray | list[BoxMask], list[int], list[bool], list[int], list[str]]:
    """Decode the COCO instance annotations of one image.

    Returns (masks [N, H, W] bool, category ids [N], iscrowd [N], annotation ids [N], problems):
    one line per problem, naming the annotation; annotations with nothing usable are skipped.
    `cropped=True` gives the masks as `crop_mask` pairs instead: memory for the boxes only
    (many instances on a large image).
    """
    masks, cats, crowd, ids, problems = [], [], [], [], []
    for k, ann in enumerate(anns):
        name = f"annotation {ann.get('id', f'#{k}')}"
        mask, issues = decode_segmentation(ann.get("segmentation"), height, width)
        if mask is None or not mask.any():  # one line for the whole annotation
            problems.append(f"{name}: " + "; ".join(issues + ["no pixel left, annotation skipped"]))
            continue
        problems += [f"{name}: {p}" for p in issues]
        masks.append(crop_mask(mask) if cropped else mask)
        cats.append(int(ann["category_id"]))
        crowd.append(bool(ann.get("iscrowd", 0)))
        ids.append(ann.get("id", k))
    if cropped:
        return masks, cats, crowd, ids, problems
    arr = np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
    return arr, cats, crowd, ids, problems


def crop_mask(mask: np.ndarray) -> BoxMask:
    """[H, W] bool -> (box, crop): box = (row slice, column slice) of its bounding box (empty
    slices for an empty mask), crop = mask[box] (C-contiguous)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    box = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    return box, np.ascontiguousarray(mask[box], dtype=bool)


def paint_order(areas: np.ndarray, iscrowd: np.ndarray, order: str = "area") -> np.ndarray:
    """Indices of the instances from bottom to top under the module's overlap rule.

    areas: [N] pixels of each full mask; iscrowd: [N] bool.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, not {order!r}")
    n = len(areas)
    idx = np.arange(n)
    if order == "area":
        # bottom first: crowd before non-crowd, larger before smaller, earlier before later
        return np.lexsort((idx, -np.asarray(areas, dtype=np.int64), ~np.asarray(iscrowd, dtype=bool)))
    return np.lexsort((idx, ~np.asarray(iscrowd, dtype=bool)))


def instances_to_panoptic(
    masks: np.ndarray | Sequence[np.ndarray | BoxMask],
    categories: Sequence[int],
    iscrowd: Sequence[bool] | None = None,
    order: str = "area",
    min_area: int = 0,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """Resolve possibly overlapping instance masks into one panoptic id map.

    masks: [N, H, W] bool, or a list of [H, W] bool masks or `crop_mask` pairs (then `size`
    = (H, W) is needed); categories: [N] category ids.
    Returns (id_map [H, W] int32 with segment id = instance index + 1 and 0 = void,
    segments_info for the kept instances (id, category_id, iscrowd, isthing, area, bbox),
    report: `overlap_pixels` (pixels claimed by more than one instance), `occluded` (instances
    that lost pixels), `dropped` (fragments removed: index, category_id, area left, area)).
    """
    n = len(categories)
    crops, (h, w) = _as_crops(masks, n, size)
    crowd = np.zeros(n, dtype=bool) if iscrowd is None else np.asarray(iscrowd, dtype=bool)
    full = np.array([np.count_nonzero(c) for _, c in crops], dtype=np.int64)
    bottom_up = paint_order(full, crowd, order)
    coverage = np.zeros((h, w), np.uint16)  # work inside each instance's box: most are small
    for box, crop in crops:
        coverage[box] += crop
    report: dict[str, Any] = {"overlap_pixels": int((coverage > 1).sum()), "occluded": 0, "dropped": []}

    alive = full > 0
    while True:
        id_map = np.zeros((h, w), dtype=np.int32)
        for i in bottom_up:
            if alive[i]:
                box, crop = crops[i]
                id_map[box][crop] = i + 1
        visible = np.bincount(id_map.reshape(-1), minlength=n + 1)[1:]
        fragment = alive & (visible < full) & (visible < min_area)
        if not fragment.any():
            break
        for i in np.flatnonzero(fragment):
            report["dropped"].append({"index": int(i), "category_id": int(categories[i]),
                                      "area": int(visible[i]), "full_area": int(full[i])})
        alive &= ~fragment  # repaint: what lay beneath a dropped fragment shows through
    report["occluded"] = int((alive & (visible < full)).sum())

    segments = []
    for i in range(n):
        if alive[i] and visible[i] > 0:
            rows, cols = crops[i][0]
            x, y, bw, bh = _bbox(id_map[rows, cols] == i + 1)
            segments.append({"id": i + 1, "category_id": int(categories[i]), "iscrowd": int(crowd[i]),
                             "isthing": 1, "area": int(visible[i]),
                             "bbox": [x + cols.start, y + rows.start, bw, bh]})
        elif alive[i]:  # fully covered by instances above, nothing to drop
            report["dropped"].append({"index": int(i), "category_id": int(categories[i]),
                                      "area": 0, "full_area": int(full[i])})
    return id_map, segments, report


def _as_crops(masks: Any, n: int, size: tuple[int, int] | None) -> tuple[list[BoxMask], tuple[int, int]]:
    """The masks as `crop_mask` pairs, and the image size."""
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3 or masks.shape[0] != n:
            raise ValueError(f"masks must be [N, H, W] with N={n}, got {masks.shape}")
        size = size or (int(masks.shape[1]), int(masks.shape[2]))
    if len(masks) != n:
        raise ValueError(f"{len(masks)} masks for {n} categories")
    crops = [m if isinstance(m, tuple) else crop_mask(np.asarray(m, dtype=bool)) for m in masks]
    if size is None:
        dense = [m for m in masks if not isinstance(m, tuple)]
        if not dense:
            raise ValueError("instances_to_panoptic needs size=(H, W) for cropped masks")
        size = dense[0].shape
    return crops, (int(size[0]), int(size[1]))


def _bbox(mask: np.ndarray) -> list[int]:
    """COCO [x, y, w, h] of a [H, W] bool mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _category_lookup(id_map: np.ndarray, segments_info: Sequence[dict[str, Any]],
                     values: Sequence[int], fill: int) -> np.ndarray:
    """[H, W] array of `values[k]` where id_map == segments_info[k]['id'], `fill` elsewhere."""
    ids = np.asarray([int(s["id"]) for s in segments_info], dtype=np.int64)
    vals = np.asarray(list(values) + [fill], dtype=np.int64)
    if ids.size == 0:
        return np.full(id_map.shape, fill, dtype=np.int64)
    order = np.argsort(ids)
    sorted_ids = ids[order]
    flat = np.asarray(id_map, dtype=np.int64)
    pos = np.searchsorted(sorted_ids, flat).clip(max=ids.size - 1)
    hit = sorted_ids[pos] == flat
    return vals[np.where(hit, order[pos], ids.size)]


def panoptic_to_semantic(id_map: np.ndarray, segments_info: Sequence[dict[str, Any]]) -> np.ndarray:
    """[H, W] segment ids -> [H, W] category ids, void (id 0 or unlisted ids) = 255.

    uint8 when every category id is below 255, else uint16 (void stays 255, so category id 255
    cannot be represented and raises ValueError).
    """
    cats = [int(s["category_id"]) for s in segments_info]
    if VOID in cats:
        raise ValueError("category id 255 collides with the void value of semantic maps")
    dtype = np.uint8 if max(cats, default=0) < VOID else np.uint16
    return _category_lookup(id_map, segments_info, cats, VOID).astype(dtype)


def panoptic_to_instances(
    id_map: np.ndarray,
    segments_info: Sequence[dict[str, Any]],
    image_id: int,
    things_only: bool = True,
    first_id: int = 1,
) -> list[dict[str, Any]]:
    """COCO instance annotations (compressed RLE, counts as str) of the segments of one image.

    Stuff segments are left out unless `things_only=False` (segments without `isthing` count as
    things). Annotation ids run from `first_id` in segments_info order.
    """
    id_map = np.asarray(id_map)
    anns = []
    for seg in segments_info:
        if things_only and not seg.get("isthing", 1):
            continue
        mask = np.asfortranarray(id_map == int(seg["id"]), dtype=np.uint8)
        if not mask.any():
            continue
        rle = mask_utils.encode(mask)
        anns.append({
            "id": first_id + len(anns),
            "image_id": image_id,
            "category_id": int(seg["category_id"]),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
            "area": int(mask_utils.area(rle)),
            "bbox": [int(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": int(seg.get("iscrowd", 0)),
        })
    return anns
