"""Joint augmentations of an image and its panoptic target (DETR's training recipe).

Built on torchvision.transforms.v2: the image is a `tv_tensors.Image` and the segment masks a
`tv_tensors.Mask`, so one v2 pipeline moves both together (bilinear for the image, nearest for
the masks). Boxes are then recomputed from the transformed masks rather than transformed
geometrically: the masks are the panoptic ground truth, and boxes derived from them stay exact
through resizes and crops. Segments a crop leaves empty are dropped. Finally ImageNet
normalisation, and boxes as normalised (cx, cy, w, h).

Randomness: every call may take a `torch.Generator`; the v2 transforms draw from torch's global
RNG, so the call runs inside `torch.random.fork_rng` seeded from that generator. The same
generator state gives the same augmentation, and the global RNG is left untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2._utils import query_size

from ..ops.boxes import masks_to_boxes_xyxy, xyxy_to_cxcywh
from ..structures import Target
from .images import IMAGENET_MEAN, IMAGENET_STD

DETR_SCALES = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)


class RandomSizeCrop(v2.Transform):
    """Crop a random region with width in [min_size, min(W, max_size)] and height in
    [min_size, min(H, max_size)] (DETR's RandomSizeCrop)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = query_size(flat_inputs)
        tw = int(torch.randint(min(self.min_size, w), min(w, self.max_size) + 1, ()))
        th = int(torch.randint(min(self.min_size, h), min(h, self.max_size) + 1, ()))
        top = int(torch.randint(0, h - th + 1, ()))
        left = int(torch.randint(0, w - tw + 1, ()))
        return {"top": top, "left": left, "height": th, "width": tw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.crop, inpt, **params)


class PanopticTransform:
    """A v2 geometric pipeline applied jointly to (image [3, H, W] in 0..1, Target), then
    normalisation. Returns (normalised image [3, h, w], Target in the new frame)."""

    def __init__(self, geometric: v2.Transform | None, normalize: bool = True) -> None:
        self.geometric = geometric
        self.normalize = normalize

    def __call__(
        self, image: Tensor, target: Target, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Target]:
        image = tv_tensors.Image(image)
        masks = tv_tensors.Mask(target.masks.to(torch.uint8))
        if self.geometric is not None:
            if generator is None:
                image, masks = self.geometric(image, masks)
            else:
                seed = int(torch.randint(0, 2**62, (), generator=generator))
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image, masks = self.geometric(image, masks)
        image = image.as_subclass(Tensor)
        masks = masks.as_subclass(Tensor).bool()  # S x h x w
        if self.normalize:
            image = TF.normalize(image, IMAGENET_MEAN, IMAGENET_STD)
        return image, _reframe(target, masks)


def _reframe(target: Target, masks: Tensor) -> Target:
    """The target with new masks: empty segments dropped, boxes and areas recomputed."""
    h, w = masks.shape[-2:]
    keep = masks.flatten(1).any(1)
    masks = masks[keep]
    boxes = masks_to_boxes_xyxy(masks) / torch.tensor([w, h, w, h], dtype=torch.float32)
    return Target(
        masks=masks,
        labels=target.labels[keep],
        boxes=xyxy_to_cxcywh(boxes),
        iscrowd=target.iscrowd[keep],
        area=masks.flatten(1).sum(1).float(),
        image_id=target.image_id,
        orig_size=target.orig_size,
        size=(int(h), int(w)),
        segment_ids=None if target.segment_ids is None else target.segment_ids[keep],
    )


def train_transforms(
    scales: Sequence[int] = DETR_SCALES,
    max_size: int = 1333,
    crop_scales: Sequence[int] = (400, 500, 600),
    crop_min: int = 384,
    crop_max: int = 600,
) -> PanopticTransform:
    """DETR's training augmentation: horizontal flip, then with probability 1/2 a multi-scale
    resize (shortest side from `scales`, longest <= max_size), else resize (shortest side from
    `crop_scales`) -> random crop -> multi-scale resize."""
    resize = v2.RandomShortestSize(list(scales), max_size=max_size)
    crop = v2.Compose([v2.RandomShortestSize(list(crop_scales)), RandomSizeCrop(crop_min, crop_max),
                       v2.RandomShortestSize(list(scales), max_size=max_size)])
    return PanopticTransform(v2.Compose([v2.RandomHorizontalFlip(), v2.RandomChoice([resize, crop])]))


def eval_transforms(size: int = 800, max_size: int = 1333) -> PanopticTransform:
    """Validation: deterministic resize of the shortest side to `size` (longest <= max_size)."""
    return PanopticTransform(v2.RandomShortestSize([size], max_size=max_size))
