"""Scoring a model on a COCO-panoptic dataset: predict every image, write the predictions in
COCO-panoptic format (PNGs + JSON with the dataset's image ids and file names), then score
those files with `evaluate_files`, so what is scored is exactly what anyone can re-score.

    OUT/predictions/<GT png name>   COCO panoptic PNGs
    OUT/predictions.json            annotations (image_id, file_name, segments_info) + categories
    OUT/pq.json                     the results

`run_evaluation` is `panoptic-detr evaluate`: prediction files, or a model on a dataset. Under
torchrun a model evaluation is shared out: each process predicts and scores its share of the
images and only per-image statistics travel (docs/distributed_inference.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.files import write_bytes_inside, write_json
from ..data.layout import find_layout
from ..data.panoptic_png import write_panoptic_png
from ..parallel import DistInfo, Relay, all_gather_object, dist_info, process_group, rank_device, shard
from ..settings import InferenceSettings
from .evaluate import EvaluationError, evaluate_files, pair_annotations, score_pair, sum_in_chunks, summarize
from .pq import PQStat

if TYPE_CHECKING:  # the model's modules (and torch) load only for a model evaluation
    from ..predictor import Predictor

DEFAULT_OUT = Path("runs/evaluate")
"""Where a model evaluation writes its predictions and pq.json unless told."""


class UsageError(ValueError):
    """Options that name no evaluation, or two at once (the CLI prints its usage)."""


@dataclass
class _Dataset:
    """What a model evaluation reads of its dataset, and where it writes."""

    gt_json: Path
    gt_dir: Path
    image_dir: Path
    gt: dict[str, Any]
    todo: list[tuple[dict, dict]]
    """(image entry, GT annotation) of every annotated image, in the GT's order."""
    problems: list[str]
    pred_json: Path
    pred_dir: Path


def _read_dataset(data: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool) -> _Dataset:
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
    return _Dataset(gt_json, gt_dir, image_dir, gt, todo, problems, pred_json, pred_dir)


def _write_prediction(pred_dir: Path, info: dict, ann: dict, result: Any) -> dict[str, Any]:
    """pred_dir/<the GT PNG's name>; returns the prediction's annotation."""
    write_panoptic_png(pred_dir / ann["file_name"], result.id_map, overwrite=True, fsync=False)
    segments = [{"id": int(s["id"]), "category_id": int(s["category_id"]), "iscrowd": 0,
                 "area": int(s["area"]), "bbox": [int(v) for v in s["bbox"]],
                 "score": round(float(s["score"]), 5)} for s in result.segments_info]
    return {"image_id": info["id"], "file_name": ann["file_name"], "segments_info": segments}


def write_model_predictions(predictor: Predictor, data: str | os.PathLike[str], out: str | os.PathLike[str],
                            overwrite: bool = False, progress: bool = True, loader_workers: int = 0
                            ) -> tuple[Path, Path, Path, Path]:
    """Run `predictor` (a `predictor.Predictor`) over the images of dataset `data` (a root or
    its JSON, see `CocoPanoptic`), `predictor.batch_size` images at a time, into `out`.

    Returns (gt_json, gt_png_dir, pred_json, pred_png_dir). Raises EvaluationError listing
    the images that could not be read or predicted (the others are written), and
    FileExistsError if `out` holds predictions and not `overwrite`.
    """
    from ..runner import run_images

    d = _read_dataset(data, out, overwrite)
    annotations: list[dict[str, Any]] = []

    def write(item: tuple[dict, dict], image: Any, result: Any) -> None:
        annotations.append(_write_prediction(d.pred_dir, *item, result))

    items = [(d.image_dir / info["file_name"], (info, ann)) for info, ann in d.todo]
    run_images(predictor, items, write, failed=d.problems, progress=progress, desc="predict",
               loader_workers=loader_workers)
    categories = predictor.categories.to_json()
    write_json(d.pred_json, {"annotations": annotations, "categories": categories}, overwrite=True)
    if d.problems:
        raise EvaluationError(d.problems)
    return d.gt_json, d.gt_dir, d.pred_json, d.pred_dir


def evaluate_model(predictor: Predictor, data: str | os.PathLike[str], out: str | os.PathLike[str],
                   workers: int = 2, overwrite: bool = False, progress: bool = True,
                   group: DistInfo | None = None, loader_workers: int = 0, gather_outputs: bool = False
                   ) -> dict[str, Any]:
    """Predict dataset `data` into `out` (see `write_model_predictions`) and score it with
    `evaluate_files`. Returns its results dict, plus "predictions" (the JSON's path).

    group: the process group of a torchrun run (`parallel.init_distributed`); each process
    then predicts and scores its share of the images (see `_evaluate_shared`; gather_outputs:
    the others send their PNGs to rank 0, the only one that writes `out`). loader_workers:
    processes decoding the images (see `runner.run_images`)."""
    if group is not None and group.enabled:
        return _evaluate_shared(predictor, data, out, group, overwrite, progress, loader_workers,
                                gather_outputs)
    gt_json, gt_dir, pred_json, pred_dir = write_model_predictions(predictor, data, out, overwrite, progress,
                                                                   loader_workers)
    results = evaluate_files(gt_json, gt_dir, pred_json, pred_dir, workers=workers, progress=progress)
    results["predictions"] = str(pred_json)
    return results


