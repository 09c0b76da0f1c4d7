"""A batch through the whole inference path: detect, select the confident queries, the mask
head for those only, panoptic post-processing. `Predictor`, training's validation and `explain`
all run this one function, so their segments agree by construction.

Pure tensor code, like the rest of `model/`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..settings import MaskChunk, PixelAssignment
from ..structures import PaddedBatch, PanopticResult
from .detr import Detection
from .postprocess import StuffMerge, panoptic_postprocess, select_queries


@dataclass
class Segmentation:
    """One image's way through the network."""

    result: PanopticResult
    """At the requested output size."""
    logits: Tensor
    """[N, K+1] float32 class logits of every query."""
    boxes: Tensor
    """[N, 4] float32 normalised (cx, cy, w, h) of every query."""
    kept: Tensor
    """[Q] int64: the queries the threshold kept, the ones the mask head ran for."""
    masks: Tensor
    """[Q, h/4, w/4] float32 mask logits of the kept queries (h, w: the network's input,
    padded when the image ran in a padded batch)."""
    size: tuple[int, int]
    """(h, w) of the image as the network saw it (after DETR's resize)."""
    padded: tuple[int, int]
    """(h, w) of the batch it ran in: `size` padded to the largest image's (`size` when alone)."""
    det: Detection | None = None
    """With `keep_det`: the `detect` outputs of the batch the image ran in, row `row`."""
    row: int = 0


def segment(
    model: torch.nn.Module,
    batch: PaddedBatch,
    out_sizes: list[tuple[int, int]],
    is_thing: Tensor,
    *,
    threshold: float = 0.85,
    stuff_merge: StuffMerge = "original",
    overlap_threshold: float = 0.0,
    pixel_assignment: PixelAssignment = "mask",
    mask_chunk: MaskChunk = "auto",
    together: bool = True,
    return_attention: bool = False,
    keep_det: bool = False,
) -> list[Segmentation]:
    """Panoptic segmentations of a batch, the mask head run for the kept queries only.

    batch: normalised images in the model's device and dtype; out_sizes: (H, W) of each result;
    is_thing: [K] bool by class index. mask_chunk: queries per mask-head call (the same masks,
    less memory): an int, None for all at once, or "auto" (see `detr.MASK_CHUNK_BYTES`).
    together: run the batch through the network as one padded tensor (what a GPU wants);
    False: every image alone at its own size, so each result is exactly the image's
    batch-of-one result (what a CPU wants: batching saves no arithmetic there and the larger
    activations cost page faults, see benchmarks/RESULTS.md).
    keep_det / return_attention: keep `detect`'s outputs (with the attention maps) in the
    results, e.g. for `explain`.
    """
    if len(out_sizes) != len(batch):
        raise ValueError(f"out_sizes has {len(out_sizes)} entries for {len(batch)} images")
    if together:
        return _segment(model, batch, out_sizes, is_thing, threshold, stuff_merge, overlap_threshold,
                        pixel_assignment, mask_chunk, return_attention, keep_det)
    return [s for i in range(len(batch))
            for s in _segment(model, batch.alone(i), out_sizes[i : i + 1], is_thing, threshold, stuff_merge,
                              overlap_threshold, pixel_assignment, mask_chunk, return_attention, keep_det)]


def _segment(model, batch, out_sizes, is_thing, threshold, stuff_merge, overlap_threshold, pixel_assignment,
             mask_chunk, return_attention, keep_det) -> list[Segmentation]:
    det = model.detect(batch, return_attention=return_attention)
    # post-processing in float32 whatever the network's dtype (bfloat16 weights, autocast)
    logits, boxes = det.pred_logits.float(), det.pred_boxes.float()
    kept = select_queries(logits, threshold)
    masks = model.predict_masks(det, kept, chunk=mask_chunk)
    padded = tuple(batch.images.shape[-2:])
    out = []
    for i, (size, out_size) in enumerate(zip(batch.sizes, out_sizes, strict=True)):
        m = masks[i].float()
        result = panoptic_postprocess(logits[i], m, size, padded, out_size, is_thing, threshold=threshold,
                                      stuff_merge=stuff_merge, query_idx=kept[i], pred_boxes=boxes[i],
                                      overlap_threshold=overlap_threshold, pixel_assignment=pixel_assignment)
        out.append(Segmentation(result, logits[i], boxes[i], kept[i], m, size, padded,
                                det if keep_det else None, i))
    return out
