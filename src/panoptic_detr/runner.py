"""Predicting many images: the one loop every command that runs a model over files uses.

`run_images` decodes, batches, predicts and hands each result to a writer; an image that
cannot be read, predicted or written costs only itself (one line naming it), the others go
on. `predict_files` is `panoptic-detr predict` on top of it: files, folders and globs in;
COCO panoptic PNGs, overlays, per-image records (resume: finished images are skipped) and
one predictions.json out. `eval.evaluate_model` writes a dataset's predictions with it.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from .data.files import write_json, write_png
from .data.images import ImageError, load_image
from .data.panoptic_png import write_panoptic_png
from .predictor import Predictor
from .settings import InferenceSettings
from .structures import Categories, PanopticResult
from .viz import overlay

T = TypeVar("T")
Writer = Callable[[T, np.ndarray, PanopticResult], None]
"""write(item, image [H, W, 3] uint8, result): store one image's result (raises OSError)."""

OVERLAY_MAX_SIDE = 2048
"""Overlays of larger images are drawn on a copy scaled down to this longest side."""


def run_images(predictor: Predictor, items: Sequence[tuple[Path, T]], write: Writer[T], *,
               failed: list[str], batch_size: int | None = None, progress: bool = True,
               desc: str | None = None) -> list[Path]:
    """Predict the image file of each (path, item) pair and `write(item, image, result)`, in
    order, `batch_size` images per network call (default: the predictor's).

    One line per image that could not be read, predicted or written is appended to `failed`;
    returns the paths written.
    """
    from tqdm import tqdm

    batch_size = batch_size or predictor.batch_size
    done: list[Path] = []
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress or not items, file=sys.stderr)
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        loaded = []
        for path, item in chunk:
            try:
                loaded.append((path, item, load_image(path)))
            except ImageError as e:
                failed.append(str(e))
        for (path, item, image), result in _predict_isolating_failures(predictor, loaded, failed):
            try:
                write(item, image, result)
                done.append(path)
            except OSError as e:
                failed.append(f"{path}: could not write its results ({e})")
        bar.update(len(chunk))
        bar.set_postfix(failed=len(failed), refresh=False)
    bar.close()
    return done


def _predict_isolating_failures(predictor: Predictor, loaded: list, failed: list[str]) -> list:
    """(loaded item, result) pairs; if the batch fails, image by image, so one bad image costs
    only itself."""
    if not loaded:
        return []
    try:
        return list(zip(loaded, predictor.predict_arrays([im for _, _, im in loaded]), strict=True))
    except (RuntimeError, ValueError, MemoryError) as e:
        if len(loaded) == 1:
            why = (str(e).splitlines() or [""])[0][:200]
            failed.append(f"{loaded[0][0]}: prediction failed ({type(e).__name__}: {why})")
            return []
    pairs = []
    for one in loaded:
        pairs.extend(_predict_isolating_failures(predictor, [one], failed))
    return pairs


# -- `panoptic-detr predict`: many files in, files out ---------------------------------------

