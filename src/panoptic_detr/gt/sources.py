"""Where the labels of unannotated pixels come from (`--stuff-from SOURCE`).

* `semantic:DIR[:LABELMAP.json|yaml]`: one PNG per image (`DIR/<image stem>.png`), pixel =
  class id, 255 = void. The label map lists the classes as COCO categories (`[{id, name,
  isthing}]`, or `{"categories": [...]}`, or `{id: name}` for stuff only); default
  `DIR/labelmap.json` or `DIR/labelmap.yaml`. Thing classes are split into connected
  components, one instance each (a semantic map cannot separate touching instances).
* `panoptic:JSON_OR_DIR`: a COCO-panoptic JSON with its PNG folder (`x.json` + `x/`), or a
  folder holding one JSON and that PNG folder. Images are matched by file name stem.
* `model:PRESET_OR_WEIGHTS[@THRESHOLD][,KEY=VALUE...]`: a panoptic model run by this project
  (`predictor.Predictor`), e.g. `model:demo@0.7` or `model:runs/x/checkpoint.pt,size=640`.

A model source's own options follow its name (`parse_model_spec`, the one parser of `model:`
specs, the instance models' too): `threshold`, `size`, `max_size`, `device`, and for this
project's DETR `stuff_merge`, `overlap_threshold`, `pixel_assignment`, `dtype`, `runtime`; e.g.
`model:detr_r50_panoptic@0.8,device=cuda:1`.

Each source has `categories` (COCO dicts) and `labels(image_path, height, width) ->
(id_map [H, W] int64, segments_info)`; problems raise SourceError with one line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
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
    """A panoptic model of this project; loaded once per process, on first use. build-gt runs
    it over many images through `runner.run_images` (`predict_arrays`)."""

    def __init__(self, weights: str, threshold: float | None = None, device: str | None = None, *,
                 spec: str | None = None, **predictor_options: Any):
        """threshold and predictor_options (size=, max_size=, preset=, ...): as `Predictor` takes
        them; settings not given are the checkpoint's, else DETR's, as in `predict`. device:
        default cuda when there is one. spec: the name logs use (default model:WEIGHTS[@T])."""
        self.spec = spec or f"model:{weights}" + (f"@{threshold}" if threshold is not None else "")
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

            device = model_device(self.device, self.spec)
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

    def predict_arrays(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, list[dict[str, Any]]]]:
        """(id_map [H, W] int64, segments_info) of each decoded [H, W, 3] uint8 image, the batch
        run as `Predictor.predict_arrays` runs it."""
        return [(np.asarray(r.id_map, np.int64), [dict(s) for s in r.segments_info])
                for r in self._load().predict_arrays(images)]

    def labels(self, image_path: Path, height: int, width: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """One image file's labels (`Source.labels`); build-gt uses `predict_arrays`."""
        from ..data.images import ImageError, load_image

        try:
            (labels,) = self.predict_arrays([load_image(image_path)])
        except (ImageError, RuntimeError, ValueError) as e:
            raise SourceError(f"{image_path}: {self.spec}: {_one_line(e)}") from None
        check_size(labels[0], height, width, f"{image_path}: {self.spec}")
        return labels


def check_size(labels: np.ndarray, height: int, width: int, name: str) -> None:
    """SourceError unless `labels` ([h, w, ...]) is height x width."""
    h, w = labels.shape[:2]
    if (h, w) != (height, width):
        raise SourceError(f"{name}: the model saw {w}x{h} (the decoded image, EXIF orientation applied), "
                          f"the annotations' image is {width}x{height}")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


