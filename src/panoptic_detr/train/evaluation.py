"""Validation PQ during training: model -> panoptic post-processing -> eval/pq.py.

PQ is measured in the frame the network sees (the validation transform's resize), against the
ground truth carried by each Target (masks, categories, crowd flags), so it works for any
dataset that yields Targets. With several processes each takes every world_size-th image and
the matching statistics are summed across processes before averaging, as one process would.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..data.collate import collate_padded
from ..eval.pq import PQStat, pq_image, pq_results
from ..model.inference import segment
from ..structures import Categories, PaddedBatch, Target
from .distributed import DistInfo


def target_panoptic(target: Target) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """(id_map [H, W] int64, segments_info) of a Target; ids 1..S in segment order."""
    h, w = target.masks.shape[-2:]
    id_map = torch.zeros((h, w), dtype=torch.int64)
    segments = []
    for s in range(len(target)):
        id_map[target.masks[s].cpu()] = s + 1
        segments.append({"id": s + 1, "category_id": int(target.labels[s]), "iscrowd": int(target.iscrowd[s]),
                         "area": int(target.masks[s].sum())})
    return id_map, segments


@torch.no_grad()
def predict_panoptic(model: nn.Module, batch: PaddedBatch, sizes: list[tuple[int, int]],
                     categories: Categories, threshold: float, overlap_threshold: float = 0.0,
                     pixel_assignment: str = "mask") -> list:
    """PanopticResults of a batch at `sizes` (per image), masks computed for kept queries only."""
    done = segment(model, batch, sizes, categories.thing_mask(batch.images.device), threshold=threshold,
                   overlap_threshold=overlap_threshold, pixel_assignment=pixel_assignment)
    return [s.result for s in done]


def make_evaluator(categories: Categories, threshold: float = 0.85, batch_size: int = 4,
                   overlap_threshold: float = 0.0, pixel_assignment: str = "mask"):
    """An `evaluate_fn(model, val_set, device, info) -> {"pq", "pq_th", "pq_st"}` (in %), with the
    post-processing's `threshold`, `overlap_threshold` and `pixel_assignment` (see
    `settings.InferenceSettings`)."""

    def evaluate(
        model: nn.Module, val_set: Dataset, device: torch.device, info: DistInfo
    ) -> dict[str, float]:
        mine = Subset(val_set, range(info.rank, len(val_set), info.world_size))  # type: ignore[arg-type]
        stat = PQStat()
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        for batch, targets in DataLoader(mine, batch_size=batch_size, collate_fn=collate_padded):
            sizes = [t.size for t in targets]
            batch = batch.to(device=device, dtype=dtype)
            results = predict_panoptic(model, batch, sizes, categories, threshold, overlap_threshold,
                                       pixel_assignment)
            for result, target in zip(results, targets, strict=True):
                gt_ids, gt_segments = target_panoptic(target)
                pred_ids = result.id_map.cpu().numpy()
                stat += pq_image(gt_ids.numpy(), gt_segments, pred_ids, result.segments_info)
        if info.enabled:
            stats: list[Any] = [None] * info.world_size
            dist.all_gather_object(stats, stat)
            stat = PQStat()
            for s in stats:
                stat += s
        res = pq_results(stat, categories.items)
        return {"pq": 100 * res["All"]["pq"], "pq_th": 100 * res["Things"]["pq"],
                "pq_st": 100 * res["Stuff"]["pq"]}

    return evaluate
