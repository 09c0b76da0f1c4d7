"""Typed containers that every layer shares: batches, targets, categories, panoptic results.

Pure data: no file access. Conversions to and from the COCO panoptic PNG encoding are
tensor/array functions in `ops.panoptic`; reading and writing the files lives in `data/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

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


@dataclass
class PanopticResult:
    """A panoptic segmentation of one image at its original size.

    `id_map` values index `segments_info` by their `id`; 0 is void (no segment).
    """

    id_map: Tensor
    """[H, W] int64 segment ids, 0 = void."""
    segments_info: list[dict[str, Any]]
    """One dict per segment: id, category_id, isthing, area, score, bbox [x, y, w, h]."""

    @property
    def size(self) -> tuple[int, int]:
        return int(self.id_map.shape[0]), int(self.id_map.shape[1])
