"""Where the labels of unannotated pixels come from (`--stuff-from SOURCE`).

* `semantic:DIR[:LABELMAP.json|yaml]`: one PNG per image (`DIR/<image stem>.png`), pixel =
  class id, 255 = void. The label map lists the classes as COCO categories (`[{id, name,
  isthing}]`, or `{"categories": [...]}`, or `{id: name}` for stuff only); default
  `DIR/labelmap.json` or `DIR/labelmap.yaml`. Thing classes are split into connected
  components, one instance each (a semantic map cannot separate touching instances).
* `panoptic:JSON_OR_DIR`: a COCO-panoptic JSON with its PNG folder (`x.json` + `x/`), or a
  folder holding one JSON and that PNG folder. Images are matched by file name stem.
* `model:PRESET_OR_WEIGHTS[@THRESHOLD]`: a panoptic model run by this project
  (`predictor.Predictor`), e.g. `model:demo@0.7` or `model:runs/x/checkpoint.pt`.

Each source has `categories` (COCO dicts) and `labels(image_path, height, width) ->
(id_map [H, W] int64, segments_info)`; problems raise SourceError with one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage

from ..data.panoptic_png import read_panoptic_png
from ..settings import SettingsError


class SourceError(Exception):
    """A source that cannot label an image (or cannot be opened at all): one line."""


class Source(Protocol):
    spec: str
    """How the user named it, e.g. "semantic:labels/"."""
    categories: list[dict[str, Any]]
    """COCO category dicts (id, name, isthing) of the labels it gives."""

    def labels(self, image_path: Path, height: int, width: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(id_map [H, W] int64, 0 = void; segments_info with id, category_id[, iscrowd])."""
        ...


