"""Scoring COCO-panoptic prediction files against ground truth (the file side of eval/pq.py).

`evaluate_files` checks both JSONs field by field, pairs each prediction with its GT image
(same id and file-name stem, else same stem) and streams the PNG pairs through a pool of
worker processes (chunks of images each); a worker decodes the two PNGs, scores them with
`pq_image` and returns the summed `PQStat` of its chunk, so memory stays flat whatever the
dataset size. PNGs are decoded by data/panoptic_png.py (zlib-ng + libspng with the
`fast-png` extra, else PIL). Workers need only numpy, the decoder and eval/pq.py, not torch,
whose import alone costs ~700 MB per process.

Every problem with the prediction (a malformed annotation, one of no GT image, two for one
image, no annotation for an image, a missing or unreadable PNG, a size mismatch, ids in a
PNG absent from the JSON or the reverse, unknown categories) is collected as one line naming
the file, all images are still checked, and then `EvaluationError` carries the list: a
partly wrong prediction gives no score.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.panoptic_png import read_panoptic_png
from ..memory import keep_freed_memory
from ..parallel import pool_context
from .pq import PanopticFormatError, PQStat, pq_image, pq_results

Task = tuple[str, list[dict], str, list[dict]]  # gt png, gt segments, pred png, pred segments


class EvaluationError(Exception):
    """Problems found in the prediction files; `problems` holds one line per problem."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


CHUNK_SIZE = 16
"""Images per chunk a worker scores; the chunk's sum is added to the total, so the float sums
of a run depend on it (`sum_in_chunks` adds per-image statistics the same way)."""


def score_pair(task: Task, categories: frozenset[int]) -> tuple[PQStat | None, list[str]]:
    """The `PQStat` of one (GT PNG, GT segments, predicted PNG, predicted segments), or None
    and the problems found, one line each."""
    gt_png, gt_segments, pred_png, pred_segments = task
    try:
        pred = read_panoptic_png(pred_png, np.uint32)
    except FileNotFoundError:
        return None, [f"{pred_png}: PNG missing"]
    except Exception as e:  # a broken file is a problem of the input, reported with the rest
        return None, [f"{pred_png}: cannot read the PNG ({e})"]
    try:
        gt = read_panoptic_png(gt_png, np.uint32)
    except Exception as e:
        return None, [f"{gt_png}: cannot read the ground-truth PNG ({e})"]
    try:
        return pq_image(gt, gt_segments, pred, pred_segments, categories), []
    except PanopticFormatError as e:
        return None, [f"{pred_png}: {p}" for p in e.problems]


def _score_chunk(args: tuple[list[Task], frozenset[int]]) -> tuple[PQStat, list[str], int]:
    tasks, categories = args
    stat, problems = PQStat(), []
    for task in tasks:
        s, p = score_pair(task, categories)
        if s is not None:
            stat += s
        problems += p
    return stat, problems, len(tasks)


