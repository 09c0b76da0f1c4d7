"""Merge annotated things with a source's labels into one panoptic id map (pure arrays).

The rules, in order:
1. Annotated instances (already resolved among themselves, `gt.instances`) always win.
2. Every other pixel takes the source's label, mapped through the taxonomy: source stuff and
   source things turned into stuff merge into one segment per target class; source things
   kept as things stay one segment per source segment; ignored or unmapped categories -> void.
3. A source segment that lost pixels to the annotations and keeps fewer than `min_area`
   pixels is a fragment: dropped to void and reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .taxonomy import STUFF, THING, Rule


@dataclass
class Composed:
    """The merged panoptic labels of one image."""

    id_map: np.ndarray
    """[H, W] int32 segment ids, 0 = void."""
    segments_info: list[dict[str, Any]]
    """id, category_id (target), iscrowd, isthing, area, bbox; annotated segments first."""
    annotated: np.ndarray
    """[H, W] bool, True where the label came from an annotation."""
    dropped: list[dict[str, Any]] = field(default_factory=list)
    """Source fragments removed: category_id (target), area left, full_area."""
    ignored_pixels: int = 0
    """Source-labelled pixels made void by the taxonomy (ignored or unmapped categories)."""


def compose(
    ann_id_map: np.ndarray,
    ann_segments: Sequence[dict[str, Any]],
    src_id_map: np.ndarray | None,
    src_segments: Sequence[dict[str, Any]],
    rules: dict[int, Rule],
    target_isthing: dict[int, bool],
    min_area: int = 0,
) -> Composed:
    """Merge annotations (ids in `ann_id_map`, target category ids) over source labels.

    ann_id_map / src_id_map: [H, W] integer ids (0 = void); src_id_map None = no source.
    rules: source category id -> Rule (missing = ignore); target_isthing: target id -> bool.
    """
    ann_id_map = np.asarray(ann_id_map)
    h, w = ann_id_map.shape
    annotated = ann_id_map > 0
    # output labels: 1..A for annotations in the given order, then source groups
    infos: list[dict[str, Any]] = []
    ann_ids = np.asarray([int(s["id"]) for s in ann_segments], dtype=np.int64)
    for s in ann_segments:
        infos.append({"category_id": int(s["category_id"]), "iscrowd": int(s.get("iscrowd", 0)),
                      "isthing": 1})
    out = _relabel(ann_id_map, ann_ids, np.arange(1, len(ann_ids) + 1))

    dropped: list[dict[str, Any]] = []
    ignored = 0
    if src_id_map is not None and len(src_segments):
        src_id_map = np.asarray(src_id_map)
        if src_id_map.shape != (h, w):
            raise ValueError(f"source labels are {src_id_map.shape}, annotations {(h, w)}")
        src_ids = np.asarray([int(s["id"]) for s in src_segments], dtype=np.int64)
        group_of = np.zeros(len(src_segments), dtype=np.int64)  # 0 = void
        groups: dict[tuple[str, int], int] = {}
        for k, s in enumerate(src_segments):
            rule = rules.get(int(s["category_id"]))
            if rule is None or rule.mode not in (THING, STUFF):
                continue
            key = (STUFF, rule.target) if rule.mode == STUFF else (THING, k)
            if key not in groups:
                groups[key] = len(infos) + 1
                infos.append({"category_id": int(rule.target), "iscrowd": int(s.get("iscrowd", 0)),
                              "isthing": int(bool(target_isthing.get(rule.target, rule.mode == THING)))})
            group_of[k] = groups[key]
        src_out = _relabel(src_id_map, src_ids, group_of)
        ignored = int(((src_id_map > 0) & (src_out == 0) & ~annotated).sum())
        full = np.bincount(src_out.reshape(-1), minlength=len(infos) + 1)
        out = np.where(annotated, out, src_out)
        visible = np.bincount(out.reshape(-1), minlength=len(infos) + 1)
        frag = np.flatnonzero((visible < full) & (visible < min_area) & (visible > 0))
        frag = frag[frag > len(ann_ids)]
        if frag.size:
            out[np.isin(out, frag)] = 0
            for g in frag:
                dropped.append({"category_id": infos[g - 1]["category_id"], "area": int(visible[g]),
                                "full_area": int(full[g])})

    # drop labels with no pixel left and renumber compactly
    area = np.bincount(out.reshape(-1), minlength=len(infos) + 1)[1:]
    keep = np.flatnonzero(area > 0)
    new_ids = np.zeros(len(infos) + 1, dtype=np.int32)
    new_ids[keep + 1] = np.arange(1, keep.size + 1)
    out = new_ids[out]
    boxes = ndimage.find_objects(out)  # one (rows, cols) slice pair per label, in C
    segments = []
    for j, k in enumerate(keep):
        ys, xs = boxes[j]
        segments.append(dict(id=j + 1, **infos[k], area=int(area[k]),
                             bbox=[xs.start, ys.start, xs.stop - xs.start, ys.stop - ys.start]))
    return Composed(out, segments, annotated & (out > 0), dropped, ignored)


def _relabel(id_map: np.ndarray, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[H, W] with `values[k]` where id_map == ids[k], 0 elsewhere (ids unsorted, any range)."""
    if ids.size == 0:
        return np.zeros(id_map.shape, dtype=np.int64)
    top = max(int(ids.max()), int(id_map.max(initial=0)))
    if ids.min() >= 0 and top < 4 * id_map.size:  # small ids (the usual case): a lookup table
        lut = np.zeros(top + 1, dtype=np.int64)
        lut[ids] = values
        return lut[id_map]
    order = np.argsort(ids)
    sorted_ids = ids[order]
    flat = id_map.astype(np.int64, copy=False)
    pos = np.searchsorted(sorted_ids, flat).clip(max=ids.size - 1)
    hit = sorted_ids[pos] == flat
    return np.where(hit, np.asarray(values, dtype=np.int64)[order][pos], 0)
