"""An instance-segmentation model as a source of thing masks (`--things-from`, `--box-masks`).

`model:maskrcnn[@THRESHOLD]`, `model:demo-maskrcnn[@THRESHOLD]` or `model:PATH[@THRESHOLD]`
(what `gt.maskrcnn.load_instance_model` reads). Two uses per image, sharing one backbone run:

* `instances(image)`: the detections scored over `threshold` (default 0.5),
  each a mask (Mask R-CNN's probability > 0.5) with its class and score;
* `masks_in_boxes(image, boxes, wanted)`: a mask inside each given box, the box being the
  proposal of the RoI heads: the box head scores the classes, the mask head's channel is the
  best-scored of `wanted[i]` (the classes the taxonomy maps to the annotation's class), else
  the best-scored class.

Problems raise `SourceError` with one line; an image the model cannot read fails alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .instances import BoxMask, crop_mask
from .sources import SourceError, _one_line

DEFAULT_THRESHOLD = 0.5
MASK_THRESHOLD = 0.5


@dataclass
class Detections:
    """The instances the model found in one image."""

    masks: list[BoxMask]
    """`crop_mask` pairs at the image's size."""
    labels: list[int]
    """Class indices (= the model's category ids)."""
    scores: list[float]


class InstanceModelSource:
    """A Mask R-CNN, loaded once per process on first use (`spec` names it as the user did)."""

    def __init__(self, weights: str, threshold: float | None = None, device: str | None = None,
                 size: int | None = None, max_size: int | None = None):
        """size / max_size: shortest side and longest-side cap the model resizes images to
        (default: the checkpoint's; 800 and 1333 for torchvision's COCO model)."""
        self.spec = f"model:{weights}" + (f"@{threshold}" if threshold is not None else "")
        self.weights, self.device, self.size, self.max_size = weights, device, size, max_size
        self._threshold = threshold
        self._model: Any = None
        self._cache: tuple[Path, Any, Any, tuple[int, int]] | None = None
        self.categories = [dict(c) for c in self._load().categories]

    @property
    def threshold(self) -> float:
        return DEFAULT_THRESHOLD if self._threshold is None else self._threshold

    def _load(self) -> Any:
        if self._model is None:
            import torch

            from ..model.weights import WeightsError
            from .maskrcnn import load_instance_model

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                self._model = load_instance_model(self.weights, device)
            except WeightsError as e:
                raise SourceError(f"{self.spec}: {e}") from None
            transform = self._model.model.transform
            if self.size is not None:
                transform.min_size = (int(self.size),)
            if self.max_size is not None:
                transform.max_size = int(self.max_size)
        return self._model

    def __getstate__(self) -> dict[str, Any]:  # worker processes load their own copy
        return {**self.__dict__, "_model": None, "_cache": None}

    def _features(self, image_path: Path) -> tuple[Any, Any, tuple[int, int]]:
        """(ImageList, FPN features, (H, W)) of an image; the last image's are kept, so the two
        uses on one image run the backbone once."""
        if self._cache is not None and self._cache[0] == image_path:
            return self._cache[1:]
        import torch

        from ..data.images import ImageError, load_image

        net = self._load().model
        try:
            rgb = load_image(image_path)
        except ImageError as e:
            raise SourceError(f"{self.spec}: {e}") from None
        device = next(net.parameters()).device
        x = torch.from_numpy(rgb).to(device).permute(2, 0, 1).float().div_(255)
        with torch.inference_mode():
            images, _ = net.transform([x])
            features = net.backbone(images.tensors)
        self._cache = (image_path, images, features, rgb.shape[:2])
        return images, features, rgb.shape[:2]

    def _checked(self, image_path: Path, height: int, width: int) -> tuple[Any, Any, tuple[int, int]]:
        try:
            images, features, size = self._features(Path(image_path))
        except SourceError:
            raise
        except Exception as e:  # the model fails on this image: it fails alone
            raise SourceError(f"{image_path}: {self.spec}: {_one_line(e)}") from None
        if size != (height, width):
            raise SourceError(f"{image_path}: {self.spec}: decoded {size[1]}x{size[0]}, the dataset says "
                              f"{width}x{height}")
        return images, features, size

    def instances(self, image_path: Path, height: int, width: int) -> Detections:
        """The model's instances in the image, scores over the threshold, highest first."""
        import torch

        images, features, size = self._checked(image_path, height, width)
        net = self._load().model
        try:
            with torch.inference_mode():
                proposals, _ = net.rpn(images, features)
                det, _ = net.roi_heads(features, proposals, images.image_sizes)
                det = net.transform.postprocess(det, images.image_sizes, [size])[0]
        except Exception as e:
            raise SourceError(f"{image_path}: {self.spec}: {_one_line(e)}") from None
        keep = det["scores"] > self.threshold
        masks = (det["masks"][keep, 0] > MASK_THRESHOLD).cpu().numpy()
        crops = [crop_mask(m) for m in masks]
        nonempty = [k for k, (_, c) in enumerate(crops) if c.size and c.any()]
        return Detections([crops[k] for k in nonempty], [int(det["labels"][keep][k]) for k in nonempty],
                          [float(det["scores"][keep][k]) for k in nonempty])

    def masks_in_boxes(self, image_path: Path, height: int, width: int, boxes: np.ndarray,
                       wanted: list[set[int]]) -> tuple[list[np.ndarray], list[int]]:
        """boxes: [N, 4] x0, y0, x1, y1 in image pixels. Returns ([H, W] bool masks, each inside
        its box; the class whose mask channel was used, per box)."""
        import torch
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        if len(boxes) == 0:
            return [], []
        images, features, size = self._checked(image_path, height, width)
        heads = self._load().model.roi_heads
        (th, tw), = images.image_sizes
        device = images.tensors.device
        given = torch.as_tensor(np.asarray(boxes, np.float32), device=device)
        scaled = given * given.new_tensor([tw / width, th / height, tw / width, th / height])
        try:
            with torch.inference_mode():
                logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, [scaled],
                                                                                  images.image_sizes)))
                probs = logits.softmax(-1)  # N x C, class 0 = background
                channel = [_best(probs[i], wanted[i]) for i in range(len(boxes))]
                m = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, [scaled],
                                                                              images.image_sizes)))
                m = m[torch.arange(len(boxes), device=device), torch.as_tensor(channel, device=device)]
                pasted = paste_masks_in_image(m.sigmoid()[:, None], given, (height, width), padding=1)
        except Exception as e:
            raise SourceError(f"{image_path}: {self.spec}: {_one_line(e)}") from None
        out = []
        for k, mask in enumerate((pasted[:, 0] > MASK_THRESHOLD).cpu().numpy()):
            inside = np.zeros_like(mask)  # the pasting pads the box by a pixel: keep the box only
            x0, y0, x1, y1 = boxes[k]
            rows = slice(max(0, int(np.floor(y0))), int(np.ceil(y1)))
            cols = slice(max(0, int(np.floor(x0))), int(np.ceil(x1)))
            inside[rows, cols] = mask[rows, cols]
            out.append(inside)
        return out, channel


def _best(probs: Any, wanted: set[int]) -> int:
    """The best-scored class of `wanted` (valid indices only), else of all but the background."""
    valid = [c for c in wanted if 0 < c < probs.numel()]
    if valid:
        return max(valid, key=lambda c: float(probs[c]))
    return int(probs[1:].argmax()) + 1


def parse_instance_spec(spec: str, **options: Any) -> InstanceModelSource:
    """`model:WEIGHTS[@THRESHOLD]` -> InstanceModelSource (options: device, size, max_size)."""
    kind, _, rest = spec.partition(":")
    if kind != "model" or not rest:
        raise SourceError(f"{spec!r}: expected model:maskrcnn[@THRESHOLD], model:demo-maskrcnn or "
                          "model:CHECKPOINT[@THRESHOLD]")
    weights, _, thr = rest.rpartition("@") if "@" in rest else (rest, "", "")
    try:
        threshold = float(thr) if thr else None
    except ValueError:
        raise SourceError(f"{spec!r}: threshold {thr!r} is not a number") from None
    if threshold is not None and not 0 <= threshold <= 1:
        raise SourceError(f"{spec!r}: threshold {threshold} is not between 0 and 1")
    return InstanceModelSource(weights, threshold, **options)
