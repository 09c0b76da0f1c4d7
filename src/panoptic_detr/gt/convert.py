"""Dataset converters (files): panoptic -> semantic PNGs, panoptic -> COCO instances.

The reverse, instances -> panoptic, is `build_gt` without a source (same overlap rule).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..data.files import write_json, write_png
from ..data.panoptic_png import read_panoptic_png
from .instances import panoptic_to_instances, panoptic_to_semantic


def read_panoptic_json(panoptic_json: str | Path, png_dir: str | Path | None = None
                       ) -> tuple[dict[str, Any], Path]:
    """The COCO panoptic JSON and its PNG folder (default: the JSON's path without suffix,
    else `panoptic/` beside it)."""
    path = Path(panoptic_json)
    data = json.loads(path.read_text())
    if png_dir is None:
        png_dir = next((d for d in (path.with_suffix(""), path.parent / "panoptic") if d.is_dir()),
                       path.with_suffix(""))
    return data, Path(png_dir)


def panoptic_to_semantic_files(
    panoptic_json: str | Path, out_dir: str | Path, png_dir: str | Path | None = None,
    things: bool = True, overwrite: bool = False, progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[int, int]:
    """Write OUT/<stem>.png (class id per pixel, void 255; 16-bit when ids reach 255) and
    OUT/labelmap.json (the categories). `things=False` leaves thing pixels void and lists only
    stuff in the label map. Unreadable PNGs are logged and skipped. Returns (written, failed)."""
    log = log or _log
    data, png_dir = read_panoptic_json(panoptic_json, png_dir)
    out = Path(out_dir)
    isthing = {int(c["id"]): bool(c.get("isthing", 1)) for c in data["categories"]}
    cats = [c for c in data["categories"] if things or not c.get("isthing", 1)]
    write_json(out / "labelmap.json", {"categories": cats}, overwrite=overwrite, indent=1)
    failed = 0
    for ann in tqdm(data["annotations"], desc="panoptic-to-semantic", disable=not progress):
        segs = [s for s in ann["segments_info"] if things or not isthing.get(int(s["category_id"]), True)]
        try:
            id_map = read_panoptic_png(png_dir / ann["file_name"])
        except (OSError, ValueError) as e:
            log(f"{png_dir / ann['file_name']}: cannot read ({e}), skipped")
            failed += 1
            continue
        write_png(out / f"{Path(ann['file_name']).stem}.png", panoptic_to_semantic(id_map, segs),
                  overwrite=overwrite)
    return len(data["annotations"]) - failed, failed


def panoptic_to_instances_file(
    panoptic_json: str | Path, out_json: str | Path, png_dir: str | Path | None = None,
    things_only: bool = True, overwrite: bool = False, progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[int, int]:
    """Write COCO instance annotations (compressed RLE) of the dataset's segments (things only
    by default). Images whose PNG cannot be read are logged and left out.
    Returns (annotations written, images failed)."""
    log = log or _log
    data, png_dir = read_panoptic_json(panoptic_json, png_dir)
    isthing = {int(c["id"]): int(bool(c.get("isthing", 1))) for c in data["categories"]}
    anns: list[dict[str, Any]] = []
    failed: set[Any] = set()
    for ann in tqdm(data["annotations"], desc="panoptic-to-instances", disable=not progress):
        segs = [{**s, "isthing": isthing.get(int(s["category_id"]), 1)} for s in ann["segments_info"]]
        try:
            id_map = read_panoptic_png(png_dir / ann["file_name"])
        except (OSError, ValueError) as e:
            log(f"{png_dir / ann['file_name']}: cannot read ({e}), image left out")
            failed.add(ann["image_id"])
            continue
        anns += panoptic_to_instances(id_map, segs, ann["image_id"], things_only, first_id=len(anns) + 1)
    cats = [c for c in data["categories"] if c.get("isthing", 1) or not things_only]
    images = [im for im in data["images"] if im["id"] not in failed]
    write_json(out_json, {"images": images, "annotations": anns, "categories": cats}, overwrite=overwrite)
    return len(anns), len(failed)


def _log(line: str) -> None:
    tqdm.write(line, file=sys.stderr)
