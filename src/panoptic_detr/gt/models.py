"""The model sources of one build-gt run, as one `runner.ItemModel`: each batch of decoded
images goes through the stuff model (`sources.ModelSource`) and the instance models
(`instance_model.InstanceModelSource`: its own detections for `--things-from`, masks in the
annotated boxes for `--box-masks`); `build` composes each image from the outputs.

Where `--things-from` and `--box-masks` name the same network (weights, device and resize;
thresholds may differ), one backbone run per image serves both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .box_masks import box_queries
from .instance_model import Detections, InstanceModelSource
from .sources import ModelSource, _one_line


@dataclass
class ModelOutputs:
    """What the models gave for one image (None: that model is not in the run)."""

    stuff: tuple[np.ndarray, list[dict[str, Any]]] | None = None
    """The DETR source's (id_map [H, W] int64, segments_info)."""
    things: Detections | None = None
    box_masks: list[np.ndarray] | None = None
    """[H, W] bool per box of `box_masks.box_queries`, in order."""


class BuildModels:
    """predict_items((image info, annotations) items, images) -> ModelOutputs per image."""

    def __init__(self, stuff: ModelSource | None, things: Any, box_masks: Any,
                 wanted: dict[int, set[int]], batch_size: int = 1):
        """things / box_masks: instance-model sources (box_masks "box" or None: no model)."""
        self.stuff, self.things, self.wanted, self.batch_size = stuff, things, wanted, batch_size
        self.box_masks = None if box_masks in (None, "box") else box_masks
        self.shared = self.things is not None and self.box_masks is not None and (
            self.things is self.box_masks or _same_network(self.things, self.box_masks))

    @staticmethod
    def needed(stuff: Any, things: Any, box_masks: Any) -> bool:
        """Whether a run with these sources runs a model (else no `BuildModels` is needed)."""
        return isinstance(stuff, ModelSource) or things is not None or box_masks not in (None, "box")

    def predict_items(self, items: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]],
                      images: Sequence[np.ndarray]) -> list[ModelOutputs]:
        out = [ModelOutputs() for _ in images]
        if self.stuff is not None:
            for o, labels in zip(out, _running(self.stuff, self.stuff.predict_arrays, images), strict=True):
                o.stuff = labels
        boxes = wanted = None
        if self.box_masks is not None:
            queries = [box_queries(anns, *image.shape[:2])
                       for (_, anns), image in zip(items, images, strict=True)]
            boxes = [b for _, b in queries]
            wanted = [[self.wanted.get(int(anns[k].get("category_id", -1)), set()) for k in todo]
                      for (todo, _), (_, anns) in zip(queries, items, strict=True)]
        if self.things is not None:
            both = self.shared  # then the box masks come from the same backbone run
            found = _running(self.things, self.things.predict_arrays, images, boxes if both else None,
                             wanted if both else None, detect=True)
            for o, f in zip(out, found, strict=True):
                o.things = f.detections
                o.box_masks = f.box_masks if both else None
        if self.box_masks is not None and not self.shared:
            made = _running(self.box_masks, self.box_masks.predict_arrays, images, boxes, wanted,
                            detect=False)
            for o, m in zip(out, made, strict=True):
                o.box_masks = m.box_masks
        return out


def _same_network(a: Any, b: Any) -> bool:
    return isinstance(a, InstanceModelSource) and a.same_network(b)


def _running(model: Any, call: Any, *args: Any, **kwargs: Any) -> Any:
    """call(*args, **kwargs), a failure named by the model that failed (one line)."""
    try:
        return call(*args, **kwargs)
    except (RuntimeError, ValueError) as e:
        raise RuntimeError(f"{model.spec}: {_one_line(e)}") from None
