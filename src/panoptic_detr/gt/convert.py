"""Dataset converters (files): panoptic -> semantic PNGs, panoptic -> COCO instances.

The reverse, instances -> panoptic, is `build_gt` without a source (same overlap rule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..data.files import read_panoptic_png, write_json, write_png
from ..data.instances import panoptic_to_instances, panoptic_to_semantic


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
) -> int:
    """Write OUT/<stem>.png (class id per pixel, void 255; 16-bit when ids reach 255) and
    OUT/labelmap.json (the categories). `things=False` leaves thing pixels void and lists only
    stuff in the label map. Returns the number of images written."""
    data, png_dir = read_panoptic_json(panoptic_json, png_dir)
    out = Path(out_dir)
    isthing = {int(c["id"]): bool(c.get("isthing", 1)) for c in data["categories"]}
    cats = [c for c in data["categories"] if things or not c.get("isthing", 1)]
    write_json(out / "labelmap.json", {"categories": cats}, overwrite=overwrite, indent=1)
    for ann in tqdm(data["annotations"], desc="panoptic-to-semantic", disable=not progress):
        segs = [s for s in ann["segments_info"] if things or not isthing.get(int(s["category_id"]), True)]
        sem = panoptic_to_semantic(read_panoptic_png(png_dir / ann["file_name"]), segs)
        write_png(out / f"{Path(ann['file_name']).stem}.png", sem, overwrite=overwrite)
    return len(data["annotations"])


def panoptic_to_instances_file(
    panoptic_json: str | Path, out_json: str | Path, png_dir: str | Path | None = None,
    things_only: bool = True, overwrite: bool = False, progress: bool = True,
) -> int:
    """Write COCO instance annotations (compressed RLE) of the dataset's segments (things only
    by default). Image file names come from the JSON's images. Returns the annotation count."""
    data, png_dir = read_panoptic_json(panoptic_json, png_dir)
    isthing = {int(c["id"]): int(bool(c.get("isthing", 1))) for c in data["categories"]}
    anns: list[dict[str, Any]] = []
    for ann in tqdm(data["annotations"], desc="panoptic-to-instances", disable=not progress):
        segs = [{**s, "isthing": isthing.get(int(s["category_id"]), 1)} for s in ann["segments_info"]]
        id_map = read_panoptic_png(png_dir / ann["file_name"])
        anns += panoptic_to_instances(id_map, segs, ann["image_id"], things_only, first_id=len(anns) + 1)
    cats = [c for c in data["categories"] if c.get("isthing", 1) or not things_only]
    write_json(out_json, {"images": data["images"], "annotations": anns, "categories": cats},
               overwrite=overwrite)
    return len(anns)
