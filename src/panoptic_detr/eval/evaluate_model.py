"""Scoring a model on a COCO-panoptic dataset: predict every image, write the predictions in
COCO-panoptic format (PNGs + JSON with the dataset's image ids and file names), then score
those files with `evaluate_files`, so what is scored is exactly what anyone can re-score.

    OUT/predictions/<GT png name>   COCO panoptic PNGs
    OUT/predictions.json            annotations (image_id, file_name, segments_info) + categories
    OUT/pq.json                     the results (written by the CLI)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..data.coco_panoptic import find_layout
from ..data.files import write_json, write_panoptic_png
from ..data.images import ImageError, load_image
from .evaluate import EvaluationError, evaluate_files


def write_model_predictions(predictor: Any, data: str | os.PathLike[str], out: str | os.PathLike[str],
                            overwrite: bool = False, progress: bool = True) -> tuple[Path, Path, Path, Path]:
    """Run `predictor` (a `predictor.Predictor`) over the images of dataset `data` (a root or
    its JSON, see `CocoPanoptic`), `predictor.batch_size` images at a time, into `out`.

    Returns (gt_json, gt_png_dir, pred_json, pred_png_dir). Raises EvaluationError listing
    the images that could not be read or predicted (the others are written), and
    FileExistsError if `out` holds predictions and not `overwrite`.
    """
    gt_json, gt_dir, image_dir = find_layout(data)
    if image_dir is None:
        raise EvaluationError([f"{data}: no image folder found (images/ or the split's folder)"])
    out = Path(out)
    pred_json, pred_dir = out / "predictions.json", out / "predictions"
    if pred_json.exists() and not overwrite:
        raise FileExistsError(f"{pred_json}: exists (pass --overwrite to predict again)")
    with open(gt_json) as f:
        gt = json.load(f)
    images = {im["id"]: im for im in gt.get("images", [])}
    todo = [(images[a["image_id"]], a) for a in gt["annotations"] if a["image_id"] in images]
    problems = [f"{gt_json}: annotation of image id {a['image_id']} has no entry in 'images'"
                for a in gt["annotations"] if a["image_id"] not in images]

    from tqdm import tqdm

    annotations = []
    bar = tqdm(total=len(todo), desc="predict", unit="img", disable=not progress, file=sys.stderr)
    for start in range(0, len(todo), predictor.batch_size):
        loaded = []
        for info, ann in todo[start: start + predictor.batch_size]:
            try:
                loaded.append((info, ann, load_image(image_dir / info["file_name"])))
            except ImageError as e:
                problems.append(str(e))
        if loaded:
            try:
                results = predictor.predict_arrays([im for _, _, im in loaded])
            except (RuntimeError, ValueError) as e:  # one line for the batch, the run goes on
                why = (str(e).splitlines() or [""])[0][:200]
                problems += [f"{image_dir / info['file_name']}: prediction failed ({why})"
                             for info, _, _ in loaded]
                results = []
            for (info, ann, _), result in zip(loaded, results, strict=False):
                write_panoptic_png(pred_dir / ann["file_name"], result.id_map, overwrite=True, fsync=False)
                segments = [{"id": int(s["id"]), "category_id": int(s["category_id"]), "iscrowd": 0,
                             "area": int(s["area"]), "bbox": [int(v) for v in s["bbox"]],
                             "score": round(float(s["score"]), 5)} for s in result.segments_info]
                annotations.append({"image_id": info["id"], "file_name": ann["file_name"],
                                    "segments_info": segments})
        bar.update(len(todo[start: start + predictor.batch_size]))
    bar.close()
    categories = predictor.categories.to_json()
    write_json(pred_json, {"annotations": annotations, "categories": categories}, overwrite=True)
    if problems:
        raise EvaluationError(problems)
    return gt_json, gt_dir, pred_json, pred_dir


def evaluate_model(predictor: Any, data: str | os.PathLike[str], out: str | os.PathLike[str],
                   workers: int = 2, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Predict dataset `data` into `out` (see `write_model_predictions`) and score it with
    `evaluate_files`. Returns its results dict, plus "predictions" (the JSON's path)."""
    gt_json, gt_dir, pred_json, pred_dir = write_model_predictions(predictor, data, out, overwrite, progress)
    results = evaluate_files(gt_json, gt_dir, pred_json, pred_dir, workers=workers, progress=progress)
    results["predictions"] = str(pred_json)
    return results
