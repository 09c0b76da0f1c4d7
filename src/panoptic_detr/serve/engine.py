"""The network side of the server: segment an image and keep what re-thresholding needs,
re-threshold from that cache, explain a segment. No HTTP here; every call runs on the one
network worker (`worker.Worker`), so the model is never used by two threads at once.

`segment_batch` is `Predictor.segment_arrays` (what `predict_arrays` runs) with `detect`'s
outputs kept: the same preprocessing, settings and path, so the segments of a batch are those
of `predict --batch-size N` on its images (on a CPU, where each image runs alone, a single
image's). Re-thresholding re-selects the queries from the cached class
logits (`select_queries`), runs the mask head only for queries whose masks were never
computed for this image (`DETRPanoptic.predict_masks` on the image's row of the cached
`Detection`; the head is per image and per query, so those masks are the ones a fresh run of
the same batch computes) and post-processes (`panoptic_postprocess`, cropping the batch's
padding), as a fresh run at that threshold does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..explain import Explanation, explain
from ..explain.figures import Figures, thumb_size
from ..model.detr import Detection, LayerOutput
from ..model.postprocess import panoptic_postprocess, select_queries
from ..predictor import Predictor
from ..structures import PanopticResult

EXPLAIN_LONG_SIDE = 200
"""Longest side in pixels of the attention and mask-logit pictures of `Engine.explain`."""


@dataclass
class Entry:
    """One served image and what its network run left, for re-thresholding and explaining."""

    image: np.ndarray
    """[H, W, 3] uint8, the decoded upload."""
    det: Detection
    """`detect`'s outputs for the image (its row of the batch it ran in, as a batch of one)."""
    input_size: tuple[int, int]
    """(h, w) the network saw, after DETR's resize."""
    padded_size: tuple[int, int]
    """(h, w) of the padded batch it ran in (`input_size` when it ran alone)."""
    queries: Tensor
    """[Q] int64, the queries whose mask logits are in `masks` (kept at some threshold)."""
    masks: Tensor
    """[Q, h/4, w/4] float32 mask logits of `queries`."""
    threshold: float
    result: PanopticResult
    """At `threshold`, at the image's size."""
    explanation: Explanation | None = field(default=None, repr=False)
    """`explain`'s run at `threshold`, made on the first explain call."""

    @property
    def nbytes(self) -> int:
        """Memory the entry holds (the image, every cached tensor)."""
        tensors = [self.masks, self.queries, self.result.id_map]
        for f in fields(self.det):  # a Detection, or an ExportedDetection (its features a dict)
            value = getattr(self.det, f.name)
            value = list(value.values()) if isinstance(value, dict) else value
            for v in value if isinstance(value, list) else [value]:
                tensors += [v.pred_logits, v.pred_boxes] if isinstance(v, LayerOutput) else [v]
        if self.explanation is not None:
            e = self.explanation
            tensors += [e.c5_norm, e.pred_logits, e.attention_maps, e.mask_logits, e.result.id_map]
        size = sum(t.numel() * t.element_size() if isinstance(t, Tensor) else t.nbytes
                   for t in tensors if isinstance(t, Tensor | np.ndarray))
        return self.image.nbytes + size