@dataclass
class RunSummary:
    """What `predict_files` did."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """One line per problem: "PATH: what is wrong"."""
    out_dir: Path = Path(".")

    def line(self) -> str:
        n = len(self.done) + len(self.skipped) + len(self.failed)
        return (f"{n} inputs: {len(self.done)} predicted, {len(self.skipped)} already done (skipped), "
                f"{len(self.failed)} failed; results in {self.out_dir}")


def expand_inputs(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[str]]:
    """Files, folders (their files, not recursive, hidden ones left out) and globs -> (files in
    order without repeats, one problem line per input that names nothing)."""
    files: list[Path] = []
    problems: list[str] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not found:
                problems.append(f"{path}: empty folder, no images in it")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                problems.append(f"{item}: no file matches this pattern")
            files.extend(found)
        else:
            problems.append(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, problems


def output_stems(files: list[Path]) -> list[str]:
    """<stem> per file, made unique deterministically (a.jpg, a.png -> a, a_png)."""
    stems, used = [], set()
    for f in files:
        stem = f.stem
        if stem in used:
            stem = f"{f.stem}_{f.suffix.lstrip('.').lower() or 'file'}"
            n = 2
            while stem in used:
                stem, n = f"{f.stem}_{n}", n + 1
        used.add(stem)
        stems.append(stem)
    return stems


def predict_files(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str] = "demo",
    settings: InferenceSettings | None = None,
    *,
    preset: str | None = None,
    device: str = "cpu",
    batch_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    predictor: Predictor | None = None,
    **given: Any,
) -> RunSummary:
    """Predict every image named by `inputs` into `out_dir`:
    <stem>.png (COCO panoptic), <stem>_overlay.png, records/<stem>.json (the image's entry,
    written last: it marks the image done) and predictions.json (COCO panoptic, all images
    done so far in this folder for these inputs). Finished images are skipped unless
    `overwrite`; nothing existing is replaced without it. Problems are collected, one line
    each, in the summary; a weights problem raises `WeightsError` and a bad setting
    `SettingsError` before any image is read.

    settings / **given (threshold=, size=, ...): as `Predictor` takes them; or a ready
    `predictor` (its settings and batch size are used).
    """
    dev = torch.device(device)  # a malformed name raises ValueError/RuntimeError here
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is available here; use --device cpu")
    out = Path(out_dir)
    summary = RunSummary(out_dir=out)
    files, summary.failed = expand_inputs(inputs)
    if predictor is None:
        predictor = Predictor(weights, settings, preset=preset, device=device, batch_size=batch_size, **given)
    stems = output_stems(files)
    todo = []
    for f, stem in zip(files, stems, strict=True):
        if not overwrite and (out / "records" / f"{stem}.json").is_file():
            summary.skipped.append(str(f))
        else:
            todo.append((f, (f, stem)))
    out.mkdir(parents=True, exist_ok=True)

    def write(item: tuple[Path, str], image: np.ndarray, result: PanopticResult) -> None:
        save_result(result, image, item[0], item[1], out, predictor.categories, overwrite)

    done = run_images(predictor, todo, write, failed=summary.failed, progress=progress)
    summary.done = [str(f) for f in done]
    _write_predictions(out, stems, predictor.categories)
    return summary


def save_result(result: PanopticResult, image: np.ndarray, file: Path, stem: str, out: Path,
                categories: Categories, overwrite: bool) -> None:
    """out/<stem>.png and out/<stem>_overlay.png, then out/records/<stem>.json, the image's
    COCO entry, whose presence marks the image as finished."""
    write_panoptic_png(out / f"{stem}.png", result.id_map, overwrite=overwrite)
    write_png(out / f"{stem}_overlay.png", _overlay_image(image, result, categories), overwrite=overwrite)
    write_json(out / "records" / f"{stem}.json", _record(result, categories, file, stem), overwrite=overwrite)


def _overlay_image(image: np.ndarray, result: PanopticResult, categories: Categories) -> np.ndarray:
    h, w = image.shape[:2]
    scale = OVERLAY_MAX_SIDE / max(h, w)
    if scale < 1:  # a picture to look at: no need for 100 megapixels of it
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        image = np.asarray(Image.fromarray(image).resize((sw, sh), Image.Resampling.BILINEAR))
        ys = torch.div(torch.arange(sh) * h, sh, rounding_mode="floor")
        xs = torch.div(torch.arange(sw) * w, sw, rounding_mode="floor")
        result = PanopticResult(result.id_map[ys[:, None], xs[None, :]], result.segments_info)
    return overlay(image, result, categories)


def _record(result: PanopticResult, categories: Categories, file: Path, stem: str) -> dict[str, Any]:
    h, w = result.size
    segments = [
        {"id": s["id"], "category_id": s["category_id"], "name": categories.name(s["category_id"]),
         "isthing": int(bool(s["isthing"])), "iscrowd": 0, "area": s["area"], "bbox": s["bbox"],
         "score": round(float(s["score"]), 5)}
        for s in result.segments_info
    ]
    return {"image": {"file_name": file.name, "path": str(file), "height": h, "width": w},
            "annotation": {"file_name": f"{stem}.png", "segments_info": segments}}


def _write_predictions(out: Path, stems: list[str], categories: Categories) -> None:
    images, annotations = [], []
    for stem in stems:
        rec_path = out / "records" / f"{stem}.json"
        if not rec_path.is_file():
            continue
        rec = json.loads(rec_path.read_text())
        image_id = len(images) + 1
        images.append({"id": image_id, **rec["image"]})
        annotations.append({"image_id": image_id, **rec["annotation"]})
    doc = {"images": images, "annotations": annotations, "categories": categories.to_json()}
    write_json(out / "predictions.json", doc, indent=None)


__all__ = ["OVERLAY_MAX_SIDE", "RunSummary", "expand_inputs", "output_stems", "predict_files", "run_images",
           "save_result"]
