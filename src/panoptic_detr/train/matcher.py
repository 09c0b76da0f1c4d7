"""Hungarian matching of predictions to ground-truth segments (DETR's bipartite matcher).

The cost of assigning query q to segment s is

    w_class * (-p_q(label_s)) + w_bbox * |box_q - box_s|_1 + w_giou * (-GIoU(box_q, box_s))

computed for the whole batch in one matrix product, then split per image and solved with
scipy's `linear_sum_assignment`. Each segment gets exactly one query; the other queries are
matched to no-object by the criterion. With mask costs (`MatchCosts.mask_weight`,
`dice_weight`; Mask2Former's), every query's mask logits are compared with every segment's
mask of the same image: w_mask * mean sigmoid cross-entropy + w_dice * (1 - soft Dice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from ..ops.boxes import cxcywh_to_xyxy, generalized_box_iou
from .config import MatchCosts

__all__ = ["DETR_COSTS", "MatchCosts", "hungarian_match", "mask_cost_matrix", "match_cost_matrix"]

DETR_COSTS = MatchCosts()
"""DETR's matching costs (no mask costs)."""


def match_cost_matrix(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    labels: Tensor,
    boxes: Tensor,
    costs: MatchCosts = DETR_COSTS,
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


def mask_cost_matrix(pred_masks: Tensor, target_masks: Tensor, costs: MatchCosts) -> Tensor:
    """[N, S] mask costs of one image: pred_masks [N, h, w] logits, target_masks [S, H, W] in
    [0, 1] (area-averaged to h x w first, so a cell holds the share of it the segment covers)."""
    x = pred_masks.float().flatten(1)  # N x P
    t = F.adaptive_avg_pool2d(target_masks[None].float(), pred_masks.shape[-2:])[0].flatten(1)  # S x P
    cost = x.new_zeros((x.shape[0], t.shape[0]))
    if costs.mask_weight > 0:  # BCE(x, t) = softplus(x) - x t, averaged over the pixels
        cost = cost + costs.mask_weight * (F.softplus(x).sum(1, keepdim=True) - x @ t.T) / x.shape[1]
    if costs.dice_weight > 0:
        p = x.sigmoid()
        dice = (2 * p @ t.T + 1) / (p.sum(1, keepdim=True) + t.sum(1)[None] + 1)
        cost = cost + costs.dice_weight * (1 - dice)
    return cost


@torch.no_grad()
def hungarian_match(
    pred_logits: Tensor,
    pred_boxes: Tensor,
    labels: list[Tensor],
    boxes: list[Tensor],
    costs: MatchCosts = DETR_COSTS,
    pred_masks: list[Tensor] | None = None,
    target_masks: list[Tensor] | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """Optimal one-to-one assignment per image.

    pred_logits: [B, N, K+1], pred_boxes: [B, N, 4]; labels[i]: [S_i], boxes[i]: [S_i, 4].
    pred_masks[i]: [N, h, w] mask logits and target_masks[i]: [S_i, H, W], the same padded size
    for every image (both needed when `costs.uses_masks`, ignored otherwise).
    Returns one (query_indices [S_i], target_indices [S_i]) int64 CPU pair per image, sorted
    by query index (the order DETR's matcher returns).
    """
    if costs.uses_masks and (pred_masks is None or target_masks is None):
        raise ValueError("mask matching costs need pred_masks and target_masks")
    sizes = [int(lab.shape[0]) for lab in labels]
    if sum(sizes) == 0:
        empty = torch.empty(0, dtype=torch.int64)
        return [(empty, empty) for _ in sizes]
    c = match_cost_matrix(pred_logits, pred_boxes, torch.cat(labels), torch.cat(boxes), costs)
    c = c.detach().double().cpu()  # B x N x T (float64: numpy has no bfloat16)
    out = []
    for i, block in enumerate(c.split(sizes, dim=-1)):
        cost = block[i]
        if costs.uses_masks and sizes[i]:
            cost = cost + mask_cost_matrix(pred_masks[i], target_masks[i], costs).double().cpu()
        q, t = linear_sum_assignment(cost.numpy())
        out.append((torch.as_tensor(q, dtype=torch.int64), torch.as_tensor(t, dtype=torch.int64)))
    return out
