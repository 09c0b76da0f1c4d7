"""Explain one prediction: what every object query saw, predicted and became.

DETR's panoptic head is explainable by construction. Each of the N object queries gives
class scores and a box; the mask head's attention turns it into M attention maps over the
encoder output (H/32 x W/32, one per head, softmax joint over heads and positions); an
FPN-style head turns those into mask logits at H/4; post-processing keeps the confident
queries and takes the per-pixel argmax of their masks. `explain` runs the network once
(`detect(..., return_attention=True)`, then the mask head for the kept queries only) and
returns all of it as tensors, plus why each dropped query was dropped. Drawing and files
live in `explain.report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..ops.boxes import cxcywh_to_xyxy
from ..structures import Categories, PaddedBatch, PanopticResult

if TYPE_CHECKING:
    from ..predictor import Predictor

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
    """[h/32, w/32] L2 norm over channels of the backbone's last stage (C5); h/16 for DC5."""
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
    c5_stride: int = 32
    """Input pixels per cell of the C5 / attention grid (16 for dilated "DC5" models)."""
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

    def segment_score(self, segment_id: int) -> float:
        """The segment's score as post-processing gives it (with stuff merged as a union, the
        best of its queries), else its query's."""
        s = self.segment_info(segment_id)
        return float(s.get("score", self.query_of_segment(segment_id).score))

    def mask_logits_of(self, query: int) -> Tensor | None:
        """[h/4, w/4] mask logits of `query`, or None when its mask was not computed."""
        hit = (self.mask_queries == query).nonzero()
        return self.mask_logits[int(hit[0, 0])] if len(hit) else None


