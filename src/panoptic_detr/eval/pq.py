"""Panoptic Quality with exactly the COCO panoptic API's rules (pure numpy on id maps).

PQ = SQ x RQ per class (Kirillov et al., 2019); the rules are those of panopticapi's
`pq_compute_single_core`, so numbers agree with it to float rounding:

- id 0 is void. A ground-truth (GT) and a predicted segment match when they have the same
  category and IoU > 0.5, the prediction's pixels on GT void being left out of the union.
  The GT segment's area is the `area` of its JSON entry (as the API does), the prediction's
  is counted in its PNG.
- Crowd GT segments are never matched nor counted as missed (fn).
- An unmatched prediction is not a false positive when more than half of its area lies on
  GT void plus the crowd region of its category (the last crowd segment of that category
  listed in the GT, as in the API).
- Classes without GT and predictions stay out of the averages.

No files, printing or torch here: `eval/evaluate.py` decodes PNGs and feeds id maps in.
The one pass over pixels is vectorised: the pixels are run-length encoded jointly on
(GT id, predicted id) along the rows, the runs' ids mapped to segment indices, and one
`np.bincount` over the combined indices gives the whole GT x prediction intersection
table (void and unknown ids included); loops run over segments only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

VOID = 0

Segment = Mapping[str, Any]  # a `segments_info` entry: id, category_id, iscrowd, area


class PanopticFormatError(ValueError):
    """A prediction whose PNG, JSON and categories disagree; `problems` lists each one."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class ClassStat:
    """Matching counts of one category, summed over images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou: float = 0.0
    """Sum of the IoUs of the true positives."""

    def __iadd__(self, other: ClassStat) -> ClassStat:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.iou += other.iou
        return self


class PQStat:
    """Per-category `ClassStat`s; add the stats of images, chunks or processes with `+`/`+=`.

    Picklable, so worker processes return it and the parent sums them.
    """

    def __init__(self) -> None:
        self.per_class: defaultdict[int, ClassStat] = defaultdict(ClassStat)

    def __getitem__(self, category_id: int) -> ClassStat:
        return self.per_class[category_id]

    def __iadd__(self, other: PQStat) -> PQStat:
        for cat, s in other.per_class.items():
            self.per_class[cat] += s
        return self

    def __add__(self, other: PQStat) -> PQStat:
        out = PQStat()
        out += self
        out += other
        return out

    def __repr__(self) -> str:
        return f"PQStat({dict(sorted(self.per_class.items()))})"


def _categories_by_id(categories: Mapping[int, Mapping[str, Any]] | Iterable[Mapping[str, Any]]
                      ) -> dict[int, Mapping[str, Any]]:
    if isinstance(categories, Mapping):
        return {int(k): v for k, v in categories.items()}
    return {int(c["id"]): c for c in categories}


def pq_average(stat: PQStat, categories: Mapping[int, Mapping[str, Any]] | Iterable[Mapping[str, Any]],
               isthing: bool | None = None) -> tuple[dict[str, Any], dict[int, dict[str, float]]]:
    """Average PQ/SQ/RQ over `categories` (COCO category dicts with `id`, `isthing`).

    `isthing` None averages all categories, True things only, False stuff only. Returns
    ({"pq", "sq", "rq", "n"}, {category_id: {"pq", "sq", "rq"}}), n counting the categories
    with any GT or prediction. With n == 0 the averages are 0 (the API divides by zero).
    """
    pq = sq = rq = 0.0
    n = 0
    per_class: dict[int, dict[str, float]] = {}
    for cat, info in _categories_by_id(categories).items():
        if isthing is not None and (info.get("isthing", 0) == 1) != isthing:
            continue
        s = stat.per_class.get(cat, ClassStat())
        if s.tp + s.fp + s.fn == 0:
            per_class[cat] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
            continue
        n += 1
        denom = s.tp + 0.5 * s.fp + 0.5 * s.fn
        c = {"pq": s.iou / denom, "sq": s.iou / s.tp if s.tp else 0.0, "rq": s.tp / denom}
        per_class[cat] = c
        pq += c["pq"]
        sq += c["sq"]
        rq += c["rq"]
    if n == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
    return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class


def pq_results(stat: PQStat, categories: Mapping[int, Mapping[str, Any]] | Iterable[Mapping[str, Any]]
               ) -> dict[str, Any]:
    """The API's results dict: "All", "Things", "Stuff" ({"pq", "sq", "rq", "n"}) and
    "per_class" ({category_id: {"pq", "sq", "rq"}} over all categories)."""
    cats = _categories_by_id(categories)
    results: dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = pq_average(stat, cats, isthing=isthing)
        if isthing is None:
            results["per_class"] = per_class
    return results


def intersection_table(gt_ids: np.ndarray, pred_ids: np.ndarray, gt_segment_ids: np.ndarray,
                       pred_segment_ids: np.ndarray) -> np.ndarray:
    """Pixel counts of every (GT segment, predicted segment) pair, void and unknown ids included.

    gt_ids, pred_ids: [H, W] non-negative integer id maps (< 2^32).
    gt_segment_ids [S], pred_segment_ids [T]: the listed ids, sorted, without 0.
    Returns [S + 2, T + 2] int64: row i < S / column j < T is the i-th / j-th listed segment,
    row S / column T is void (id 0), row S + 1 / column T + 1 any id not listed.
    """
    g = np.ascontiguousarray(gt_ids).reshape(-1)
    p = np.ascontiguousarray(pred_ids).reshape(-1)
    s, t = len(gt_segment_ids), len(pred_segment_ids)
    n = g.size
    if n == 0:
        return np.zeros((s + 2, t + 2), np.int64)
    # Runs of equal (gt, pred) along the raster order: id maps are piecewise constant, so
    # there are ~100x fewer runs than pixels (any map works, at worst a run per pixel).
    change = np.empty(n, dtype=bool)
    change[0] = True
    np.not_equal(g[1:], g[:-1], out=change[1:])
    change[1:] |= p[1:] != p[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=n)
    row = _compact(g[starts], gt_segment_ids)  # [R] in 0..S+1
    col = _compact(p[starts], pred_segment_ids)  # [R] in 0..T+1
    table = np.bincount(row * (t + 2) + col, weights=lengths, minlength=(s + 2) * (t + 2))
    return table.astype(np.int64).reshape(s + 2, t + 2)


def _compact(values: np.ndarray, listed: np.ndarray) -> np.ndarray:
    """[R] ids -> their index in sorted `listed` [K]; K for 0 (void), K + 1 for others."""
    k = len(listed)
    if k == 0:
        return np.where(values == VOID, 0, 1)
    idx = np.searchsorted(listed, values).clip(max=k - 1)
    return np.where(listed[idx] == values, idx, np.where(values == VOID, k, k + 1))


def _check_ids(ids: np.ndarray, name: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"{name}: expected an [H, W] id map, got shape {tuple(ids.shape)}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: expected integer ids, got {ids.dtype}")
    if ids.dtype.itemsize > 4 or np.issubdtype(ids.dtype, np.signedinteger):
        if ids.size and (ids.min() < 0 or ids.max() >= 2**32):
            raise ValueError(f"{name}: ids must lie in [0, 2^32)")
    return ids


def pq_image(gt_ids: np.ndarray, gt_segments: Sequence[Segment], pred_ids: np.ndarray,
             pred_segments: Sequence[Segment], categories: Collection[int] | None = None) -> PQStat:
    """Matching statistics of one image.

    gt_ids, pred_ids: [H, W] integer id maps (0 = void); numpy arrays or CPU tensors.
    gt_segments, pred_segments: `segments_info` lists (id, category_id; GT also iscrowd, area).
    categories: the known category ids; a prediction of another category is an error.
    Raises PanopticFormatError listing every problem of the prediction (ids in the PNG absent
    from the JSON and vice versa, unknown categories, a size differing from the GT).
    """
    gt_ids = _check_ids(gt_ids, "ground truth")
    pred_ids = _check_ids(pred_ids, "prediction")
    if gt_ids.shape != pred_ids.shape:
        raise PanopticFormatError([f"prediction size {pred_ids.shape[1]}x{pred_ids.shape[0]} differs "
                                   f"from the ground truth's {gt_ids.shape[1]}x{gt_ids.shape[0]}"])
    # The API keeps the last entry of a repeated id (a dict); so do these.
    pred_by_id = {int(seg["id"]): seg for seg in pred_segments}
    gt_by_id = {int(seg["id"]): seg for seg in gt_segments}
    gt_by_id.pop(VOID, None)
    p_ids = np.array(sorted(pred_by_id.keys() - {VOID}), dtype=np.int64)  # [T]
    g_listed = np.array(list(gt_by_id), dtype=np.int64)  # [S], JSON order
    g_order = np.argsort(g_listed, kind="stable")
    table = intersection_table(gt_ids, pred_ids, g_listed[g_order], p_ids)  # [S+2, T+2]
    s, t = g_listed.size, p_ids.size
    table[:s] = table[:s][np.argsort(g_order)]  # rows back in JSON order
    p_area = table[:, :t].sum(0)  # [T]

    problems = []
    if VOID in pred_by_id:
        problems.append(f"segment id {VOID} is listed in the JSON but id {VOID} means void")
    if table[:, t + 1].any():  # the error path: find which ids
        known = np.concatenate([p_ids, [VOID]])
        missing = np.unique(pred_ids[~np.isin(pred_ids, known)]).tolist()
        problems.append(f"segment ids {missing} are in the PNG but not in the JSON")
    if (p_area == 0).any():
        problems.append(f"segment ids {p_ids[p_area == 0].tolist()} are in the JSON but not in the PNG")
    p_cat = np.array([int(pred_by_id[i]["category_id"]) for i in p_ids.tolist()], dtype=np.int64)
    if categories is not None:
        for i, c in zip(p_ids.tolist(), p_cat.tolist(), strict=True):
            if c not in categories:
                problems.append(f"segment id {i} has unknown category_id {c}")
    if problems:
        raise PanopticFormatError(problems)

    gt = list(gt_by_id.values())
    g_cat = np.array([int(seg["category_id"]) for seg in gt], dtype=np.int64)
    g_crowd = np.array([int(seg.get("iscrowd", 0)) == 1 for seg in gt], dtype=bool)
    g_area = np.array([seg.get("area", -1) for seg in gt], dtype=np.int64)
    g_area = np.where(g_area < 0, table[:s].sum(1), g_area)  # no JSON area: count the pixels
    inter = table[:s, :t]
    void = table[s, :t]  # each prediction's pixels on GT void

    stat = PQStat()
    # Matches: same category, GT not crowd, IoU > 0.5 (unique by construction).
    union = p_area[None, :] + g_area[:, None] - inter - void[None, :]
    ok = (inter > 0) & (g_cat[:, None] == p_cat[None, :]) & ~g_crowd[:, None]
    iou = np.divide(inter, union, out=np.zeros(inter.shape), where=ok)
    gm, pm = np.nonzero(iou > 0.5)
    for i, j in zip(gm.tolist(), pm.tolist(), strict=True):
        c = stat[int(g_cat[i])]
        c.tp += 1
        c.iou += float(iou[i, j])
    g_matched = np.zeros(s, bool)
    g_matched[gm] = True
    p_matched = np.zeros(t, bool)
    p_matched[pm] = True

    # Missed GT; crowd regions by category (the last listed wins, as in the API).
    crowd_of: dict[int, int] = {}
    for i in np.flatnonzero(~g_matched).tolist():
        if g_crowd[i]:
            crowd_of[int(g_cat[i])] = i
        else:
            stat[int(g_cat[i])].fn += 1

    # False positives, unless more than half lies on void + the crowd region of the class.
    for j in np.flatnonzero(~p_matched).tolist():
        cat = int(p_cat[j])
        ignored = int(void[j])
        if cat in crowd_of:
            ignored += int(inter[crowd_of[cat], j])
        if ignored / p_area[j] > 0.5:
            continue
        stat[cat].fp += 1
    return stat
