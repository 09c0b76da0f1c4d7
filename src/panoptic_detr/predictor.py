"""Image in, `PanopticResult` out: decode, DETR preprocessing, the network, post-processing.

`Predictor` is the Python API. `predict_files` is what `panoptic-detr predict` runs: many
files, folders and globs in, COCO panoptic PNGs, overlays and one `predictions.json` out,
with bad inputs reported one line each while the rest goes on.

The network runs in two steps: `detect` for every query, then the mask head only for the
queries the class threshold keeps (it is per query, so their masks are the same as in a full
forward); `model.inference.segment` holds that path. On a GPU a batch runs as one padded
tensor, and post-processing crops each image's own region of the masks, so a result does not
depend on the other images of its batch beyond what the network sees. On a CPU each image of a
batch runs alone, at its own size: batching saves no arithmetic there, its 4x larger
activations cost page faults (benchmarks/RESULTS.md), and each result is then exactly the
image's own.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data.files import atomic_write, write_json, write_png
from .data.images import ImageError, load_image, preprocess
from .loading import Pretrained, WeightsError, load_pretrained
from .model import DETRPanoptic
from .model.detr import MaskChunk
from .model.inference import segment
from .model.postprocess import StuffMerge
from .structures import Categories, PaddedBatch, PanopticResult
from .viz import overlay

ImageInput = np.ndarray | str | os.PathLike[str]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""Network precisions of `Predictor` (post-processing is float32 either way)."""


def _network_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]

DEFAULTS = {"threshold": 0.85, "size": 800, "max_size": 1333}
"""The original DETR's inference settings, used where neither caller nor checkpoint says."""


