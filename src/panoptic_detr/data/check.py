"""Validate a COCO-panoptic dataset and list every problem at once, with file and segment.

The checks are functions returning lists of `Problem`; `check_segments` and `check_json` are
pure (arrays and dicts in), `check_sample` and `check_dataset` read the files. Nothing stops
at the first problem: a user fixing a dataset wants the whole list in one run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..ops.panoptic import segment_stats
from .images import ImageError, load_image
from .layout import find_layout
from .panoptic_png import read_panoptic_png


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file it is in, the segment id if any, what is wrong."""

    file: str
    segment: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.segment is None else f"{self.file}: segment {self.segment}"
        return f"{where}: {self.message}"


def check_json(data: Any, json_file: str) -> list[Problem]:
    """Structure of the JSON: required keys, duplicate image / category / annotation ids,
    annotations without an image and images without an annotation."""
    if not isinstance(data, dict):
        return [Problem(json_file, None, "not a COCO-panoptic JSON object")]
    out = [Problem(json_file, None, f'no "{key}" list') for key in ("images", "annotations", "categories")
           if not isinstance(data.get(key), list)]
    if out:
        return out
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    for key, items, what in (("id", images, "image"), ("id", cats, "category"),
                             ("image_id", anns, "annotation for image")):
        missing = sum(1 for x in items if not isinstance(x, dict) or key not in x)
        if missing:
            out.append(Problem(json_file, None, f"{missing} {what} entries without {key!r}"))
        counts = Counter(x[key] for x in items if isinstance(x, dict) and key in x)
        out += [Problem(json_file, None, f"duplicate {what} id {k} ({n} times)")
                for k, n in counts.items() if n > 1]
    image_ids = {im["id"] for im in images if isinstance(im, dict) and "id" in im}
    ann_ids = {a["image_id"] for a in anns if isinstance(a, dict) and "image_id" in a}
    out += [Problem(json_file, None, f"annotation for image id {i}, which is not in images")
            for i in sorted(ann_ids - image_ids, key=str)]
    out += [Problem(json_file, None, f"image id {i} has no annotation")
            for i in sorted(image_ids - ann_ids, key=str)]
    for c in cats:
        if isinstance(c, dict) and "isthing" not in c:
            out.append(Problem(json_file, None, f"category {c.get('id')} has no isthing flag"))
    return out


def check_segments(
    id_map: np.ndarray, segments: list[dict[str, Any]], categories: dict[int, dict[str, Any]], file: str
) -> list[Problem]:
    """One image's PNG ids ([H, W] int64, 0 = void) against its `segments_info`: ids on one
    side only, duplicate and void ids, unknown categories, crowd on stuff, empty segments,
    wrong area and bbox."""
    out: list[Problem] = []
    listed = [s.get("id") for s in segments]
    for sid, n in Counter(listed).items():
        if n > 1:
            out.append(Problem(file, sid, f"duplicate segment id ({n} entries in segments_info)"))
    ok = [s for s in segments if isinstance(s.get("id"), int)]
    for s in segments:
        if not isinstance(s.get("id"), int):
            out.append(Problem(file, None, f"segment without an integer id: {s}"))
    unique = list(dict.fromkeys(s["id"] for s in ok))  # duplicates: reported above, checked once
    area, bbox = segment_stats(torch.from_numpy(id_map), torch.tensor(unique, dtype=torch.int64))
    stats = dict(zip(unique, zip(area.tolist(), bbox.tolist(), strict=True), strict=True))
    covered = sum(a for sid, (a, _) in stats.items() if sid != 0) + int((id_map == 0).sum())
    if covered != id_map.size:  # some pixels carry unlisted ids: find them (the slow path)
        rest = id_map[~np.isin(id_map, np.array([0, *unique], dtype=np.int64))]
        for sid, n in zip(*np.unique(rest, return_counts=True), strict=True):
            out.append(Problem(file, int(sid), f"id in the PNG ({n} pixels) but not in segments_info"))
    for s in ok:
        sid, cat = s["id"], s.get("category_id")
        if sid not in stats:
            continue
        a, b = stats.pop(sid)
        if sid == 0:
            out.append(Problem(file, sid, "segment id 0 is void in the PNG encoding"))
            continue
        if cat not in categories:
            out.append(Problem(file, sid, f"unknown category id {cat}"))
        elif s.get("iscrowd") and not categories[cat].get("isthing"):
            out.append(Problem(file, sid, f"iscrowd on stuff category {cat} ({categories[cat].get('name')})"))
        if s.get("area") == 0:
            out.append(Problem(file, sid, "empty segment (area 0)"))
        if a == 0:
            out.append(Problem(file, sid, "in segments_info but not in the PNG (no pixels)"))
            continue
        if "area" in s and s["area"] != a:
            out.append(Problem(file, sid, f"area is {s['area']} in the JSON but {a} pixels in the PNG"))
        if "bbox" in s and [round(v) for v in s["bbox"]] != b:
            out.append(Problem(file, sid, f"bbox is {s['bbox']} in the JSON but {b} in the PNG"))
    return out


def _image_size(path: Path, decode: bool) -> tuple[int, int]:
    """(h, w) of an image file; with `decode` the whole file is decoded (catches corruption)."""
    if decode:
        return load_image(path).shape[:2]
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise ImageError(path, "no such file") from None
    except OSError as e:
        raise ImageError(path, f"cannot read ({e})") from None


