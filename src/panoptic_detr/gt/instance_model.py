"""An instance-segmentation model as a source of thing masks (`--things-from`, `--box-masks`).

`model:maskrcnn`, `model:demo-maskrcnn` or `model:PATH` (what `gt.maskrcnn.load_instance_model`
reads), with its own options after the name (`sources.parse_model_spec`): `@THRESHOLD` or
`threshold=`, `size=`, `max_size=`, `device=`. `predict_arrays` runs a batch of decoded images
(build-gt runs it through `runner.run_images`); per image, two uses share one backbone run:

* detections: the instances scored over `threshold` (default 0.5), each a mask (Mask R-CNN's
  probability > 0.5) with its class and score;
* masks in given boxes: a mask inside each box, the box being the proposal of the RoI heads:
  the box head scores the classes, the mask head's channel is the best-scored of `wanted[i]`
  (the classes the taxonomy maps to the annotation's class), else the best-scored class.

A batch runs as one padded tensor on a GPU and image by image on a CPU (as `Predictor` does:
there a batch saves no arithmetic, and each image's answer is then exactly its own).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .instances import BoxMask, crop_mask
from .sources import MODEL_OPTIONS, SourceError, _one_line, model_device, parse_model_spec

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


@dataclass
class InstanceOutput:
    """What the model gave for one image."""

    detections: Detections | None = None
    """Its own instances (None when not asked for)."""
    box_masks: list[np.ndarray] = field(default_factory=list)
    """[H, W] bool per given box, inside the box."""
    channels: list[int] = field(default_factory=list)
    """The class whose mask channel was used, per given box."""


class InstanceModelSource:
    """A Mask R-CNN, loaded once per process on first use (`spec` names it as the user did)."""

    def __init__(self, weights: str, threshold: float | None = None, device: str | None = None,
                 size: int | None = None, max_size: int | None = None, *, spec: str | None = None,
                 batched: bool | None = None):
        """size / max_size: shortest side and longest-side cap the model resizes images to
        (default: the checkpoint's; 800 and 1333 for torchvision's COCO model). device: default
        cuda when there is one. batched: a batch as one padded tensor (True) or image by image
        (False); None: together on GPUs, alone on CPUs."""
        self.spec = spec or f"model:{weights}" + (f"@{threshold}" if threshold is not None else "")
        if threshold is not None and not 0 <= threshold <= 1:  # nan too
            raise SourceError(f"{self.spec}: threshold {threshold} is not between 0 and 1")
        self.weights, self.device, self.size, self.max_size = weights, device, size, max_size
        self.batched = batched
        self._threshold = threshold
        self._model: Any = None
        self.categories = [dict(c) for c in self._load().categories]

    @property
    def threshold(self) -> float:
        return DEFAULT_THRESHOLD if self._threshold is None else self._threshold

    def same_network(self, other: Any) -> bool:
        """Whether `other` runs the same network on the same resized images (the threshold
        aside), so that one backbone run serves both."""
        keys = ("weights", "device", "size", "max_size", "batched")
        return isinstance(other, InstanceModelSource) and all(getattr(self, k) == getattr(other, k)
                                                              for k in keys)

    def _load(self) -> Any:
        if self._model is None:
            from ..model.weights import WeightsError
            from .maskrcnn import load_instance_model

            try:
                self._model = load_instance_model(self.weights, model_device(self.device, self.spec))
            except WeightsError as e:
                raise SourceError(f"{self.spec}: {e}") from None
            transform = self._model.model.transform
            if self.size is not None:
                transform.min_size = (int(self.size),)
            if self.max_size is not None:
                transform.max_size = int(self.max_size)
        return self._model

    def __getstate__(self) -> dict[str, Any]:  # worker processes load their own copy
        return {**self.__dict__, "_model": None}

    def predict_arrays(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray] | None = None,
                       wanted: Sequence[Sequence[set[int]]] | None = None, *, detect: bool = True
                       ) -> list[InstanceOutput]:
        """Decoded [H, W, 3] uint8 images -> their outputs, in order.

        detect: find the model's own instances. boxes: per image, [N, 4] x0, y0, x1, y1 in its
        pixels, each to get a mask (wanted: per image, per box, the classes whose channel may
        be used; empty: any)."""
        net = self._load().model
        together = self.batched if self.batched is not None else next(net.parameters()).device.type != "cpu"
        groups = [list(range(len(images)))] if together else [[i] for i in range(len(images))]
        out: list[InstanceOutput] = []
        for group in groups if images else []:
            out += self._run([images[i] for i in group],
                             [boxes[i] for i in group] if boxes is not None else None,
                             [wanted[i] for i in group] if wanted is not None else None, detect)
        return out

    def _run(self, images: list[np.ndarray], boxes: list[np.ndarray] | None,
             wanted: list[Sequence[set[int]]] | None, detect: bool) -> list[InstanceOutput]:
        """One padded batch: the backbone once, then the RPN and heads (detections) and the
        heads on the given boxes."""
        import torch

        net = self._load().model
        device = next(net.parameters()).device
        sizes = [im.shape[:2] for im in images]
        tensors = [torch.from_numpy(np.ascontiguousarray(im)).to(device).permute(2, 0, 1).float().div_(255)
                   for im in images]
        out = [InstanceOutput() for _ in images]
        with torch.inference_mode():
            batch, _ = net.transform(tensors)  # resized, normalised, padded: B x 3 x H' x W'
            features = net.backbone(batch.tensors)
            if detect:
                proposals, _ = net.rpn(batch, features)
                det, _ = net.roi_heads(features, proposals, batch.image_sizes)
                det = net.transform.postprocess(det, batch.image_sizes, sizes)
                for o, d in zip(out, det, strict=True):
                    o.detections = self._detections(d)
            if boxes is not None and any(len(b) for b in boxes):
                self._masks_in_boxes(net, batch, features, sizes, boxes, wanted, out)
        return out

    def _detections(self, det: dict[str, Any]) -> Detections:
        keep = det["scores"] > self.threshold
        masks = (det["masks"][keep, 0] > MASK_THRESHOLD).cpu().numpy()
        crops = [crop_mask(m) for m in masks]
        nonempty = [k for k, (_, c) in enumerate(crops) if c.size and c.any()]
        return Detections([crops[k] for k in nonempty], [int(det["labels"][keep][k]) for k in nonempty],
                          [float(det["scores"][keep][k]) for k in nonempty])

    def _masks_in_boxes(self, net: Any, batch: Any, features: Any, sizes: list[tuple[int, int]],
                        boxes: list[np.ndarray], wanted: list[Sequence[set[int]]] | None,
                        out: list[InstanceOutput]) -> None:
        import torch
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        heads = net.roi_heads
        device = batch.tensors.device
        given = [torch.as_tensor(np.asarray(b, np.float32).reshape(-1, 4), device=device) for b in boxes]
        scaled = [g * g.new_tensor([tw / w, th / h, tw / w, th / h])  # image pixels -> network input
                  for g, (th, tw), (h, w) in zip(given, batch.image_sizes, sizes, strict=True)]
        pooled = heads.box_roi_pool(features, scaled, batch.image_sizes)
        logits, _ = heads.box_predictor(heads.box_head(pooled))
        probs = logits.softmax(-1)  # N x C over every image's boxes, class 0 = background
        flat_wanted = [w for k, b in enumerate(boxes) for w in (wanted[k] if wanted else [set()] * len(b))]
        channel = [_best(probs[i], flat_wanted[i]) for i in range(len(flat_wanted))]
        m = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, scaled, batch.image_sizes)))
        m = m[torch.arange(len(channel), device=device), torch.as_tensor(channel, device=device)].sigmoid()
        start = 0
        for k, (g, (h, w)) in enumerate(zip(given, sizes, strict=True)):
            n = len(g)
            if n:
                pasted = paste_masks_in_image(m[start:start + n, None], g, (h, w), padding=1)
                out[k].box_masks = _inside(pasted[:, 0] > MASK_THRESHOLD, np.asarray(boxes[k]).reshape(-1, 4))
                out[k].channels = channel[start:start + n]
            start += n


def _inside(masks: Any, boxes: np.ndarray) -> list[np.ndarray]:
    """[N, H, W] bool masks cut to their boxes (the pasting pads a box by a pixel)."""
    out = []
    for mask, (x0, y0, x1, y1) in zip(masks.cpu().numpy(), boxes, strict=True):
        inside = np.zeros_like(mask)
        rows = slice(max(0, int(np.floor(y0))), int(np.ceil(y1)))
        cols = slice(max(0, int(np.floor(x0))), int(np.ceil(x1)))
        inside[rows, cols] = mask[rows, cols]
        out.append(inside)
    return out


def _best(probs: Any, wanted: set[int]) -> int:
    """The best-scored class of `wanted` (valid indices only), else of all but the background."""
    valid = [c for c in wanted if 0 < c < probs.numel()]
    if valid:
        return max(valid, key=lambda c: float(probs[c]))
    return int(probs[1:].argmax()) + 1


def parse_instance_spec(spec: str, like: Any = None, **defaults: Any) -> InstanceModelSource:
    """`model:WEIGHTS[@THRESHOLD][,KEY=VALUE...]` (`sources.parse_model_spec`: threshold, size,
    max_size, device) -> InstanceModelSource; the spec's options win over `defaults` (the
    build-gt flags --instance-size / --instance-device). like: a source already loaded (the
    things' one); if it is an InstanceModelSource and the spec names its network (weights,
    device, size, max_size), the new source shares its loaded model."""
    parsed = parse_model_spec(spec, MODEL_OPTIONS)
    options = {**{k: v for k, v in defaults.items() if v is not None}, **parsed.options}
    threshold = options.pop("threshold", None)
    if isinstance(like, InstanceModelSource) and like.weights == parsed.weights and all(
            getattr(like, k) == options.get(k) for k in ("device", "size", "max_size")):
        twin = copy.copy(like)  # (a copy drops the loaded model, as pickling does: shared here)
        twin.spec, twin._threshold, twin._model = spec, threshold, like._load()
        return twin
    try:
        return InstanceModelSource(parsed.weights, threshold, spec=spec, **options)
    except SourceError:
        raise
    except (RuntimeError, ValueError) as e:  # e.g. a device torch names but cannot use
        raise SourceError(f"{spec}: {_one_line(e)}") from None