class Predictor:
    """Panoptic segmentation of RGB images with a DETR model.

    weights: "demo", a preset name of the original COCO checkpoints or a checkpoint path
    (see `loading.load_pretrained`), or a loaded `Pretrained`; preset: the architecture for
    files that do not say.
    threshold, size / max_size (DETR's resize: shortest side, longest side cap): None takes the
    checkpoint's recommendation, else `DEFAULTS`.
    stuff_merge: see `panoptic_postprocess`; mask_chunk: queries per mask-head call (an int,
    None: all at once, "auto": see `model.detr.MASK_CHUNK_BYTES`).
    prepare: `model.prepare_for_inference()` (frozen BN folded, channels-last: faster on CPUs;
    same outputs up to float32 rounding, see the model's parity tests, so scores may
    differ in the last digits from an unprepared model's). Changes a passed-in model in place.
    dtype: "float32" (the default: the checkpoint's answers) or "bfloat16": the network runs in
    bfloat16, about 2x faster on CPUs with AVX512-BF16 or AMX and on GPUs; scores and masks are
    then bfloat16-rounded, so a pixel or a borderline query can come out differently
    (benchmarks/RESULTS.md measures how often). Post-processing stays float32.
    batched_network: run a batch through the network as one padded tensor (True) or each
    image alone (False); None: together on GPUs, alone on CPUs (see the module docstring).
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | Pretrained = "demo",
        preset: str | None = None,
        threshold: float | None = None,
        device: str | torch.device = "cpu",
        size: int | None = None,
        max_size: int | None = None,
        batch_size: int = 1,
        stuff_merge: StuffMerge = "original",
        mask_chunk: MaskChunk = "auto",
        prepare: bool = False,
        dtype: str = "float32",
        batched_network: bool | None = None,
    ):
        if isinstance(weights, Pretrained):  # an already loaded model (changed if prepare)
            self._setup(weights, threshold, size, max_size, batch_size, stuff_merge, mask_chunk, prepare,
                        dtype, batched_network)
            return
        _network_dtype(dtype)  # a bad name fails before anything is loaded
        pretrained = load_pretrained(weights, preset=preset, device=device)
        self._setup(pretrained, threshold, size, max_size, batch_size, stuff_merge, mask_chunk, prepare,
                    dtype, batched_network)

    @classmethod
    def from_pretrained(cls, pretrained: Pretrained, **kwargs: Any) -> Predictor:
        """A predictor around an already loaded model (tests, notebooks, training code)."""
        self = cls.__new__(cls)
        self._setup(pretrained, **kwargs)
        return self

    def _setup(self, pretrained: Pretrained, threshold: float | None = None, size: int | None = None,
               max_size: int | None = None, batch_size: int = 1, stuff_merge: StuffMerge = "original",
               mask_chunk: MaskChunk = "auto", prepare: bool = False, dtype: str = "float32",
               batched_network: bool | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        network_dtype = _network_dtype(dtype)
        self.pretrained = pretrained
        self.model: DETRPanoptic = pretrained.model.eval()
        if prepare:  # BN folded into the convolutions, channels-last: faster convolutions
            self.model.prepare_for_inference()
        if network_dtype != torch.float32:  # after folding BN, which is best done in float32
            self.model.to(network_dtype)
        self.categories: Categories = pretrained.categories
        # unset options: what the checkpoint recommends (a model trained on small images should
        # see small images), else the original DETR's settings
        advice = {**DEFAULTS, **getattr(pretrained, "inference", {})}
        self.threshold = float(advice["threshold"] if threshold is None else threshold)
        self.size = int(advice["size"] if size is None else size)
        self.max_size = int(advice["max_size"] if max_size is None else max_size)
        self.batch_size, self.stuff_merge, self.mask_chunk = batch_size, stuff_merge, mask_chunk
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.batched_network = self.device.type != "cpu" if batched_network is None else batched_network
        self.is_thing = self.categories.thing_mask(self.device)

    def predict(self, image: ImageInput) -> PanopticResult:
        """One image (an [H, W, 3] uint8 RGB array or a file path) -> its result at [H, W]."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[PanopticResult]:
        """Many images, run `batch_size` at a time; results in input order, each at its
        image's size. A bad file raises `ImageError` (see `predict_files` to go on instead)."""
        out: list[PanopticResult] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [_as_array(im) for im in images[start : start + self.batch_size]]
            out.extend(self.predict_arrays(chunk))
        return out

    @torch.inference_mode()
    def predict_arrays(self, arrays: Sequence[np.ndarray]) -> list[PanopticResult]:
        """One padded batch of decoded [H, W, 3] uint8 images."""
        if not arrays:
            return []
        inputs = [preprocess(a, self.size, self.max_size) for a in arrays]
        batch = PaddedBatch.from_images(inputs).to(self.device, self.dtype)
        done = segment(self.model, batch, [a.shape[:2] for a in arrays], self.is_thing,
                       threshold=self.threshold, stuff_merge=self.stuff_merge, mask_chunk=self.mask_chunk,
                       together=self.batched_network)
        return [PanopticResult(s.result.id_map.cpu(), s.result.segments_info) for s in done]


def _as_array(image: ImageInput) -> np.ndarray:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"an image array must be [H, W, 3] uint8 RGB, got {image.dtype} {image.shape}")
        return image
    return load_image(image)


# -- many files in, files out --------------------------------------------------------------

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
OVERLAY_MAX_SIDE = 2048
"""Overlays of larger images are drawn on a copy scaled down to this longest side."""


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


def _output_stems(files: list[Path]) -> list[str]:
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


def _write_panoptic_png(path: Path, id_map: torch.Tensor, overwrite: bool) -> None:
    """[H, W] ids (< 2^24) as a COCO panoptic PNG (id = R + 256 G + 256^2 B). The three are the
    low bytes of the little-endian int32 id, so Pillow reads the int32 buffer as RGBX directly:
    no int64 temporaries, which matter at 10^8 pixels."""
    h, w = id_map.shape
    ids = np.ascontiguousarray(id_map.to(torch.int32).numpy(), dtype="<i4")
    img = Image.frombytes("RGB", (w, h), memoryview(ids).cast("B"), "raw", "RGBX")
    atomic_write(path, lambda f: img.save(f, format="PNG", compress_level=1), overwrite=overwrite)


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


