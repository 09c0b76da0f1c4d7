"""Where a COCO-panoptic dataset keeps its JSON, PNGs and images (no torch: `evaluate` on
files and `check` read layouts without loading a model).

    ROOT/panoptic.json + ROOT/panoptic/ + ROOT/images/          (what `synth` writes)
    ROOT/annotations/panoptic_val2017.json + .../panoptic_val2017/ + ROOT/val2017/   (COCO)
"""

from __future__ import annotations

from pathlib import Path


def _one(candidates: list[Path], what: str, root: Path) -> Path | None:
    found = [p for p in dict.fromkeys(candidates) if p.exists()]
    if len(found) > 1 and what == "JSON":
        names = ", ".join(str(p) for p in found)
        raise FileNotFoundError(f"{root}: several {what} candidates ({names}); pass json_path")
    return found[0] if found else None


def find_layout(root: str | Path) -> tuple[Path, Path, Path | None]:
    """(json_path, png_dir, image_dir or None) of a dataset root; see `data.coco_panoptic.CocoPanoptic`."""
    root = Path(root)
    if root.is_file():
        json_path, root = root, root.parent
    elif root.is_dir():
        cands = [root / "panoptic.json"]
        cands += sorted((root / "annotations").glob("panoptic_*.json"))
        if not any(p.exists() for p in cands):
            cands += sorted(root.glob("*.json"))  # a lone JSON, e.g. panoptic_examples.json
        found = _one(cands, "JSON", root)
        if found is None:
            raise FileNotFoundError(f"{root}: no panoptic.json, annotations/panoptic_*.json or *.json found")
        json_path = found
    else:
        raise FileNotFoundError(f"{root}: no such dataset file or folder")
    stem = json_path.stem  # panoptic_val2017 -> PNGs in panoptic_val2017/, images in val2017/
    split = stem.removeprefix("panoptic_") if stem.startswith("panoptic_") else None
    png_dir = _one([json_path.parent / stem, root / stem, root / "panoptic"], "PNG folder", root)
    if png_dir is None:
        raise FileNotFoundError(f"{json_path}: no PNG folder {stem}/ beside it or panoptic/ in {root}")
    image_cands = [root / "images"]
    if split:
        image_cands = [root / "images" / split, root / split, *image_cands]
    return json_path, png_dir, _one(image_cands, "image folder", root)