def _softmax_summary(pred_logits: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """[N, K+1] logits -> (score [N], label [N]) over all K+1 classes and (best_score [N],
    best_class [N]) over the K real classes, as softmax probabilities."""
    probs = pred_logits.float().softmax(-1)
    score, label = probs.max(-1)
    best_score, best_class = probs[:, :-1].max(-1)
    return score, label, best_score, best_class


def segment_queries(result: PanopticResult, selected: Tensor, mask_logits: Tensor,
                    input_size: tuple[int, int], labels: Tensor, is_thing: Tensor) -> dict[int, int]:
    """Which selected query made each segment of `result`.

    Uses the segments' own `query` entries when post-processing records them. Otherwise:
    - a stuff segment belongs to the first selected query of its class: post-processing
      merges duplicated stuff into that query (both of its `stuff_merge` modes), whichever
      query won most of the pixels;
    - thing segments are matched one to one, within their class, to the selected thing
      queries by pixels: each query claims the mask cells where its logits win the argmax
      over the selected queries, and a segment goes to the query claiming most of its pixels
      (scipy's assignment, so two instances of one class never share a query).

    selected: [Q] query indices (ascending), mask_logits: [Q, h/4, w/4], labels: [N] class
    per query, is_thing: [K] bool per class. Returns segment id -> query index.
    """
    segs = result.segments_info
    if not segs:
        return {}
    if all("query" in s for s in segs):
        return {int(s["id"]): int(s["query"]) for s in segs}
    sel_labels = labels[selected].tolist()
    out: dict[int, int] = {}
    things = []
    for s in segs:
        cat = int(s["category_id"])
        if bool(is_thing[cat]):
            things.append(s)
        elif cat in sel_labels:
            out[int(s["id"])] = int(selected[sel_labels.index(cat)])
    if not things:
        return out
    from scipy.optimize import linear_sum_assignment

    ih, iw = input_size
    h4, w4 = -(-ih // 4), -(-iw // 4)  # the valid part of the stride-4 grid
    win = mask_logits[:, :h4, :w4].argmax(0)  # h/4 x w/4, index into `selected`
    H, W = result.size
    ys = ((torch.arange(H) + 0.5) * ih / H / 4).long().clamp_(max=h4 - 1)
    xs = ((torch.arange(W) + 0.5) * iw / W / 4).long().clamp_(max=w4 - 1)
    claimed = win[ys[:, None], xs[None, :]]  # H x W: the query winning under each pixel
    q = len(selected)
    ids = torch.tensor([int(s["id"]) for s in things])
    # counts[s, j]: pixels of thing segment s under query j's winning cells
    seg_index = torch.full((int(result.id_map.max()) + 1,), -1, dtype=torch.long)
    seg_index[ids] = torch.arange(len(things))
    si = seg_index[result.id_map.clamp(min=0)]
    valid = si >= 0
    counts = torch.bincount(si[valid] * q + claimed[valid], minlength=len(things) * q).view(len(things), q)
    cats = torch.tensor([int(s["category_id"]) for s in things])
    same = cats[:, None] == labels[selected][None, :]
    cost = torch.where(same, -counts.double(), torch.tensor(1e12, dtype=torch.double))
    rows, cols = linear_sum_assignment(cost.numpy())
    out.update({int(ids[r]): int(selected[c]) for r, c in zip(rows, cols, strict=True) if bool(same[r, c])})
    return out


def query_statuses(pred_logits: Tensor, pred_boxes: Tensor, selected: Tensor, result: PanopticResult,
                   seg_of_query: dict[int, int], categories: Categories) -> list[QueryInfo]:
    """Status of every query, in the order post-processing decides it.

    - "no-object": the no-object class wins the softmax;
    - "below threshold": a real class wins but the query was not selected;
    - selected and matched to a segment: "kept";
    - selected, a stuff class, and another selected query of that class made a segment:
      "duplicated stuff" (post-processing merged its pixels into that segment);
    - any other selected query: "<= 4 pixels" (it won too few pixels to stay).

    pred_logits: [N, K+1]; pred_boxes: [N, 4] (x0, y0, x1, y1) in image pixels; selected: [Q]
    query indices kept by the threshold; seg_of_query: query -> segment id.
    """
    score, label, best_score, best_class = _softmax_summary(pred_logits)
    no_object = pred_logits.shape[-1] - 1
    chosen = set(selected.tolist())
    seg_of_class = {}
    for s in result.segments_info:
        if not s.get("isthing", categories.isthing(int(s["category_id"]))):
            seg_of_class.setdefault(int(s["category_id"]), int(s["id"]))
    out = []
    for i in range(pred_logits.shape[0]):
        lab = int(label[i])
        seg = None
        if lab == no_object:
            status = NO_OBJECT
        elif i not in chosen:
            status = BELOW_THRESHOLD
        elif i in seg_of_query:
            status, seg = KEPT, seg_of_query[i]
        elif not categories.isthing(lab) and lab in seg_of_class:
            status, seg = DUPLICATED_STUFF, seg_of_class[lab]
        else:
            status = SMALL_AREA
        x0, y0, x1, y1 = (float(v) for v in pred_boxes[i].tolist())
        out.append(QueryInfo(i, status, seg, lab, float(score[i]), int(best_class[i]), float(best_score[i]),
                             (x0, y0, x1, y1)))
    return out


def as_predictor(source: Any, categories: Categories | None = None, **settings: Any) -> Predictor:
    """A `Predictor` from a Predictor, a `loading.Pretrained`, or a bare model (or an object
    holding one as `.model`, with `.categories`) plus `categories`.

    settings: `settings.InferenceSettings` fields to set; None values are left as the source
    has them: a Predictor's own settings, else what a new Predictor takes (the checkpoint's
    recommendation, else DETR's defaults).
    """
    from ..loading import Pretrained
    from ..predictor import Predictor

    given = {k: v for k, v in settings.items() if v is not None}
    if isinstance(source, Predictor):
        if not given:
            return source
        return Predictor(source.pretrained, source.settings.replace(**given), batch_size=source.batch_size)
    if not isinstance(source, Pretrained) and not hasattr(source, "detect"):
        categories = categories or getattr(source, "categories", None)
        source = getattr(source, "model", source)
    if not isinstance(source, Pretrained) and categories is None:
        raise ValueError("explain needs the categories: pass a Predictor/Pretrained or categories=")
    return Predictor(source, categories=categories, **given)


@torch.inference_mode()
def explain(source: Any, image: np.ndarray | str, threshold: float | None = None, *,
            categories: Categories | None = None, size: int | None = None, max_size: int | None = None,
            extra_queries: list[int] | None = None, top_dropped: int = 0) -> Explanation:
    """Run the network once on `image` and explain its panoptic prediction.

    source: a `Predictor` (its settings are used), a `loading.Pretrained`, or a bare
    DETRPanoptic with `categories` (see `as_predictor`);
    image: [H, W, 3] uint8 RGB or a path (read with `data.images.load_image`);
    threshold, size, max_size: override the predictor's (a new one's: the checkpoint's, else
    DETR's 0.85, 800, 1333);
    extra_queries: dropped queries whose mask logits should be computed too (for a look at
    what they would have segmented); they do not enter the post-processing;
    top_dropped: also compute them for this many of the queries the threshold dropped, those
    with the highest best-class score (the near misses).

    One `detect(..., return_attention=True)` gives classes, boxes, C5 and the attention maps
    of all N queries; the mask head then runs for the selected queries only and the
    predictor's post-processing makes the result: `model.inference.segment`, predict's own
    path, so the segments are `predict`'s.
    """
    from ..data.images import load_image, preprocess
    from ..model.inference import segment

    pred = as_predictor(source, categories, threshold=threshold, size=size, max_size=max_size)
    model, cats = pred.model, pred.categories
    meta: dict[str, Any] = {"weights": pred.pretrained.source}
    if not isinstance(image, np.ndarray):
        meta["image"] = str(image)
        image = load_image(image)
    x = preprocess(image, pred.size, pred.max_size)  # 3 x h x w
    input_size = (int(x.shape[1]), int(x.shape[2]))
    batch = PaddedBatch.from_images([x]).to(pred.device, pred.dtype)
    # predict's path, with detect's outputs (attention maps included) kept for the pictures
    seg = segment(model, batch, [image.shape[:2]], pred.is_thing, threshold=pred.threshold,
                  stuff_merge=pred.stuff_merge, overlap_threshold=pred.settings.overlap_threshold,
                  pixel_assignment=pred.settings.pixel_assignment,
                  mask_chunk=pred.mask_chunk, return_attention=True,
                  keep_det=True)[0]
    det, logits, selected, masks = seg.det, seg.logits, seg.kept, seg.masks
    result = PanopticResult(seg.result.id_map.cpu(), seg.result.segments_info)

    mask_queries, mask_logits = selected, masks
    chosen = set(selected.tolist())
    extra = [q for q in dict.fromkeys(extra_queries or []) if q not in chosen]
    if top_dropped > 0:
        best = logits.softmax(-1)[:, :-1].max(-1).values
        near = [q for q in best.argsort(descending=True).tolist() if q not in chosen and q not in extra]
        extra += near[:top_dropped]
    if extra:  # a separate mask-head call: the selected queries' logits stay as predict has them
        more = torch.as_tensor(extra, dtype=torch.long, device=pred.device)
        mask_queries = torch.cat([selected, more])
        more_masks = pred.model.predict_masks(det, [more], chunk=pred.mask_chunk)[0].float()
        mask_logits = torch.cat([masks, more_masks])

    logits = logits.cpu()
    H, W = image.shape[:2]
    boxes_px = cxcywh_to_xyxy(seg.boxes.cpu()) * torch.tensor([W, H, W, H])
    labels = logits.argmax(-1)
    seg_of_query = {q: s for s, q in segment_queries(result, selected.cpu(), masks.float().cpu(),
                                                       input_size, labels, pred.is_thing.cpu()).items()}
    queries = query_statuses(logits, boxes_px, selected.cpu(), result, seg_of_query, cats)
    threshold = pred.threshold
    c5 = det.layer4[0].float()  # C5 x h/32 x w/32
    stride = 16 if getattr(getattr(model, "config", None), "dilation", False) else 32
    return Explanation(
        image=image, input_size=input_size, c5_norm=c5.norm(dim=0).cpu(),
        pred_logits=logits, pred_boxes=seg.boxes.cpu(),
        attention_maps=det.attention_maps[0].float().cpu(),
        mask_queries=mask_queries.cpu(), mask_logits=mask_logits.float().cpu(),
        result=result, queries=queries, categories=cats, threshold=threshold, c5_stride=stride,
        meta=meta,
    )