def save_result(result: PanopticResult, image: np.ndarray, file: Path, stem: str, out: Path,
                categories: Categories, overwrite: bool) -> None:
    """out/<stem>.png and out/<stem>_overlay.png, then out/records/<stem>.json, the image's
    COCO entry, whose presence marks the image as finished."""
    _write_panoptic_png(out / f"{stem}.png", result.id_map, overwrite)
    write_png(out / f"{stem}_overlay.png", _overlay_image(image, result, categories), overwrite=overwrite)
    write_json(out / "records" / f"{stem}.json", _record(result, categories, file, stem), overwrite=overwrite)


def predict_files(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str] = "demo",
    preset: str | None = None,
    threshold: float | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    size: int | None = None,
    max_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    predictor: Predictor | None = None,
    prepare: bool = True,
    stuff_merge: StuffMerge = "original",
    dtype: str = "float32",
) -> RunSummary:
    """Predict every image named by `inputs` into `out_dir`:
    <stem>.png (COCO panoptic), <stem>_overlay.png, records/<stem>.json (the image's entry,
    written last: it marks the image done) and predictions.json (COCO panoptic, all images
    done so far in this folder for these inputs). Finished images are skipped unless
    `overwrite`; nothing existing is replaced without it. Problems are collected, one line
    each, in the summary; a weights problem raises `WeightsError` before any image is read.
    prepare: see `Predictor` (on here: a command-line run wants speed).
    """
    dev = torch.device(device)  # a malformed name raises ValueError/RuntimeError here
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is available here; use --device cpu")
    out = Path(out_dir)
    summary = RunSummary(out_dir=out)
    files, summary.failed = expand_inputs(inputs)
    if predictor is None:
        predictor = Predictor(weights, preset=preset, threshold=threshold, device=device, size=size,
                              max_size=max_size, batch_size=batch_size, prepare=prepare,
                              stuff_merge=stuff_merge, dtype=dtype)
    stems = _output_stems(files)
    todo = []
    for f, stem in zip(files, stems, strict=True):
        if not overwrite and (out / "records" / f"{stem}.json").is_file():
            summary.skipped.append(str(f))
        else:
            todo.append((f, stem))
    out.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="img", disable=not progress or not todo, file=sys.stderr)
    for start in range(0, len(todo), predictor.batch_size):
        loaded = []
        for f, stem in todo[start : start + predictor.batch_size]:
            try:
                loaded.append((f, stem, load_image(f)))
            except ImageError as e:
                summary.failed.append(str(e))
                bar.update(1)
        for (f, stem, image), result in _predict_isolating_failures(predictor, loaded, summary):
            try:
                save_result(result, image, f, stem, out, predictor.categories, overwrite)
                summary.done.append(str(f))
            except (OSError, FileExistsError) as e:
                summary.failed.append(f"{f}: could not write its results ({e})")
            bar.update(1)
        bar.set_postfix(failed=len(summary.failed), refresh=False)
    bar.close()
    _write_predictions(out, stems, predictor.categories)
    return summary


def _predict_isolating_failures(predictor: Predictor, loaded: list, summary: RunSummary):
    """(item, result) pairs; if the batch fails, image by image, so one bad image costs only itself."""
    if not loaded:
        return []
    try:
        return list(zip(loaded, predictor.predict_arrays([im for _, _, im in loaded]), strict=True))
    except (RuntimeError, ValueError, MemoryError) as e:
        if len(loaded) == 1:
            why = (str(e).splitlines() or [""])[0][:200]
            summary.failed.append(f"{loaded[0][0]}: prediction failed ({type(e).__name__}: {why})")
            return []
    pairs = []
    for item in loaded:
        pairs.extend(_predict_isolating_failures(predictor, [item], summary))
    return pairs


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


__all__ = ["Predictor", "RunSummary", "WeightsError", "expand_inputs", "predict_files", "save_result"]
