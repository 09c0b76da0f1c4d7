"""The first images of the bundled validation set, copied out as a COCO-panoptic dataset of their own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from panoptic_detr.demo import DEMO_VAL


def demo_val_subset(data: Path, n: int) -> Path:
    """data/{panoptic.json, images/, panoptic/} of the first `n` bundled validation images."""
    gt = json.loads((DEMO_VAL / "panoptic.json").read_text())
    gt["images"] = gt["images"][:n]
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in {im["id"] for im in gt["images"]}]
    for folder, key in (("images", "images"), ("panoptic", "annotations")):
        (data / folder).mkdir(parents=True)
        for entry in gt[key]:
            shutil.copy(DEMO_VAL / folder / entry["file_name"], data / folder)
    (data / "panoptic.json").write_text(json.dumps(gt))
    return data
