"""Typed containers that every layer shares: batches, targets, categories, panoptic results.

Pure data: no file access of its own. Conversions to and from the COCO panoptic PNG encoding
are tensor/array functions in `ops.panoptic`; reading and writing the files lives in `data/`,
and `PanopticResult.overlay` / `.save`, the conveniences of the Python API, call `viz` and
`data/` at call time (the one exception to the layers, named in .importlinter).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class PaddedBatch:
    """Images of different sizes padded to one tensor (DETR's NestedTensor)."""

    images: Tensor
    """[B, 3, H, W] normalised images, zero on padding."""
    mask: Tensor
    """[B, H, W] bool, True on padding."""

    @classmethod
    def from_images(cls, images: list[Tensor], size_divisibility: int = 1) -> PaddedBatch:
        """Pad `images` ([3, h_i, w_i] each) at the bottom/right to the largest size."""
        if not images:
            raise ValueError("PaddedBatch.from_images needs at least one image")
        h = max(int(im.shape[-2]) for im in images)
        w = max(int(im.shape[-1]) for im in images)
        if size_divisibility > 1:
            h = -(-h // size_divisibility) * size_divisibility
            w = -(-w // size_divisibility) * size_divisibility
        ref = images[0]
        batch = ref.new_zeros((len(images), ref.shape[0], h, w))
        mask = torch.ones((len(images), h, w), dtype=torch.bool, device=ref.device)
        for i, im in enumerate(images):
            batch[i, :, : im.shape[-2], : im.shape[-1]] = im
            mask[i, : im.shape[-2], : im.shape[-1]] = False
        return cls(batch, mask)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Unpadded (h, w) of every image."""
        valid = ~self.mask
        hs = valid.any(dim=2).sum(dim=1).tolist()
        ws = valid.any(dim=1).sum(dim=1).tolist()
        return [(int(h), int(w)) for h, w in zip(hs, ws, strict=True)]

    def alone(self, index: int) -> PaddedBatch:
        """Image `index` as a batch of one, cropped to its own size (no padding)."""
        h, w = self.sizes[index]
        return PaddedBatch(self.images[index : index + 1, :, :h, :w], self.mask[index : index + 1, :h, :w])

    def to(self, *args: Any, **kwargs: Any) -> PaddedBatch:
        """Move or cast the images (like `Tensor.to`); the mask stays bool."""
        images = self.images.to(*args, **kwargs)
        return PaddedBatch(images, self.mask.to(images.device))

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Target:
    """Ground truth of one image, in the frame of the (augmented) image tensor."""

    masks: Tensor
    """[S, H, W] bool, one binary mask per segment."""
    labels: Tensor
    """[S] int64 class indices (= category ids, see `Categories`)."""
    boxes: Tensor
    """[S, 4] float, normalised (cx, cy, w, h) in the image tensor's frame."""
    iscrowd: Tensor
    """[S] bool."""
    area: Tensor
    """[S] float, pixels of each mask in the image tensor's frame."""
    image_id: int = 0
    orig_size: tuple[int, int] = (0, 0)
    """(h, w) of the image file."""
    size: tuple[int, int] = (0, 0)
    """(h, w) of the image tensor after transforms."""
    segment_ids: Tensor | None = None
    """[S] int64 ids from the dataset's `segments_info`, when read from one."""

    def to(self, device: torch.device | str) -> Target:
        moved = {
            k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in self.__dict__.items()
        }
        return Target(**moved)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Categories:
    """The category table of a dataset or a model: id, name, isthing, colour.

    Class index <-> category id lives here and only here. As in the original DETR, the
    model's class index *is* the category id (so the COCO checkpoints' 250 logits index
    COCO ids directly) and index `num_classes` is no-object.
    """

    items: list[dict[str, Any]]
    """COCO `categories` entries: at least `id`, `name`, `isthing`; `color` optional."""
    num_classes: int = 0
    """Logits before no-object; at least max id + 1 (0 = max id + 1)."""
    by_id: dict[int, dict[str, Any]] = field(init=False, repr=False)
    _last_thing: int = field(init=False, repr=False)
    """The largest thing id (-1: none); unknown ids up to it count as things."""

    def __post_init__(self) -> None:
        self.by_id = {int(c["id"]): c for c in self.items}
        self._last_thing = max((i for i, c in self.by_id.items() if c["isthing"]), default=-1)
        if len(self.by_id) != len(self.items):
            raise ValueError("duplicate category ids in the category table")
        need = max(self.by_id, default=-1) + 1
        if self.num_classes == 0:
            self.num_classes = need
        elif self.num_classes < need:
            raise ValueError(f"num_classes={self.num_classes} cannot index category id {need - 1}")

    @classmethod
    def coco_panoptic(cls) -> Categories:
        """The 133 COCO panoptic categories (things 1-90, stuff 92-200), 250 logits as the
        original checkpoints."""
        text = resources.files("panoptic_detr.assets").joinpath("coco_panoptic_categories.json")
        return cls(json.loads(text.read_text()), num_classes=250)

    def isthing(self, category_id: int) -> bool:
        """Unknown ids up to the largest thing id count as things, those above it as stuff: the
        original DETR's `i <= 90` for COCO, whose unused ids (12, 26, ..., 91) the checkpoints
        still have logits for."""
        c = self.by_id.get(int(category_id))
        return bool(c["isthing"]) if c is not None else int(category_id) <= self._last_thing

    def name(self, category_id: int) -> str:
        c = self.by_id.get(int(category_id))
        return str(c["name"]) if c is not None else f"class {category_id}"

    def color(self, category_id: int) -> tuple[int, int, int]:
        c = self.by_id.get(int(category_id))
        if c is not None and c.get("color") is not None:
            r, g, b = c["color"]
            return int(r), int(g), int(b)
        # a stable, well-spread colour for categories without one
        h = (int(category_id) * 2654435761) & 0xFFFFFF
        return (h >> 16) & 255, (h >> 8) & 255, h & 255

    def thing_mask(self, device: torch.device | str = "cpu") -> Tensor:
        """[num_classes] bool, True where the class index is a thing (`isthing`)."""
        flags = [self.isthing(i) for i in range(self.num_classes)]
        return torch.tensor(flags, dtype=torch.bool, device=device)

    def to_json(self) -> list[dict[str, Any]]:
        return [dict(c) for c in self.items]


@dataclass(frozen=True)
class Segment:
    """One segment of a `PanopticResult`, as `result.segments` gives it."""

    id: int
    """Its value in the result's id map."""
    category_id: int
    name: str
    """The class name (as in the category table and the JSON files; "class N" for an id the
    table does not have)."""
    isthing: bool
    score: float | None
    """The model's class confidence (None for a ground-truth segment)."""
    area: int
    """Pixels."""
    bbox: tuple[int, int, int, int]
    """(x, y, w, h) in pixels."""
    id_map: Tensor = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """`name`, under the name Hugging Face's pipelines use."""
        return self.name

    @property
    def mask(self) -> np.ndarray:
        """[H, W] bool, True on the segment's pixels (computed on each access)."""
        return (self.id_map == self.id).cpu().numpy()


@dataclass
class PanopticResult:
    """A panoptic segmentation of one image at its original size.

    `id_map` values index `segments_info` by their `id`; 0 is void (no segment). A `Predictor`
    gives its `categories` too, which name the segments (`segments`, `to_hf`) and colour them
    (`overlay`).
    """

    id_map: Tensor
    """[H, W] int64 segment ids, 0 = void."""
    segments_info: list[dict[str, Any]]
    """One dict per segment: id, category_id, isthing, area, score, bbox [x, y, w, h]."""
    categories: Categories | None = field(default=None, repr=False)
    """The category table the category ids refer to (None: unnamed, "class N")."""

    @property
    def size(self) -> tuple[int, int]:
        return int(self.id_map.shape[0]), int(self.id_map.shape[1])

    @property
    def segments(self) -> list[Segment]:
        """The segments with their class names, in `segments_info` order."""
        out = []
        for s in self.segments_info:
            cat = int(s["category_id"])
            name = self.categories.name(cat) if self.categories is not None else f"class {cat}"
            score = s.get("score")
            x, y, w, h = (int(v) for v in s["bbox"])
            out.append(Segment(int(s["id"]), cat, name, bool(s["isthing"]),
                               None if score is None else float(score), int(s["area"]), (x, y, w, h),
                               self.id_map))
        return out

    def to_hf(self) -> list[dict[str, Any]]:
        """Hugging Face's `pipeline("image-segmentation")` form: one dict per segment with
        `label` (class name), `score` and `mask` (a PIL "L" image, 255 on the segment, 0 off)."""
        from PIL import Image  # PIL only for this form

        return [{"score": s.score, "label": s.name,
                 "mask": Image.fromarray(s.mask.astype(np.uint8) * 255, mode="L")} for s in self.segments]

    def coco_segments(self) -> list[dict[str, Any]]:
        """`segments_info` as the files hold them (predict's records and predictions.json,
        serve's JSON, `to_coco`): plain numbers, the class name, the score to 5 decimals."""
        return [{"id": s.id, "category_id": s.category_id, "name": s.name, "isthing": int(s.isthing),
                 "iscrowd": 0, "area": s.area, "bbox": list(s.bbox),
                 **({} if s.score is None else {"score": round(s.score, 5)})} for s in self.segments]

    def to_coco(self, file_name: str = "result.png", image_id: int = 1) -> dict[str, Any]:
        """A COCO panoptic document of this one image (images, annotations, categories), as
        `predict` writes predictions.json; `file_name`: its panoptic PNG."""
        h, w = self.size
        segments = self.coco_segments()
        return {"images": [{"id": image_id, "file_name": file_name, "height": h, "width": w}],
                "annotations": [{"image_id": image_id, "file_name": file_name, "segments_info": segments}],
                "categories": self.categories.to_json() if self.categories is not None else []}

    def overlay(self, image: Any, **options: Any) -> Any:
        """The picture to look at: `image` (anything a `Predictor` takes, of this result's size)
        with the segments coloured, outlined and labelled, as a PIL image. options: those of
        `viz.overlay` (alpha=, legend=, labels=)."""
        from PIL import Image

        from .data.images import as_rgb  # drawing is done at the edge (see .importlinter)
        from .viz import overlay

        if self.categories is None:
            raise ValueError("this result has no categories to name and colour its segments: "
                             "PanopticResult(..., categories=...)")
        return Image.fromarray(overlay(as_rgb(image), self, self.categories, **options))

    def save(self, folder: str | os.PathLike[str], name: str = "result", overwrite: bool = False
             ) -> tuple[Path, Path]:
        """Write FOLDER/NAME.png (COCO panoptic: id = R + 256 G + 256^2 B) and FOLDER/NAME.json
        (`to_coco`), each atomically, the JSON last; returns their paths. An existing file is
        FileExistsError unless `overwrite`."""
        from .data.files import write_json  # files are written at the edge (see .importlinter)
        from .data.panoptic_png import write_panoptic_png

        png, doc = Path(folder) / f"{name}.png", Path(folder) / f"{name}.json"
        for path in (png, doc):
            if not overwrite and path.exists():
                raise FileExistsError(f"{path}: exists (pass overwrite=True to replace it)")
        write_panoptic_png(png, self.id_map)
        write_json(doc, self.to_coco(png.name), indent=1)
        return png, doc