class Engine:
    """Segmentation with a cache of network outputs, around a `Predictor` and its settings."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def segment(self, image: np.ndarray, threshold: float | None = None) -> Entry:
        """[H, W, 3] uint8 -> its entry; threshold: None for the predictor's."""
        return self.segment_batch([image], threshold)[0]

    @torch.inference_mode()
    def segment_batch(self, images: list[np.ndarray], threshold: float | None = None) -> list[Entry]:
        """Images run as one batch of `predict --batch-size len(images)` -> their entries."""
        p = self.predictor
        t = p.settings.threshold if threshold is None else threshold
        done = p.segment_arrays(images, threshold=t, keep_det=True)
        return [Entry(image, s.det.one(s.row), s.size, s.padded, s.kept, s.masks, t,
                      PanopticResult(s.result.id_map.cpu(), s.result.segments_info))
                for image, s in zip(images, done, strict=True)]

    @torch.inference_mode()
    def rethreshold(self, entry: Entry, threshold: float) -> PanopticResult:
        """The entry's segmentation at `threshold` (the entry then holds it)."""
        if threshold == entry.threshold:
            return entry.result
        p, s = self.predictor, self.predictor.settings
        logits, boxes = entry.det.pred_logits[0].float(), entry.det.pred_boxes[0].float()
        kept = select_queries(logits[None], threshold)[0]
        known = entry.queries.tolist()
        new = [q for q in kept.tolist() if q not in known]
        if new:
            more = torch.tensor(new, dtype=torch.long, device=entry.queries.device)
            masks = p.model.predict_masks(entry.det, [more], chunk=s.mask_chunk)[0].float()
            entry.queries = torch.cat([entry.queries, more])
            entry.masks = torch.cat([entry.masks, masks])
            known += new
        rows = torch.tensor([known.index(q) for q in kept.tolist()], dtype=torch.long,
                            device=entry.masks.device)
        result = panoptic_postprocess(logits, entry.masks.index_select(0, rows), entry.input_size,
                                      entry.padded_size, entry.image.shape[:2], p.is_thing,
                                      threshold=threshold, stuff_merge=s.stuff_merge, query_idx=kept,
                                      pred_boxes=boxes, overlap_threshold=s.overlap_threshold,
                                      pixel_assignment=s.pixel_assignment)
        entry.threshold, entry.explanation = threshold, None
        entry.result = PanopticResult(result.id_map.cpu(), result.segments_info)
        return entry.result

    def explain(self, entry: Entry, segment_id: int) -> dict[str, Any] | None:
        """That segment's per-head attention maps and mask logits as PNG pictures over the
        image (`explain`'s data and figures); None when the entry has no such segment.

        `explain` runs the image alone; for an entry that ran in a padded batch, whose segments
        may differ a little, the segment explained is the one of that run with the same class
        that overlaps it most (`NoCounterpart` when there is none)."""
        if not any(int(s["id"]) == segment_id for s in entry.result.segments_info):
            return None
        if entry.explanation is None:
            entry.explanation = explain(self.predictor, entry.image, threshold=entry.threshold)
        e = entry.explanation
        alone = _same_segment(entry.result, e.result, segment_id)
        if alone is None:
            raise NoCounterpart(f"segment {segment_id} came from a batch of requests and has no "
                                "segment of its class when the image runs alone, as explain runs it")
        segment_id = alone
        q = e.query_of_segment(segment_id)
        figures = Figures(e)
        size = thumb_size(entry.image.shape[:2], EXPLAIN_LONG_SIDE)
        att = e.attention_maps[q.index]  # M x h/32 x w/32
        return {
            "query": q.index,
            "category_id": q.label,
            "name": e.categories.name(q.label),
            "score": round(e.segment_score(segment_id), 5),
            "heads": [{"head": m, "mass": round(float(att[m].sum()), 5), "picture": panel}
                      for m, panel in enumerate(figures.attention(q.index, size))],
            "mask_logits": figures.logits(q.index, size),
        }


class NoCounterpart(LookupError):
    """A segment of a batched request that the image's run alone does not have."""


def _same_segment(ours: PanopticResult, alone: PanopticResult, segment_id: int) -> int | None:
    """The id in `alone` of segment `segment_id` of `ours` (the same image): itself when the two
    id maps agree, else the segment of its class with the largest intersection over union."""
    if torch.equal(ours.id_map, alone.id_map):
        return segment_id
    category = next(int(s["category_id"]) for s in ours.segments_info if int(s["id"]) == segment_id)
    mask = ours.id_map == segment_id
    best, best_iou = None, 0.0
    for s in alone.segments_info:
        if int(s["category_id"]) == category:
            other = alone.id_map == int(s["id"])
            iou = float((mask & other).sum()) / max(1, int((mask | other).sum()))
            if iou > best_iou:
                best, best_iou = int(s["id"]), iou
    return best


class ResultCache:
    """The entries of the latest requests, least recently used dropped first, holding at most
    `max_bytes` (an entry larger than that is not kept). Thread-safe."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Entry, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, key: str, entry: Entry) -> bool:
        size = entry.nbytes
        with self._lock:
            self._drop(key)
            if size > self.max_bytes:
                return False
            while self._entries and self._bytes + size > self.max_bytes:
                self._drop(next(iter(self._entries)))
            self._entries[key] = (entry, size)
            self._bytes += size
            return True

    def get(self, key: str) -> Entry | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
            return hit[0]

    def _drop(self, key: str) -> None:
        hit = self._entries.pop(key, None)
        if hit is not None:
            self._bytes -= hit[1]

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
