"""DETR's set criterion: match predictions to segments, then classification, box and mask losses.

Losses (all normalised by the number of ground-truth segments across processes, `num_boxes`):
- `loss_ce`: cross-entropy over K+1 classes, no-object down-weighted by `eos_coef`;
- `loss_bbox` (L1) and `loss_giou` on the matched boxes;
- `loss_mask` (sigmoid focal, alpha 0.25, gamma 2) and `loss_dice` on the matched queries' mask
  logits, upsampled (bilinear) to the padded target size;
- the class and box losses again for every auxiliary decoder layer (`loss_ce_0`, ...), each
  with its own matching;
- optionally (`semantic` > 0, not DETR's) `loss_semantic`, a dense class loss on the encoder
  memory, which helps learning from scratch on short budgets (see `semantic_loss`);
- optionally (`segment` > 0, not DETR's) `loss_segment`, the class loss of each ground-truth
  segment's mask-pooled encoder memory (see `segment_class_loss`).

The mask head is per query, so only the matched queries' masks enter the loss: the criterion
asks the model for exactly those (`model.predict_masks(det, queries)`), which gives the same
loss and gradients as computing all N masks and selecting, at a fraction of the cost.
Crowd segments are dropped before matching: they serve evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ..ops.boxes import cxcywh_to_xyxy, generalized_box_iou
from ..structures import Target
from .matcher import MatchCosts, hungarian_match


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms in the total (DETR's panoptic defaults)."""

    ce: float = 1.0
    bbox: float = 5.0
    giou: float = 2.0
    mask: float = 1.0
    """Sigmoid focal loss on mask logits."""
    dice: float = 1.0
    eos_coef: float = 0.1
    """Relative class weight of no-object in the cross-entropy."""
    semantic: float = 0.0
    """Dense class loss on the encoder memory through the class head (`semantic_loss`);
    0, the default, is DETR's loss."""
    segment: float = 0.0
    """Class loss of every ground-truth segment's mask-pooled encoder memory through the class
    head (`segment_class_loss`); 0, the default, is DETR's loss."""


