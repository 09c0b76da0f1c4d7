"""Hungarian matching of predictions to ground-truth segments (DETR's bipartite matcher).

The cost of assigning query q to segment s is

    w_class * (-p_q(label_s)) + w_bbox * |box_q - box_s|_1 + w_giou * (-GIoU(box_q, box_s))

computed for the whole batch in one matrix product, then split per image and solved with
scipy's `linear_sum_assignment`. Each segment gets exactly one query; the other queries are
matched to no-object by the criterion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..ops.boxes import cxcywh_to_xyxy, generalized_box_iou


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the three matching costs (DETR's defaults)."""

    class_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0


def match_cost_matrix(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    labels: Tensor,
    boxes: Tensor,
    costs: MatchCosts = MatchCosts(),
) -> Tensor:
    """Pairwise costs between every prediction of the batch and every target of the batch.

    pred_logits: [B, N, K+1], pred_boxes: [B, N, 4] normalised cxcywh,
    labels: [T] class indices and boxes: [T, 4] of all images' targets concatenated.
    Returns [B, N, T] float (rows of image b are only meaningful for b's own targets).
    """
    b, n = pred_logits.shape[:2]
    prob = pred_logits.flatten(0, 1).softmax(-1)  # BN x K+1
    out_boxes = pred_boxes.flatten(0, 1)  # BN x 4
    # -p(label) stands in for the log-likelihood: bounded, so it balances with the box costs
    cost_class = -prob[:, labels]  # BN x T
    cost_bbox = torch.cdist(out_boxes, boxes.to(out_boxes.dtype), p=1)
    cost_giou = -generalized_box_iou(cxcywh_to_xyxy(out_boxes), cxcywh_to_xyxy(boxes.to(out_boxes.dtype)))
    c = costs.bbox_weight * cost_bbox + costs.class_weight * cost_class + costs.giou_weight * cost_giou
    return c.view(b, n, -1)


@torch.no_grad()
def hungarian_match(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    labels: list[Tensor],
    boxes: list[Tensor],
    costs: MatchCosts = MatchCosts(),
) -> list[tuple[Tensor, Tensor]]:
    """Optimal one-to-one assignment per image.

    pred_logits: [B, N, K+1], pred_boxes: [B, N, 4]; labels[i]: [S_i], boxes[i]: [S_i, 4].
    Returns one (query_indices [S_i], target_indices [S_i]) int64 CPU pair per image, sorted
    by query index (the order DETR's matcher returns).
    """
    sizes = [int(lab.shape[0]) for lab in labels]
    if sum(sizes) == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return [(empty, empty) for _ in sizes]
    c = match_cost_matrix(pred_logits, pred_boxes, torch.cat(labels), torch.cat(boxes), costs)
    c = c.detach().double().cpu()  # B x N x T (float64: numpy has no bfloat16)
    out = []
    for i, block in enumerate(c.split(sizes, dim=-1)):
        q, t = linear_sum_assignment(block[i].numpy())
        out.append((torch.as_tensor(q, dtype=torch.int64), torch.as_tensor(t, dtype=torch.int64)))
    return out