def _evaluate_shared(predictor: Predictor, data: str | os.PathLike[str], out: str | os.PathLike[str],
                     group: DistInfo, overwrite: bool, progress: bool, loader_workers: int,
                     gather_outputs: bool = False) -> dict[str, Any]:
    """`evaluate_model` in many processes: each predicts its share of the images, writes their
    PNGs and scores each against its GT PNG as soon as it is written (`score_pair`); only the
    annotations and the per-image statistics are gathered, never a PNG. Every process gets the
    results, exactly `evaluate_files`' figures (the same statistics, added in the same order);
    rank 0 writes predictions.json. gather_outputs: the others write each PNG to a scratch
    folder of their own, score it there and send its bytes to rank 0 (`parallel.Relay`), which
    writes it into `out`."""
    from ..runner import run_images

    d = _read_dataset(data, out, overwrite)
    if not d.gt_dir.is_dir():
        raise EvaluationError([f"{d.gt_dir}: ground-truth PNG folder missing"])
    categories = d.gt.get("categories") or []
    cat_ids = frozenset(int(c["id"]) for c in categories)
    scored: list[tuple[int, dict[str, Any], PQStat | None, list[str]]] = []

    def write(item: tuple[int, dict, dict], image: Any, result: Any) -> None:
        i, info, ann = item
        annotation = _write_prediction(pred_dir, info, ann, result)
        png = pred_dir / ann["file_name"]
        stat, lines = score_pair((str(d.gt_dir / ann["file_name"]), ann["segments_info"],
                                  str(png), annotation["segments_info"]), cat_ids)
        if sending:  # scored here; the file goes to rank 0 (a ConnectionError: this image fails)
            relay.send((ann["file_name"], png.read_bytes()))
            png.unlink()
        scored.append((i, annotation, stat, lines))

    items = [(d.image_dir / info["file_name"], (i, info, ann)) for i, (info, ann) in enumerate(d.todo)]
    failed: list[str] = []
    relay = Relay(group, lambda rank, png: _write_sent(d.pred_dir, *png, failed)) if gather_outputs else None
    sending = relay is not None and not group.is_main
    with tempfile.TemporaryDirectory(prefix="panoptic-detr-") if sending else nullcontext(d.pred_dir) as here:
        pred_dir = Path(here)
        run_images(predictor, shard(items, group), write, failed=failed, progress=progress and group.is_main,
                   desc=f"predict, rank 0 of {group.world_size}", loader_workers=loader_workers)
    if relay is not None:
        problem = relay.close()  # rank 0: every PNG sent is written
        if problem is not None and group.is_main:
            failed.append(f"{d.pred_dir}: {problem}")
    shares = all_gather_object((scored, failed), group)
    scored = sorted((x for share, _ in shares for x in share), key=lambda x: x[0])
    problems = d.problems + [line for _, lines in shares for line in lines]
    pred = {"annotations": [a for _, a, _, _ in scored], "categories": predictor.categories.to_json()}
    if group.is_main:
        write_json(d.pred_json, pred, overwrite=True)
    if problems:
        raise EvaluationError(problems)
    if not categories:
        raise EvaluationError([f"{d.gt_json}: no 'categories'"])
    # paired and checked as evaluate_files pairs and checks the files just written
    tasks, problems, repaired = pair_annotations(d.gt, pred, d.gt_dir, d.pred_dir, d.gt_json, d.pred_json)
    problems += [line for _, _, _, lines in scored for line in lines]
    if problems:
        raise EvaluationError(problems)
    by_png = {str(d.pred_dir / a["file_name"]): stat for _, a, stat, _ in scored}
    results = summarize(sum_in_chunks([by_png[pred_png] for _, _, pred_png, _ in tasks]), categories,
                        len(tasks), repaired)
    results["predictions"] = str(d.pred_json)
    return results


def _write_sent(pred_dir: Path, name: str, data: bytes, failed: list[str]) -> None:
    """Rank 0 of a gather_outputs run: another process's PNG into `pred_dir`, or one line."""
    try:
        write_bytes_inside(pred_dir, name, data, fsync=False)  # as _write_prediction writes
    except OSError as e:
        failed.append(f"{pred_dir / name}: could not write it ({e})")


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
    loader_workers: int | None = None,
    gather_outputs: bool = False,
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
    if not model_mode and loader_workers is not None:
        raise UsageError("--loader-workers applies to a model evaluation (--weights and --data) only")
    if not model_mode and gather_outputs:
        raise UsageError("--gather-outputs applies to a model evaluation (--weights and --data) only")
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
        with process_group(device) as group:  # under torchrun: each process its share of the images
            dev = rank_device(device, group)
            predictor = Predictor(weights, settings, preset=preset, device=dev, batch_size=batch_size,
                                  **given)
            results = evaluate_model(predictor, data, out, workers=workers, overwrite=overwrite,
                                     progress=progress, group=group, loader_workers=loader_workers or 0,
                                     gather_outputs=gather_outputs)
    else:
        results = evaluate_files(gt, gt_dir, pred, pred_dir, workers=workers, progress=progress)
    if output is not None and dist_info().is_main:
        write_json(output, results, overwrite=True, indent=1)
    return results, output