def dice_loss(logits: Tensor, targets: Tensor, num_boxes: float) -> Tensor:
    """logits, targets: [S, P] (P pixels). Sum over masks of 1 - soft Dice, / num_boxes."""
    p = logits.sigmoid()
    numerator = 2 * (p * targets).sum(1)
    denominator = p.sum(1) + targets.sum(1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


def focal_loss(logits: Tensor, targets: Tensor, num_boxes: float) -> Tensor:
    """logits, targets: [S, P]. Per-mask mean of the sigmoid focal loss, summed, / num_boxes."""
    loss = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none")
    return loss.mean(1).sum() / num_boxes


def masks_on_memory_grid(targets: list[Target], memory: Tensor) -> list[Tensor]:
    """Each image's segment masks [S, h, w] as the share of every memory cell's pixels they
    cover: padded to the batch's size (targets are bottom/right-padded like the images), then
    average-pooled to the memory grid [B, d, h, w]."""
    h, w = memory.shape[-2:]
    ph = max(int(t.masks.shape[-2]) for t in targets)
    pw = max(int(t.masks.shape[-1]) for t in targets)
    out = []
    for t in targets:
        m = t.masks.to(device=memory.device, dtype=memory.dtype)
        out.append(F.adaptive_avg_pool2d(F.pad(m, (0, pw - m.shape[-1], 0, ph - m.shape[-2])), (h, w)))
    return out


def semantic_loss(
    model: nn.Module, det: dict, targets: list[Target], step_images: int | None = None
) -> Tensor:
    """The dense class loss (`LossWeights.semantic`): the model's class head applied to every
    encoder-memory cell, soft cross-entropy against the share of each class among the cell's
    pixels (crowd segments included: their class is known). Cells less than half covered by
    segments (void, padding) are left out. No new parameters: the memory learns to carry the
    classes in the form the decoder's class head reads.

    Each image's mean over its cells, summed and divided by `step_images` (the images of the
    whole optimiser step; default: this batch's), so micro-batches add up to the whole batch."""
    memory = det["memory"]  # B x d x h x w
    h, w = memory.shape[-2:]
    logits = model.class_embed(memory.flatten(2).transpose(1, 2))  # B x hw x K+1
    classes = logits.shape[-1]
    shares = []
    for t, cover in zip(targets, masks_on_memory_grid(targets, memory), strict=True):
        share = memory.new_zeros((classes, h, w))
        if len(t.labels):  # pool each segment, then add up per class: no K x H x W tensor
            share.index_add_(0, t.labels.to(memory.device), cover)
        shares.append(share)
    share = torch.stack(shares).flatten(2).transpose(1, 2)  # B x hw x K+1
    cover = share.sum(-1)
    keep = (cover > 0.5) & ~det["padding"].flatten(1)  # B x hw
    target = share / cover.clamp(min=1e-6)[..., None]
    ce = -(target * logits.log_softmax(-1)).sum(-1) * keep  # B x hw, 0 where left out
    per_image = ce.sum(1) / keep.sum(1).clamp(min=1)
    return per_image.sum() / (step_images or len(targets))


def segment_class_logits(model: nn.Module, det: dict, targets: list[Target]) -> tuple[Tensor, Tensor]:
    """Every ground-truth segment's encoder memory averaged over its mask (pooled to the memory
    grid, so a cell weighs by the segment's pixels in it), through the class head.
    Returns (logits [S, K+1], labels [S]) over the segments of all images."""
    memory = det["memory"]  # B x d x h x w
    pooled = [memory.new_zeros((0, memory.shape[1]))]
    labels = [torch.zeros(0, dtype=torch.long, device=memory.device)]
    for b, (t, cover) in enumerate(zip(targets, masks_on_memory_grid(targets, memory), strict=True)):
        if not len(t.labels):
            continue
        m = cover.flatten(1)
        weights = m / m.sum(1, keepdim=True).clamp(min=1e-6)  # S x hw, each row sums to 1
        pooled.append(weights @ memory[b].flatten(1).T)  # S x d
        labels.append(t.labels.to(memory.device))
    return model.class_embed(torch.cat(pooled)), torch.cat(labels)


def segment_class_loss(model: nn.Module, det: dict, targets: list[Target], num_boxes: Tensor) -> Tensor:
    """`LossWeights.segment`: the cross-entropy of `segment_class_logits` against each segment's
    class, summed and divided by `num_boxes` like the matched losses. Unlike the dense
    `semantic_loss`, where a small thing is a few cells among the image's, every segment counts
    once, so the memory learns the things' classes as fast as the stuff's: a clean signal that
    needs no matching. No new parameters."""
    logits, labels = segment_class_logits(model, det, targets)
    return F.cross_entropy(logits, labels, reduction="sum") / num_boxes


def drop_crowd(targets: list[Target]) -> list[Target]:
    """The targets without their crowd segments (kept for evaluation only)."""
    out = []
    for t in targets:
        keep = ~t.iscrowd.bool()
        if bool(keep.all()):
            out.append(t)
            continue
        out.append(
            Target(masks=t.masks[keep], labels=t.labels[keep], boxes=t.boxes[keep], iscrowd=t.iscrowd[keep],
                   area=t.area[keep], image_id=t.image_id, orig_size=t.orig_size, size=t.size,
                   segment_ids=None if t.segment_ids is None else t.segment_ids[keep])
        )
    return out


def mean_over_processes(x: Tensor) -> Tensor:
    """The mean of `x` over all processes (itself when not distributed); no gradient."""
    x = x.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


def normalizers(
    counts: list[int], num_queries: int, eos_coef: float, device: torch.device
) -> tuple[float, Tensor]:
    """(num_boxes, CE weight sum) of an optimiser step, averaged over processes.

    counts: non-crowd segments of every image of the step on this process (all micro-batches
    when accumulating gradients). num_boxes (>= 1) divides the box and mask losses; the CE weight
    sum (matched queries weigh 1, the others eos_coef) divides the cross-entropy. Both depend on
    the counts only and are the same on every process and micro-batch, so summed micro-batch
    losses equal one big batch's, and DDP's gradient average equals one process's."""
    matched = sum(min(c, num_queries) for c in counts)
    stats = torch.tensor([float(sum(counts)), float(matched), float(len(counts))], device=device)
    boxes, matched_t, images = mean_over_processes(stats).unbind()
    ce_weight = eos_coef * (images * num_queries - matched_t) + matched_t
    return float(boxes.clamp(min=1).item()), ce_weight


class SetCriterion(nn.Module):
    """Hungarian matching + DETR's losses. `forward` returns a dict of the unweighted terms
    and `loss`, their weighted sum (what to back-propagate)."""

    def __init__(
        self,
        num_classes: int,
        weights: LossWeights = LossWeights(),
        costs: MatchCosts | None = None,
        masks: bool = True,
    ) -> None:
        """num_classes: K (logits have K+1, the last is no-object). masks: add the mask losses."""
        super().__init__()
        self.num_classes = num_classes
        self.weights = weights
        self.costs = costs or MatchCosts()
        self.masks = masks
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = weights.eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def forward(
        self, model: nn.Module, det: dict, targets: list[Target], step_counts: list[int] | None = None
    ) -> dict[str, Tensor]:
        """model: the DETRPanoptic whose `detect` produced `det` (used for `predict_masks`).
        det: pred_logits [B, N, K+1], pred_boxes [B, N, 4], aux_outputs, mask-head inputs;
        with pred_masks [B, N, H/4, W/4] (the full forward) the matched masks are selected
        from it instead of computed.
        targets: one `Target` per image, on the model's device.
        step_counts: non-crowd segments per image of the whole optimiser step when it is split
        into micro-batches (see `normalizers`); default: this batch's."""
        all_targets = targets
        targets = drop_crowd(targets)
        counts = [len(t) for t in targets] if step_counts is None else step_counts
        logits = det["pred_logits"]
        num_boxes, ce_weight = normalizers(counts, logits.shape[1], self.weights.eos_coef, logits.device)
        labels = [t.labels for t in targets]
        boxes = [t.boxes for t in targets]

        indices = hungarian_match(det["pred_logits"], det["pred_boxes"], labels, boxes, self.costs)
        losses = self.class_box_losses(det, targets, indices, num_boxes, ce_weight)
        if self.masks:
            losses.update(self.mask_losses(model, det, targets, indices, num_boxes))
        if self.weights.semantic > 0:
            losses["loss_semantic"] = semantic_loss(model, det, all_targets, len(counts))
        if self.weights.segment > 0:
            losses["loss_segment"] = segment_class_loss(model, det, targets, num_boxes)
        for i, aux in enumerate(det.get("aux_outputs", [])):
            aux_indices = hungarian_match(aux["pred_logits"], aux["pred_boxes"], labels, boxes, self.costs)
            aux_losses = self.class_box_losses(aux, targets, aux_indices, num_boxes, ce_weight)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        losses["loss"] = self.weighted_total(losses)
        return losses

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        w = {"loss_ce": self.weights.ce, "loss_bbox": self.weights.bbox, "loss_giou": self.weights.giou,
             "loss_mask": self.weights.mask, "loss_dice": self.weights.dice,
             "loss_semantic": self.weights.semantic, "loss_segment": self.weights.segment}
        # aux terms carry a layer suffix: loss_ce_0 -> loss_ce
        return sum(w[k.rstrip("0123456789").rstrip("_")] * v for k, v in losses.items())

    def class_box_losses(
        self,
        out: dict,
        targets: list[Target],
        indices: list[tuple[Tensor, Tensor]],
        num_boxes: float,
        ce_weight: Tensor,
    ) -> dict[str, Tensor]:
        logits, pred_boxes = out["pred_logits"], out["pred_boxes"]  # B x N x K+1, B x N x 4
        device = logits.device
        batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
        query_idx = torch.cat([q for q, _ in indices]).to(device)

        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=device)
        target_classes[batch_idx, query_idx] = torch.cat(
            [t.labels[s.to(t.labels.device)] for t, (_, s) in zip(targets, indices, strict=True)]
        ).to(device)
        weight = self.empty_weight.to(device=device, dtype=logits.dtype)
        ce = F.cross_entropy(logits.transpose(1, 2), target_classes, weight, reduction="none")
        # F.cross_entropy's weighted mean, with the step's weight sum (see `normalizers`)
        loss_ce = ce.sum() / ce_weight

        src = pred_boxes[batch_idx, query_idx]  # T x 4
        tgt = torch.cat([t.boxes[s.to(t.boxes.device)] for t, (_, s) in zip(targets, indices, strict=True)])
        tgt = tgt.to(src)
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)))
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}

    def mask_losses(
        self,
        model: nn.Module,
        det: dict,
        targets: list[Target],
        indices: list[tuple[Tensor, Tensor]],
        num_boxes: float,
    ) -> dict[str, Tensor]:
        device = det["pred_logits"].device
        queries = [q.to(device) for q, _ in indices]
        if "pred_masks" in det:  # every query's mask was computed (the original's way)
            masks = [m[q] for m, q in zip(det["pred_masks"], queries, strict=True)]
        else:
            masks = model.predict_masks(det, queries)  # list of Q_i x H/4 x W/4
        src = torch.cat(masks)  # T x h x w
        # targets padded (bottom/right, zeros) to the batch's size, as the images are
        h = max(int(t.masks.shape[-2]) for t in targets)
        w = max(int(t.masks.shape[-1]) for t in targets)
        tgt = torch.cat(
            [
                F.pad(t.masks[s.to(t.masks.device)], (0, w - t.masks.shape[-1], 0, h - t.masks.shape[-2]))
                for t, (_, s) in zip(targets, indices, strict=True)
            ]
        ).to(device=device, dtype=src.dtype)  # T x H x W
        if src.shape[0] == 0:
            # no segment anywhere in the batch: a zero that still reaches every trainable
            # parameter, so DDP sees the same gradients ready on every process
            zero = sum(p.view(-1)[0] for p in model.parameters() if p.requires_grad) * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        src = F.interpolate(src[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        src, tgt = src.flatten(1), tgt.flatten(1)
        return {"loss_mask": focal_loss(src, tgt, num_boxes), "loss_dice": dice_loss(src, tgt, num_boxes)}


class ModelWithLoss(nn.Module):
    """The model and its criterion as one module, so that one `forward` (the one DDP wraps and
    synchronises) runs detection, matching, the mask head on matched queries and the losses."""

    def __init__(self, model: nn.Module, criterion: SetCriterion, all_query_masks: bool = False) -> None:
        """all_query_masks: run the full forward (masks of all N queries, the original's way)
        and select the matched ones; the same loss, for comparison only."""
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.all_query_masks = all_query_masks

    def forward(
        self, batch, targets: list[Target], step_counts: list[int] | None = None
    ) -> dict[str, Tensor]:
        det = self.model(batch) if self.all_query_masks else self.model.detect(batch)
        return self.criterion(self.model, det, targets, step_counts)
