"""Explain one prediction: what every object query saw, predicted and became.

DETR's panoptic head is explainable by construction. Each of the N object queries gives
class scores and a box; the mask head's attention turns it into M attention maps over the
encoder output (H/32 x W/32, one per head, softmax joint over heads and positions); an
FPN-style head turns those into mask logits at H/4; post-processing keeps the confident
queries and takes the per-pixel argmax of their masks. `explain` runs the network once
(`detect(..., return_attention=True)`, then the mask head for the kept queries only) and
returns all of it as tensors, plus why each dropped query was dropped. Drawing and files
live in `explain_report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from .structures import Categories, PanopticResult

KEPT = "kept"
NO_OBJECT = "no-object"
BELOW_THRESHOLD = "below threshold"
SMALL_AREA = "<= 4 pixels"
DUPLICATED_STUFF = "duplicated stuff"
DROP_REASONS = (NO_OBJECT, BELOW_THRESHOLD, SMALL_AREA, DUPLICATED_STUFF)
"""Why a query has no segment of its own, in the order post-processing checks."""


@dataclass
class QueryInfo:
    """What one object query predicted and what became of it."""

    index: int
    """Query index in 0..N-1."""
    status: str
    """"kept" or one of `DROP_REASONS`."""
    segment_id: int | None
    """Id in `PanopticResult.id_map` of the segment this query made (or, for a duplicated
    stuff query, the segment it was merged into); None otherwise."""
    label: int
    """Arg-max class index over the K+1 logits (K = no-object)."""
    score: float
    """Softmax probability of `label`."""
    best_class: int
    """Arg-max over the K real classes: what the query would be if it were an object."""
    best_score: float
    """Softmax probability of `best_class`."""
    box: tuple[float, float, float, float]
    """Predicted box (x0, y0, x1, y1) in pixels of the original image."""

    @property
    def kept(self) -> bool:
        return self.status == KEPT


@dataclass
class Explanation:
    """Everything `explain` found for one image; tensors on the CPU, float32."""

    image: np.ndarray
    """[H, W, 3] uint8, the input image at its original size."""
    input_size: tuple[int, int]
    """(h, w) the network saw after resizing (no padding for a single image)."""
    c5_norm: Tensor
    """[h/32, w/32] L2 norm over channels of the backbone's last stage (C5)."""
    pred_logits: Tensor
    """[N, K+1] class logits of every query (index K = no-object)."""
    pred_boxes: Tensor
    """[N, 4] normalised (cx, cy, w, h) boxes of every query."""
    attention_maps: Tensor
    """[N, M, h/32, w/32] mask-head attention of every query over the encoder output;
    sums to 1 over heads x positions for each query."""
    mask_queries: Tensor
    """[Q] int64, the queries whose mask logits are in `mask_logits` (the ones kept by the
    confidence threshold first, in increasing order, then any extra asked for)."""
    mask_logits: Tensor
    """[Q, h/4, w/4] mask logits before the per-pixel argmax."""
    result: PanopticResult
    """The final panoptic segmentation at the original image size (what `predict` gives)."""
    queries: list[QueryInfo]
    """One per query, index order."""
    categories: Categories
    threshold: float
    """Confidence threshold used to keep queries."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (weights source, preset, image path) for reports."""

    @property
    def num_heads(self) -> int:
        return int(self.attention_maps.shape[1])

    def kept(self) -> list[QueryInfo]:
        """Queries that made a segment, in the order of their segment ids."""
        return sorted((q for q in self.queries if q.kept), key=lambda q: q.segment_id or 0)

    def dropped(self) -> list[QueryInfo]:
        return [q for q in self.queries if not q.kept]

    def query_of_segment(self, segment_id: int) -> QueryInfo:
        for q in self.queries:
            if q.kept and q.segment_id == segment_id:
                return q
        raise KeyError(f"no kept query made segment {segment_id}")

    def segment_info(self, segment_id: int) -> dict[str, Any]:
        for s in self.result.segments_info:
            if int(s["id"]) == segment_id:
                return s
        raise KeyError(f"no segment {segment_id}")

    def mask_logits_of(self, query: int) -> Tensor | None:
        """[h/4, w/4] mask logits of `query`, or None when its mask was not computed."""
        hit = (self.mask_queries == query).nonzero()
        return self.mask_logits[int(hit[0, 0])] if len(hit) else None