MODEL_OPTIONS = ("threshold", "size", "max_size", "device")
"""What every model source takes after its name: the score a segment or instance needs, the
shortest side and longest-side cap of the resize, the torch device."""
DETR_OPTIONS = (*MODEL_OPTIONS, "stuff_merge", "overlap_threshold", "pixel_assignment", "dtype", "runtime")
"""A DETR source's: the model options and the `InferenceSettings` of the machine."""
MODEL_SPEC = "model:WEIGHTS[@THRESHOLD][,KEY=VALUE...]"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `model:` spec."""

    spec: str
    """As the user wrote it (the name logs and reports use)."""
    weights: str
    options: dict[str, Any]
    """The options it gives (threshold: float, size / max_size: int, others str)."""


def parse_model_spec(spec: str, known: tuple[str, ...] = MODEL_OPTIONS) -> ModelSpec:
    """`model:WEIGHTS[@THRESHOLD][,KEY=VALUE...]` -> weights and options, e.g.
    `model:maskrcnn@0.7,size=1024,device=cuda:1`. KEY is one of `known` (`max-size` is
    `max_size`); `@T` is `threshold=T`. Values are typed and checked on their own here (a
    number, a whole number >= 1, a device torch can name); what depends on the model (the
    threshold's range, max_size >= the checkpoint's size) is checked by the source.
    A bad spec raises SourceError, one line naming it and the problem."""
    kind, _, rest = spec.partition(":")
    if kind != "model" or not rest:
        raise SourceError(f"{spec!r}: expected {MODEL_SPEC}")
    pieces = rest.split(",")
    given = []  # KEY=VALUE pieces from the end; a comma in a file name stays in the name
    while len(pieces) > 1 and re.fullmatch(r"[A-Za-z_-]+=.*", pieces[-1]):
        given.insert(0, pieces.pop())
    name = ",".join(pieces)
    weights, _, thr = name.rpartition("@") if "@" in name else (name, "", "")
    if not weights:
        raise SourceError(f"{spec!r}: no weights named; expected {MODEL_SPEC}")
    pairs = [("threshold", thr)] if thr else []
    pairs += [(k.replace("-", "_"), v) for k, _, v in (piece.partition("=") for piece in given)]
    options: dict[str, Any] = {}
    for key, value in pairs:
        if key not in known:
            raise SourceError(f"{spec!r}: unknown option {key!r} (this source takes {', '.join(known)})")
        if key in options:
            raise SourceError(f"{spec!r}: {key} given twice")
        options[key] = _option_value(spec, key, value)
    if options.get("max_size", 1 << 30) < options.get("size", 0):
        raise SourceError(f"{spec!r}: max_size {options['max_size']} is below size {options['size']}")
    return ModelSpec(spec, weights, options)


def _option_value(spec: str, key: str, value: str) -> Any:
    if key in ("threshold", "overlap_threshold"):
        try:
            return float(value)  # its range is the source's (DETR's is [0, 1), Mask R-CNN's [0, 1])
        except ValueError:
            raise SourceError(f"{spec!r}: {key} {value!r} is not a number") from None
    if key in ("size", "max_size"):
        if not value.isdigit() or int(value) < 1:
            raise SourceError(f"{spec!r}: {key} {value!r} is not a whole number of pixels >= 1")
        return int(value)
    if key == "device":
        import torch

        try:
            torch.device(value)
        except (RuntimeError, ValueError):
            raise SourceError(f"{spec!r}: device {value!r} is not a device torch knows (cpu, cuda, "
                              "cuda:1, mps, ...)") from None
    return value


def model_device(name: str | None, spec: str) -> str:
    """The device a model source runs on: `name`, else cuda when there is one, else cpu; a CUDA
    device on a machine without one is a SourceError."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise SourceError(f"{spec}: device {name!r}: no CUDA device is available here")
    return name


def open_source(spec: str, **model_options: Any) -> SemanticSource | PanopticSource | ModelSource:
    """Parse `semantic:DIR[:MAP]`, `panoptic:JSON_OR_DIR` or a `model:` spec (`parse_model_spec`).

    model_options: `Predictor` settings and options for a model source (size=, max_size=,
    device=, runtime=, ...; None: not given, the checkpoint's or DETR's); the spec's own
    options win over them.
    """
    kind, _, rest = spec.partition(":")
    if not rest:
        raise SourceError(f"{spec!r}: expected semantic:DIR[:LABELMAP], panoptic:JSON_OR_DIR or {MODEL_SPEC}")
    if kind == "semantic":
        folder, _, labelmap = rest.partition(":")
        return SemanticSource(folder, labelmap or None)
    if kind == "panoptic":
        return PanopticSource(rest)
    if kind == "model":
        parsed = parse_model_spec(spec, DETR_OPTIONS)
        options = {**model_options, **parsed.options}
        return ModelSource(parsed.weights, options.pop("threshold", None), spec=spec, **options)
    raise SourceError(f"{spec!r}: unknown source kind {kind!r} (semantic, panoptic or model)")