class SemanticSource:
    def __init__(self, folder: str | Path, labelmap: str | Path | None = None):
        self.folder = Path(folder)
        self.spec = f"semantic:{folder}"
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: semantic source folder not found")
        if labelmap is None:
            found = [p for p in (self.folder / "labelmap.json", self.folder / "labelmap.yaml") if p.exists()]
            if not found:
                raise SourceError(f"{self.folder}: no labelmap.json or labelmap.yaml; give one as "
                                  "semantic:DIR:LABELMAP")
            labelmap = found[0]
        self.categories = _read_labelmap(Path(labelmap))
        self._isthing = {int(c["id"]): bool(c["isthing"]) for c in self.categories}

    def labels(self, image_path: Path, height: int, width: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        path = self.folder / f"{Path(image_path).stem}.png"
        if not path.exists():
            raise SourceError(f"{path}: no semantic PNG for {Path(image_path).name}")
        try:
            with Image.open(path) as im:
                sem = np.asarray(im if im.mode in ("L", "P", "I", "I;16") else im.convert("L"))
        except OSError as e:
            raise SourceError(f"{path}: cannot read ({e})") from None
        if sem.shape != (height, width):
            raise SourceError(f"{path}: size {sem.shape[1]}x{sem.shape[0]} differs from the image "
                              f"{width}x{height}")
        return semantic_to_panoptic(sem.astype(np.int64), self._isthing)


def semantic_to_panoptic(
    sem: np.ndarray, isthing: dict[int, bool]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """[H, W] class ids (255 = void) -> (id_map [H, W] int64, segments_info).

    Stuff classes: one segment each; thing classes: one segment per 8-connected component.
    Values not in `isthing` become void.
    """
    counts = np.bincount(sem.reshape(-1))
    lut = np.zeros(counts.size, dtype=np.int64)  # class value -> stuff segment id
    segments: list[dict[str, Any]] = []
    things = []
    for v in np.flatnonzero(counts).tolist():
        if v == 255 or v not in isthing:
            continue
        if isthing[v]:
            things.append(v)
        else:
            segments.append({"id": len(segments) + 1, "category_id": v, "iscrowd": 0})
            lut[v] = len(segments)
    id_map = lut[sem]
    for v in things:
        mask = sem == v
        comps, n = ndimage.label(mask, structure=np.ones((3, 3)))
        id_map[mask] = comps[mask] + len(segments)
        segments += [{"id": len(segments) + c, "category_id": v, "iscrowd": 0} for c in range(1, n + 1)]
    return id_map, segments


def _read_labelmap(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise SourceError(f"{path}: cannot read the label map ({' '.join(str(e).split())})") from None
    if isinstance(data, dict) and "categories" in data:
        data = data["categories"]
    if isinstance(data, dict):
        data = [{"id": int(k), "name": str(v), "isthing": 0} for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(c, dict) and "id" in c and "name" in c for c in data):
        raise SourceError(f"{path}: a label map is a list of {{id, name, isthing}}, "
                          "{categories: [...]}, or {id: name}")
    return [{"id": int(c["id"]), "name": str(c["name"]), "isthing": int(bool(c.get("isthing", 0))),
             **({"color": c["color"]} if c.get("color") else {})} for c in data]


class PanopticSource:
    def __init__(self, json_or_dir: str | Path):
        path = Path(json_or_dir)
        self.spec = f"panoptic:{json_or_dir}"
        if path.is_dir():
            jsons = sorted(path.glob("*.json"))
            if len(jsons) != 1:
                raise SourceError(f"{path}: expected one panoptic JSON in the folder, found {len(jsons)}")
            path = jsons[0]
        try:
            data = json.loads(path.read_text())
            self.categories = [dict(c) for c in data["categories"]]
            anns = data["annotations"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SourceError(f"{path}: not a readable COCO panoptic JSON ({_one_line(e)})") from None
        candidates = [path.with_suffix(""), path.parent / "panoptic", path.parent]
        self.png_dir = next((d for d in candidates if d.is_dir() and any(d.glob("*.png"))), None)
        if self.png_dir is None:
            raise SourceError(f"{path}: PNG folder not found (looked in {path.with_suffix('')})")
        self._isthing = {int(c["id"]): int(bool(c.get("isthing", 1))) for c in self.categories}
        self._by_stem = {Path(a["file_name"]).stem: a for a in anns}

    def labels(self, image_path: Path, height: int, width: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        stem = Path(image_path).stem
        ann = self._by_stem.get(stem)
        if ann is None:
            raise SourceError(f"{self.spec}: no panoptic annotation for {Path(image_path).name}")
        png = self.png_dir / ann["file_name"]
        try:
            id_map = read_panoptic_png(png)
        except (OSError, ValueError) as e:
            raise SourceError(f"{png}: cannot read ({e})") from None
        if id_map.shape != (height, width):
            raise SourceError(f"{png}: size {id_map.shape[1]}x{id_map.shape[0]} differs from the image "
                              f"{width}x{height}")
        return id_map, [dict(s) for s in ann["segments_info"]]


class ModelSource:
    """A panoptic model of this project; loaded once per process, on first use."""

    def __init__(self, weights: str, threshold: float | None = None, device: str | None = None,
                 **predictor_options: Any):
        """threshold and predictor_options (size=, max_size=, preset=, ...): as `Predictor` takes
        them; settings not given are the checkpoint's, else DETR's, as in `predict`."""
        self.spec = f"model:{weights}" + (f"@{threshold}" if threshold is not None else "")
        self.weights, self.threshold, self.device = weights, threshold, device
        self.predictor_options = predictor_options
        self._predictor: Any = None
        self.categories = [dict(c) for c in self._load().categories.items]

    def _load(self) -> Any:
        if self._predictor is None:
            try:
                from ..predictor import Predictor
            except ImportError as e:
                raise SourceError(f"{self.spec}: the predictor is not available ({e})") from None
            import torch

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                self._predictor = Predictor(self.weights, device=device, threshold=self.threshold,
                                            **self.predictor_options)
            except SettingsError:  # a bad option of the user's, said as every command says it
                raise
            except Exception as e:  # any loading failure is one line, the build stops
                raise SourceError(f"{self.spec}: cannot load the model ({_one_line(e)})") from None
        return self._predictor

    @property
    def weights_source(self) -> str:
        """Where the model's weights came from (`Pretrained.source`), for the log."""
        return str(self._load().pretrained.source)

    def __getstate__(self) -> dict[str, Any]:  # worker processes load their own copy
        return {**self.__dict__, "_predictor": None}

    def labels(self, image_path: Path, height: int, width: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        try:
            result = self._load().predict(image_path)
        except SourceError:
            raise
        except Exception as e:  # an image the model cannot read: this image fails, the rest goes on
            raise SourceError(f"{image_path}: {self.spec}: {_one_line(e)}") from None
        id_map = np.asarray(result.id_map.cpu() if hasattr(result.id_map, "cpu") else result.id_map)
        if id_map.shape != (height, width):
            raise SourceError(f"{self.spec}: prediction {id_map.shape[1]}x{id_map.shape[0]} differs from "
                              f"the image {width}x{height}")
        return id_map.astype(np.int64), [dict(s) for s in result.segments_info]


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def open_source(spec: str, **model_options: Any) -> SemanticSource | PanopticSource | ModelSource:
    """Parse `semantic:DIR[:MAP]`, `panoptic:JSON_OR_DIR` or `model:WEIGHTS[@THRESHOLD]`.

    model_options: `Predictor` settings and options for a model source (size=, max_size=,
    device=, ...; None: not given, the checkpoint's or DETR's).
    """
    kind, _, rest = spec.partition(":")
    if not rest:
        raise SourceError(f"{spec!r}: expected semantic:DIR[:LABELMAP], panoptic:JSON_OR_DIR or "
                          "model:PRESET_OR_WEIGHTS[@THRESHOLD]")
    if kind == "semantic":
        folder, _, labelmap = rest.partition(":")
        return SemanticSource(folder, labelmap or None)
    if kind == "panoptic":
        return PanopticSource(rest)
    if kind == "model":
        weights, _, thr = rest.rpartition("@") if "@" in rest else (rest, "", "")
        try:
            threshold = float(thr) if thr else None
        except ValueError:
            raise SourceError(f"{spec!r}: threshold {thr!r} is not a number") from None
        return ModelSource(weights, threshold, **model_options)
    raise SourceError(f"{spec!r}: unknown source kind {kind!r} (semantic, panoptic or model)")
