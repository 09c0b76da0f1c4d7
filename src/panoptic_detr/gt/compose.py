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


@dataclass
class Things:
    """The thing layer of one image: the user's instances over the instance model's."""

    id_map: np.ndarray
    """[H, W] int64 segment ids (the user's first), 0 = no thing."""
    segments: list[dict[str, Any]]
    """id, category_id, iscrowd, isthing: the user's segments, then the model's kept ones."""
    model_ids: set[int]
    """Ids in `id_map` of the model's instances."""
    same_object: int = 0
    """Model instances dropped as the same object as a user annotation."""
    dropped: list[dict[str, Any]] = field(default_factory=list)
    """Model instances dropped as fragments: category_id, area left, full_area."""


def merge_things(
    user_map: np.ndarray,
    user_segments: Sequence[dict[str, Any]],
    model_masks: Sequence[tuple[tuple[slice, slice], np.ndarray]],
    model_categories: Sequence[int],
    order: str = "area",
    min_area: int = 0,
) -> Things:
    """Put the instance model's masks (`crop_mask` pairs, target category ids) below the user's
    instances (`user_map` [H, W] ids of `user_segments`, already resolved).

    A model instance that overlaps one user instance by more than half of its own area is the
    same object: dropped. The others are resolved among themselves (`instances_to_panoptic`,
    `order`), lose their pixels under the user's instances, and one left with fewer than
    `min_area` pixels after losing some is a fragment: dropped (what lies beneath shows).
    """
    from .instances import instances_to_panoptic

    user_map = np.asarray(user_map, dtype=np.int64)
    h, w = user_map.shape
    segments = [{"id": int(s["id"]), "category_id": int(s["category_id"]),
                 "iscrowd": int(s.get("iscrowd", 0)), "isthing": 1} for s in user_segments]
    keep, same = [], 0
    for k, (box, crop) in enumerate(model_masks):
        under = user_map[box][crop]
        counts = np.bincount(under[under > 0]) if under.size else np.zeros(1, np.int64)
        if counts.size and 2 * counts.max(initial=0) > np.count_nonzero(crop):
            same += 1
        else:
            keep.append(k)
    out = user_map.copy()
    model_ids: set[int] = set()
    dropped: list[dict[str, Any]] = []
    if keep:
        cats = [int(model_categories[k]) for k in keep]
        model_map, model_segs, _ = instances_to_panoptic([model_masks[k] for k in keep], cats,
                                                         order=order, min_area=min_area, size=(h, w))
        base = int(max((s["id"] for s in segments), default=0, key=int))
        full = np.bincount(model_map.reshape(-1), minlength=len(keep) + 1)
        free = user_map == 0
        visible = np.bincount(model_map[free], minlength=len(keep) + 1)
        for s in model_segs:
            i = int(s["id"])
            if visible[i] == 0 or (visible[i] < full[i] and visible[i] < min_area):
                if visible[i]:
                    dropped.append({"category_id": int(s["category_id"]), "area": int(visible[i]),
                                    "full_area": int(full[i])})
                continue
            pixels = free & (model_map == i)
            out[pixels] = base + i
            model_ids.add(base + i)
            segments.append({"id": base + i, "category_id": int(s["category_id"]), "iscrowd": 0,
                             "isthing": 1})
    return Things(out, segments, model_ids, same, dropped)