def check_sample(
    image_path: Path | None,
    png_path: Path,
    image_info: dict[str, Any],
    annotation: dict[str, Any],
    categories: dict[int, dict[str, Any]],
    decode_images: bool = True,
) -> list[Problem]:
    """Everything about one image: files present and readable, sizes agree (image, PNG,
    JSON height/width), and its segments (`check_segments`)."""
    out: list[Problem] = []
    json_hw = (image_info.get("height"), image_info.get("width"))
    image_hw = None
    if image_path is not None:
        try:
            image_hw = _image_size(image_path, decode_images)
        except ImageError as e:
            msg = "missing image" if e.problem == "no such file" else f"unreadable image: {e.problem}"
            out.append(Problem(str(image_path), None, msg))
        if image_hw is not None and json_hw != (None, None) and image_hw != json_hw:
            out.append(Problem(str(image_path), None, f"image is {image_hw[1]}x{image_hw[0]} but the "
                                                      f"JSON says {json_hw[1]}x{json_hw[0]}"))
    if not png_path.exists():
        return [*out, Problem(str(png_path), None, "missing panoptic PNG")]
    try:
        id_map = read_panoptic_png(png_path)
    except (OSError, ValueError, SyntaxError) as e:
        return [*out, Problem(str(png_path), None, f"unreadable panoptic PNG: {' '.join(str(e).split())}")]
    png_hw = tuple(id_map.shape)
    if image_hw is not None and png_hw != image_hw:
        out.append(Problem(str(png_path), None, f"PNG is {png_hw[1]}x{png_hw[0]} but its image "
                                                f"{image_path.name} is {image_hw[1]}x{image_hw[0]}"))
    elif json_hw != (None, None) and png_hw != json_hw:
        out.append(Problem(str(png_path), None, f"PNG is {png_hw[1]}x{png_hw[0]} but the JSON says "
                                                f"{json_hw[1]}x{json_hw[0]}"))
    segments = annotation.get("segments_info")
    if not isinstance(segments, list):
        return [*out, Problem(str(png_path), None, "annotation has no segments_info list")]
    return out + check_segments(id_map, segments, categories, str(png_path))


def check_dataset(
    root: str | Path | None = None,
    *,
    json_path: str | Path | None = None,
    png_dir: str | Path | None = None,
    image_dir: str | Path | None = None,
    decode_images: bool = True,
    progress: bool = True,
    workers: int = 1,
) -> tuple[list[Problem], dict[str, int]]:
    """Check a whole dataset (layout as `CocoPanoptic`), images in `workers` processes.
    Returns (problems in dataset order, counts of the images and segments looked at)."""
    stats = {"images": 0, "segments": 0}
    found: tuple[Path | None, ...] = (None, None, None)
    if root is not None:
        try:
            found = find_layout(root)
        except FileNotFoundError as e:
            if json_path is None:
                return [Problem(str(root), None, str(e).removeprefix(f"{root}: "))], stats
    json_path = Path(json_path) if json_path is not None else found[0]
    if json_path is None:
        raise ValueError("check_dataset needs a root or json_path")
    png_dir = Path(png_dir) if png_dir is not None else (found[1] or json_path.parent / json_path.stem)
    image_dir = Path(image_dir) if image_dir is not None else found[2]
    try:
        data = json.loads(Path(json_path).read_text())
    except (OSError, ValueError) as e:
        return [Problem(str(json_path), None, f"unreadable JSON: {' '.join(str(e).split())}")], stats
    problems = check_json(data, str(json_path))
    if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        return problems, stats
    if image_dir is None:
        problems.append(Problem(str(root or json_path), None, "no image folder found (images/ or the split)"))
    categories = {c["id"]: c for c in data["categories"] if isinstance(c, dict) and "id" in c}
    anns = {a["image_id"]: a for a in data["annotations"] if isinstance(a, dict) and "image_id" in a}
    jobs = []
    seen: set[Any] = set()
    for info in data["images"]:
        if not isinstance(info, dict) or info.get("id") not in anns or info["id"] in seen:
            continue  # reported by check_json
        seen.add(info["id"])
        ann = anns[info["id"]]
        name = info.get("file_name")
        image_path = image_dir / name if image_dir is not None and name else None
        if name is None:
            problems.append(Problem(str(json_path), None, f"image id {info['id']} has no file_name"))
        if "file_name" not in ann:
            msg = f"annotation of image {info['id']} has no file_name"
            problems.append(Problem(str(json_path), None, msg))
            continue
        jobs.append((image_path, png_dir / ann["file_name"], info, ann, categories, decode_images))
        stats["images"] += 1
        stats["segments"] += len(ann.get("segments_info") or [])
    for found in _run(jobs, workers, progress):
        problems += found
    return problems, stats


def _check_job(job: tuple) -> list[Problem]:
    return check_sample(*job)


def _run(jobs: list[tuple], workers: int, progress: bool) -> Iterator[list[Problem]]:
    """`check_sample` over the jobs, in order, in this process or a pool of `workers`."""
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="check", unit="img", disable=not progress)
    if workers <= 1 or len(jobs) < 2:
        results: Iterable[list[Problem]] = map(_check_job, jobs)
        for r in results:
            bar.update()
            yield r
    else:
        from concurrent.futures import ProcessPoolExecutor

        from ..parallel import pool_context

        with ProcessPoolExecutor(workers, mp_context=pool_context()) as pool:
            for r in pool.map(_check_job, jobs, chunksize=8):
                bar.update()
                yield r
    bar.close()
