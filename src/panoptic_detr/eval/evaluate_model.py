"""Scoring a model on a COCO-panoptic dataset: predict every image, write the predictions in
COCO-panoptic format (PNGs + JSON with the dataset's image ids and file names), then score
those files with `evaluate_files`, so what is scored is exactly what anyone can re-score.

    OUT/predictions/<GT png name>   COCO panoptic PNGs
    OUT/predictions.json            annotations (image_id, file_name, segments_info) + categories
    OUT/pq.json                     the results

`run_evaluation` is `panoptic-detr evaluate`: prediction files, or a model on a dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.files import write_json
from ..data.layout import find_layout
from ..data.panoptic_png import write_panoptic_png
from ..settings import InferenceSettings
from .evaluate import EvaluationError, evaluate_files

if TYPE_CHECKING:  # the model's modules (and torch) load only for a model evaluation
    from ..predictor import Predictor

DEFAULT_OUT = Path("runs/evaluate")
"""Where a model evaluation writes its predictions and pq.json unless told."""


class UsageError(ValueError):
    """Options that name no evaluation, or two at once (the CLI prints its usage)."""


def write_model_predictions(predictor: Predictor, data: str | os.PathLike[str], out: str | os.PathLike[str],
                            overwrite: bool = False, progress: bool = True) -> tuple[Path, Path, Path, Path]:
    """Run `predictor` (a `predictor.Predictor`) over the images of dataset `data` (a root or
    its JSON, see `CocoPanoptic`), `predictor.batch_size` images at a time, into `out`.

    Returns (gt_json, gt_png_dir, pred_json, pred_png_dir). Raises EvaluationError listing
    the images that could not be read or predicted (the others are written), and
    FileExistsError if `out` holds predictions and not `overwrite`.
    """
    from ..runner import run_images

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

    annotations: list[dict[str, Any]] = []

    def write(item: tuple[dict, dict], image: Any, result: Any) -> None:
        info, ann = item
        write_panoptic_png(pred_dir / ann["file_name"], result.id_map, overwrite=True, fsync=False)
        segments = [{"id": int(s["id"]), "category_id": int(s["category_id"]), "iscrowd": 0,
                     "area": int(s["area"]), "bbox": [int(v) for v in s["bbox"]],
                     "score": round(float(s["score"]), 5)} for s in result.segments_info]
        annotations.append({"image_id": info["id"], "file_name": ann["file_name"], "segments_info": segments})

    items = [(image_dir / info["file_name"], (info, ann)) for info, ann in todo]
    run_images(predictor, items, write, failed=problems, progress=progress, desc="predict")
    categories = predictor.categories.to_json()
    write_json(pred_json, {"annotations": annotations, "categories": categories}, overwrite=True)
    if problems:
        raise EvaluationError(problems)
    return gt_json, gt_dir, pred_json, pred_dir


def evaluate_model(predictor: Predictor, data: str | os.PathLike[str], out: str | os.PathLike[str],
                   workers: int = 2, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Predict dataset `data` into `out` (see `write_model_predictions`) and score it with
    `evaluate_files`. Returns its results dict, plus "predictions" (the JSON's path)."""
    gt_json, gt_dir, pred_json, pred_dir = write_model_predictions(predictor, data, out, overwrite, progress)
    results = evaluate_files(gt_json, gt_dir, pred_json, pred_dir, workers=workers, progress=progress)
    results["predictions"] = str(pred_json)
    return results


def run_evaluation(
    *,
    gt: str | os.PathLike[str] | None = None,
    gt_dir: str | os.PathLike[str] | None = None,
    pred: str | os.PathLike[str] | None = None,
    pred_dir: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    data: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    output: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    device: str = "cpu",
    batch_size: int = 1,
    settings: InferenceSettings | None = None,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    **given: Any,
) -> tuple[dict[str, Any], Path | None]:
    """Score prediction files (`gt` + `pred`, see `evaluate_files`) or a model on a dataset
    (`weights` + `data`: predictions into `out`, default `DEFAULT_OUT`, see `evaluate_model`).

    The model runs as `Predictor` runs it: settings / **given (threshold=, size=, ...) over the
    checkpoint's recommendation over DETR's defaults. The results are written as JSON to
    `output` (a model evaluation: default OUT/pq.json). Returns (results, the JSON's path or
    None). Raises UsageError (no mode, or both), SettingsError and WeightsError (before
    anything runs), FileExistsError (`output` or predictions exist, not `overwrite`),
    FileNotFoundError and EvaluationError (every problem found).
    """
    model_mode = weights is not None or data is not None
    if model_mode and (gt or pred):
        raise UsageError("give either --gt/--pred (prediction files) or --weights/--data (a model)")
    if model_mode and not (weights and data):
        raise UsageError("a model evaluation needs both --weights and --data")
    if not model_mode and not (gt and pred):
        raise UsageError("give --gt and --pred (prediction files), or --weights and --data (a model)")
    if not model_mode and (settings is not None or any(v is not None for v in given.values())):
        raise UsageError("inference settings apply to a model evaluation (--weights and --data) only")
    if model_mode:
        from ..predictor import Predictor, check_settings

        check_settings(given)  # bad settings fail before the dataset is looked at
        out = Path(out or DEFAULT_OUT)
        output = output or out / "pq.json"
    output = Path(output) if output is not None else None
    if output is not None and output.exists() and not overwrite:
        raise FileExistsError(f"{output}: exists (pass --overwrite to replace it)")
    if model_mode:
        find_layout(data)  # a wrong dataset path fails before the model loads
        predictor = Predictor(weights, settings, preset=preset, device=device, batch_size=batch_size, **given)
        results = evaluate_model(predictor, data, out, workers=workers, overwrite=overwrite,
                                 progress=progress)
    else:
        results = evaluate_files(gt, gt_dir, pred, pred_dir, workers=workers, progress=progress)
    if output is not None:
        write_json(output, results, overwrite=True, indent=1)
    return results, output