def load_json(path: str | os.PathLike[str], what: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise EvaluationError([f"{path}: {what} JSON missing"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvaluationError([f"{path}: not valid JSON ({e})"]) from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise EvaluationError([f"{path}: no 'annotations' list, not a COCO panoptic {what} JSON"])
    return data


def _is_int(value: Any) -> bool:
    """An integer, or a float equal to one (as JSON writers given numpy floats write ids)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def check_annotations(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> tuple[list[dict], list[str]]:
    """The well-formed annotations of a COCO panoptic JSON, and one line per malformed one
    naming the file, the annotation (its image id, else its index) and the field: an entry
    that is not an object, an image_id that is not an integer, a file_name that is not a
    name, segments_info that is not a list of objects with integer id and category_id."""
    good, problems = [], []
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            problems.append(f"{path}: annotation #{i}: not an object ({json.dumps(ann)[:40]})")
            continue
        image_id = ann.get("image_id")
        if _is_int(image_id):
            label = f"annotation of image id {image_id}"
        else:
            label = f"annotation #{i}"
            problems.append(f"{path}: {label}: image_id {json.dumps(image_id)[:40]} is not an integer"
                            if "image_id" in ann else f"{path}: {label}: no image_id")
        wrong = []
        name = ann.get("file_name")
        if not isinstance(name, str) or not Path(name).stem:
            wrong.append(f"file_name {json.dumps(name)[:40]} is not a file name" if "file_name" in ann
                         else "no file_name")
        segments = ann.get("segments_info")
        if not isinstance(segments, list):
            wrong.append(f"segments_info is {type(segments).__name__ if segments is not None else 'null'}, "
                         "not a list" if "segments_info" in ann else "no segments_info")
        else:
            for j, seg in enumerate(segments):
                if not isinstance(seg, dict):
                    wrong.append(f"segments_info[{j}] is not an object")
                    continue
                for key in ("id", "category_id"):
                    value = json.dumps(seg.get(key))[:40]
                    if not _is_int(seg.get(key)):
                        wrong.append(f"segments_info[{j}].{key} {value} is not an integer" if key in seg
                                     else f"segments_info[{j}] has no {key}")
        problems += [f"{path}: {label}: {w}" for w in wrong]
        if _is_int(image_id) and not wrong:
            good.append(ann)
    return good, problems


def _stem(file_name: str) -> str:
    return Path(file_name).stem


def pair_annotations(gt: Mapping[str, Any], pred: Mapping[str, Any], gt_dir: Path, pred_dir: Path,
                     gt_json: str | os.PathLike[str], pred_json: str | os.PathLike[str]
                     ) -> tuple[list[Task], list[str], int]:
    """Pair each prediction with its ground-truth image: the GT image of the same id when the
    annotations' file-name stems agree, else the GT image of the same stem (a re-pairing: ids
    numbered another way). Returns (tasks, problems, re-pairings); a problem is a malformed
    annotation, a prediction no GT image has the stem of, an image with two predictions, or a
    GT image without one, each a line naming the file."""
    gt_anns, problems = check_annotations(gt, gt_json)
    preds, pred_problems = check_annotations(pred, pred_json)
    problems += pred_problems
    if problems:
        return [], problems, 0
    by_id = {g["image_id"]: g for g in gt_anns}
    by_stem: dict[str, dict | None] = {}
    for g in gt_anns:  # a stem two GT images share pairs nothing
        by_stem[_stem(g["file_name"])] = None if _stem(g["file_name"]) in by_stem else g
    paired: dict[int, list[dict]] = {}
    repaired = 0
    for p in preds:
        g = by_id.get(p["image_id"])
        if g is None or _stem(g["file_name"]) != _stem(p["file_name"]):
            g = by_stem.get(_stem(p["file_name"]))
            if g is None:
                problems.append(f"{pred_json}: the prediction {p['file_name']} (image id {p['image_id']}) "
                                "is of no ground-truth image: none has this file name or this id with it")
                continue
            repaired += 1
        paired.setdefault(g["image_id"], []).append(p)
    tasks = []
    for g in gt_anns:
        found = paired.get(g["image_id"], [])
        if not found:
            problems.append(f"{pred_json}: no prediction for image id {g['image_id']} ({g['file_name']})")
        elif len(found) > 1:
            names = ", ".join(f"{p['file_name']} (image id {p['image_id']})" for p in found)
            problems.append(f"{pred_json}: {len(found)} predictions for image id {g['image_id']} "
                            f"({g['file_name']}): {names}")
        else:
            p = found[0]
            tasks.append((str(gt_dir / g["file_name"]), g["segments_info"],
                          str(pred_dir / p["file_name"]), p["segments_info"]))
    return tasks, problems, repaired


def _png_dir(json_path: str | os.PathLike[str]) -> Path:
    """The API's convention, NAME.json beside NAME/; else the JSON's own folder (predict's)."""
    beside = Path(str(json_path).removesuffix(".json"))
    return beside if beside.is_dir() or not Path(json_path).is_file() else Path(json_path).parent


def _chunks(tasks: list[Task], size: int, categories: frozenset[int]
            ) -> Iterator[tuple[list[Task], frozenset[int]]]:
    for i in range(0, len(tasks), size):
        yield tasks[i: i + size], categories


def evaluate_files(gt_json: str | os.PathLike[str], gt_dir: str | os.PathLike[str] | None,
                   pred_json: str | os.PathLike[str], pred_dir: str | os.PathLike[str] | None,
                   workers: int = 2, chunk_size: int = CHUNK_SIZE, progress: bool = False) -> dict[str, Any]:
    """PQ/SQ/RQ of a COCO-panoptic prediction against its ground truth.

    Each prediction is paired with the GT image of its id when their file-name stems agree,
    else with the GT image of its stem (counted in "repaired"); see `pair_annotations`.
    gt_dir / pred_dir default to the JSON path without ".json" (the API's convention), or
    the JSON's folder when there is no such folder (what `predict` writes).
    workers: processes decoding and scoring (0 or 1: in this process).
    Returns the API's results dict (All/Things/Stuff pq, sq, rq, n; per_class) plus
    "images", the number of images scored, "repaired", the number paired by file name,
    "counts", {category_id: {tp, fp, fn, iou}} for the
    categories with any GT or prediction, and "categories" (id, name, isthing).
    Raises EvaluationError listing every problem.
    """
    gt_dir = Path(gt_dir) if gt_dir is not None else _png_dir(gt_json)
    pred_dir = Path(pred_dir) if pred_dir is not None else _png_dir(pred_json)
    gt = load_json(gt_json, "ground-truth")
    pred = load_json(pred_json, "prediction")
    categories = gt.get("categories") or []
    if not categories:
        raise EvaluationError([f"{gt_json}: no 'categories'"])
    for folder, what in ((gt_dir, "ground-truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise EvaluationError([f"{folder}: {what} PNG folder missing"])
    tasks, problems, repaired = pair_annotations(gt, pred, gt_dir, pred_dir, gt_json, pred_json)
    cat_ids = frozenset(int(c["id"]) for c in categories)

    stat = PQStat()
    chunks = _chunks(tasks, max(1, chunk_size), cat_ids)
    if workers <= 1 or len(tasks) <= chunk_size:
        results: Iterator = map(_score_chunk, chunks)
        pool = None
    else:  # before the progress bar, whose monitor thread would rule out forking
        # every image allocates several ~1 MB buffers (inflated rows, pixels, id maps): kept in
        # the heap for reuse, they cost no page faults (~40 % of a worker's time otherwise)
        pool = pool_context().Pool(min(workers, -(-len(tasks) // chunk_size)), initializer=keep_freed_memory)
        results = pool.imap(_score_chunk, chunks)  # ordered: the float sums are reproducible
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="PQ", unit="img", leave=False)
    try:
        for s, p, n in results:
            stat += s
            problems += p
            if bar is not None:
                bar.update(n)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    if problems:
        raise EvaluationError(problems)
    return summarize(stat, categories, len(tasks), repaired)


def sum_in_chunks(stats: Sequence[PQStat | None], chunk_size: int = CHUNK_SIZE) -> PQStat:
    """The total of per-image statistics (None: not scored), added as `evaluate_files` adds
    them (chunk by chunk), so the figures are exactly its figures."""
    total = PQStat()
    for start in range(0, len(stats), chunk_size):
        chunk = PQStat()
        for s in stats[start : start + chunk_size]:
            if s is not None:
                chunk += s
        total += chunk
    return total


def summarize(stat: PQStat, categories: Sequence[Mapping[str, Any]], images: int, repaired: int
              ) -> dict[str, Any]:
    """`evaluate_files`' results dict of a total `stat` over `images` images."""
    out = pq_results(stat, categories)
    out["images"] = images
    out["repaired"] = repaired
    out["counts"] = {cat: {"tp": s.tp, "fp": s.fp, "fn": s.fn, "iou": s.iou}
                     for cat, s in sorted(stat.per_class.items()) if s.tp + s.fp + s.fn}
    out["categories"] = [{"id": c["id"], "name": c.get("name", str(c["id"])), "isthing": c.get("isthing", 0)}
                         for c in categories]
    return out


def format_table(results: Mapping[str, Any], categories: Sequence[Mapping[str, Any]] | None = None,
                 per_class: bool = False) -> str:
    """The API's PQ/SQ/RQ/N table (in %) for All, Things, Stuff; with `per_class`, a row per
    category (named from `categories`) with GT or predictions."""
    lines = [f"{'':10s}| {'PQ':>5s}  {'SQ':>5s}  {'RQ':>5s} {'N':>5s}", "-" * 38]
    for name in ("All", "Things", "Stuff"):
        r = results[name]
        pq, sq, rq = (100 * r[m] for m in ("pq", "sq", "rq"))
        lines.append(f"{name:10s}| {pq:5.1f}  {sq:5.1f}  {rq:5.1f} {r['n']:5d}")
    if per_class:
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in categories or []}
        kinds = {int(c["id"]): "thing" if c.get("isthing") == 1 else "stuff" for c in categories or []}
        counts = {int(k): v for k, v in results.get("counts", {}).items()}
        head = f"{'class':24s} {'kind':5s} | " + "  ".join(f"{m:>5s}" for m in ("PQ", "SQ", "RQ")) + \
            "".join(f" {m:>5s}" for m in ("TP", "FP", "FN"))
        lines += ["", head, "-" * len(head)]
        for cat, r in results["per_class"].items():
            c = counts.get(int(cat))
            if c is None:  # no GT and no prediction: not in the averages either
                continue
            pq, sq, rq = (100 * r[m] for m in ("pq", "sq", "rq"))
            lines.append(f"{names.get(int(cat), str(cat))[:24]:24s} {kinds.get(int(cat), '?'):5s} | "
                         f"{pq:5.1f}  {sq:5.1f}  {rq:5.1f} {c['tp']:5d} {c['fp']:5d} {c['fn']:5d}")
    return "\n".join(lines)
