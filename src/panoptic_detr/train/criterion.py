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

The criterion sees tensors only, never the model: `model_with_loss.ModelWithLoss` runs the
network and calls these pieces in turn (match, class and box losses, the mask head for the
matched queries, mask losses, the class head on the memory, auxiliary losses, weighted total).
Crowd segments are dropped before matching: they serve evaluation only.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from ..model.detr import LayerOutput
from ..ops.boxes import cxcywh_to_xyxy, generalized_box_iou
from ..structures import Target
from .config import LossWeights
from .matcher import MatchCosts, hungarian_match

__all__ = ["LossWeights", "SetCriterion", "dice_loss", "drop_crowd", "focal_loss", "normalizers",
           "segment_class_loss", "segment_memory", "semantic_loss", "upsample_bilinear"]


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


def padded_masks(targets: list[Target]) -> list[Tensor]:
    """Each image's segment masks [S, H, W] padded (bottom/right, zeros) to the batch's largest
    size, as the images are."""
    h = max(int(t.masks.shape[-2]) for t in targets)
    w = max(int(t.masks.shape[-1]) for t in targets)
    return [F.pad(t.masks, (0, w - t.masks.shape[-1], 0, h - t.masks.shape[-2])) for t in targets]


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
    logits: Tensor, memory: Tensor, padding: Tensor, targets: list[Target], step_images: int | None = None
) -> Tensor:
    """The dense class loss (`LossWeights.semantic`): soft cross-entropy of the class head's
    logits on every encoder-memory cell against the share of each class among the cell's
    pixels (crowd segments included: their class is known). Cells less than half covered by
    segments (void, padding) are left out. No new parameters: the memory learns to carry the
    classes in the form the decoder's class head reads.

    logits: [B, hw, K+1] the class head on `memory.flatten(2).transpose(1, 2)`;
    memory: [B, d, h, w] (its grid and dtype are the targets'); padding: [B, h, w] bool.
    Each image's mean over its cells, summed and divided by `step_images` (the images of the
    whole optimiser step; default: this batch's), so micro-batches add up to the whole batch."""
    h, w = memory.shape[-2:]
    classes = logits.shape[-1]
    shares = []
    for t, cover in zip(targets, masks_on_memory_grid(targets, memory), strict=True):
        share = memory.new_zeros((classes, h, w))
        if len(t.labels):  # pool each segment, then add up per class: no K x H x W tensor
            share.index_add_(0, t.labels.to(memory.device), cover)
        shares.append(share)
    share = torch.stack(shares).flatten(2).transpose(1, 2)  # B x hw x K+1
    cover = share.sum(-1)
    keep = (cover > 0.5) & ~padding.flatten(1)  # B x hw
    target = share / cover.clamp(min=1e-6)[..., None]
    ce = -(target * logits.log_softmax(-1)).sum(-1) * keep  # B x hw, 0 where left out
    per_image = ce.sum(1) / keep.sum(1).clamp(min=1)
    return per_image.sum() / (step_images or len(targets))


def segment_memory(memory: Tensor, targets: list[Target]) -> tuple[Tensor, Tensor]:
    """Every ground-truth segment's encoder memory averaged over its mask (pooled to the memory
    grid, so a cell weighs by the segment's pixels in it), for the class head.
    memory: [B, d, h, w]. Returns (pooled [S, d], labels [S]) over the segments of all images."""
    pooled = [memory.new_zeros((0, memory.shape[1]))]
    labels = [torch.zeros(0, dtype=torch.long, device=memory.device)]
    for b, (t, cover) in enumerate(zip(targets, masks_on_memory_grid(targets, memory), strict=True)):
        if not len(t.labels):
            continue
        m = cover.flatten(1)
        weights = m / m.sum(1, keepdim=True).clamp(min=1e-6)  # S x hw, each row sums to 1
        pooled.append(weights @ memory[b].flatten(1).T)  # S x d
        labels.append(t.labels.to(memory.device))
    return torch.cat(pooled), torch.cat(labels)


def segment_class_loss(logits: Tensor, labels: Tensor, num_boxes: Tensor | float) -> Tensor:
    """`LossWeights.segment`: the cross-entropy of the class head on `segment_memory` (logits
    [S, K+1]) against each segment's class (labels [S]), summed and divided by `num_boxes` like
    the matched losses. Unlike the dense `semantic_loss`, where a small thing is a few cells
    among the image's, every segment counts once, so the memory learns the things' classes as
    fast as the stuff's: a clean signal that needs no matching. No new parameters."""
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


def upsample_bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    """`F.interpolate(x[:, None], size, mode="bilinear", align_corners=False)[:, 0]` for x
    [T, h, w], as two matrix products A_h @ x @ A_w^T (equal up to float rounding: the matrices
    are F.interpolate of an identity, so they hold its own weights). Bilinear interpolation is
    linear along each axis; as products its forward and backward run as GEMMs, ~10x faster on a
    CPU than interpolate's backward (benchmarks/RESULTS.md, issue 21 session 6)."""
    def weights(n: int, big: int) -> Tensor:  # [big, n]
        eye = torch.eye(n, dtype=x.dtype, device=x.device)[None, None]
        return F.interpolate(eye, size=(big, n), mode="bilinear", align_corners=False)[0, 0]

    return weights(x.shape[-2], size[0]) @ x @ weights(x.shape[-1], size[1]).T


class SetCriterion(nn.Module):
    """Hungarian matching + DETR's losses, on tensors. The pieces return dicts of unweighted
    terms; `weighted_total` adds them up into what to back-propagate. `ModelWithLoss` calls
    them in the order the losses are defined (see `model_with_loss.py`)."""

    def __init__(
        self,
        num_classes: int,
        weights: LossWeights | None = None,
        costs: MatchCosts | None = None,
        masks: bool = True,
    ) -> None:
        """num_classes: K (logits have K+1, the last is no-object). masks: add the mask losses."""
        super().__init__()
        weights = weights or LossWeights()
        self.num_classes = num_classes
        self.weights = weights
        self.costs = costs or MatchCosts()
        self.masks = masks
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = weights.eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    def normalizers(self, counts: list[int], pred_logits: Tensor) -> tuple[float, Tensor]:
        """(num_boxes, CE weight sum) of the optimiser step whose images hold `counts` non-crowd
        segments (see the module-level `normalizers`); pred_logits: [B, N, K+1]."""
        return normalizers(counts, pred_logits.shape[1], self.weights.eos_coef, pred_logits.device)

    def match(
        self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[Target],
        pred_masks: list[Tensor] | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """Per image (query indices, target indices), see `matcher.hungarian_match`. pred_masks:
        every query's mask logits per image ([N, H/4, W/4]), for the mask costs of `costs`;
        without them (the auxiliary layers) the matching uses the class and box costs only."""
        labels, boxes = [t.labels for t in targets], [t.boxes for t in targets]
        if pred_masks is None:
            costs = dataclasses.replace(self.costs, mask_weight=0.0, dice_weight=0.0)
            return hungarian_match(pred_logits, pred_boxes, labels, boxes, costs)
        return hungarian_match(pred_logits, pred_boxes, labels, boxes, self.costs, pred_masks,
                               padded_masks(targets))

    def class_box_losses(
        self,
        logits: Tensor,
        pred_boxes: Tensor,
        targets: list[Target],
        indices: list[tuple[Tensor, Tensor]],
        num_boxes: float,
        ce_weight: Tensor,
    ) -> dict[str, Tensor]:
        """loss_ce, loss_bbox, loss_giou of one decoder layer's logits [B, N, K+1] and boxes
        [B, N, 4] under the matching `indices`."""
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
        masks: list[Tensor],
        targets: list[Target],
        indices: list[tuple[Tensor, Tensor]],
        num_boxes: float,
    ) -> dict[str, Tensor]:
        """loss_mask, loss_dice of the matched queries' mask logits: masks[i] [Q_i, H/4, W/4] in
        the order of `indices[i]`'s queries, at least one mask in all. Compared at the padded
        image's size (logits upsampled, DETR's) or, with `weights.mask_resolution` "mask", at
        the logits' (targets area-averaged into soft targets)."""
        src = torch.cat(masks)  # T x h x w
        if src.shape[0] == 0:
            raise ValueError("mask_losses needs at least one matched mask")
        padded = padded_masks(targets)
        h, w = padded[0].shape[-2:]
        tgt = torch.cat([m[s.to(m.device)] for m, (_, s) in zip(padded, indices, strict=True)]
                        ).to(device=src.device, dtype=src.dtype)  # T x H x W
        if self.weights.mask_resolution == "mask":
            tgt = F.adaptive_avg_pool2d(tgt[:, None], src.shape[-2:])[:, 0]
        else:
            src = upsample_bilinear(src, (h, w))
        src, tgt = src.flatten(1), tgt.flatten(1)
        return {"loss_mask": focal_loss(src, tgt, num_boxes), "loss_dice": dice_loss(src, tgt, num_boxes)}

    def aux_losses(
        self, aux_outputs: list[LayerOutput], targets: list[Target], num_boxes: float, ce_weight: Tensor
    ) -> dict[str, Tensor]:
        """The class and box losses of every earlier decoder layer, each with its own matching;
        keys carry the layer: loss_ce_0, loss_bbox_0, ..."""
        losses = {}
        for i, aux in enumerate(aux_outputs):
            indices = self.match(aux.pred_logits, aux.pred_boxes, targets)
            terms = self.class_box_losses(aux.pred_logits, aux.pred_boxes, targets, indices, num_boxes,
                                          ce_weight)
            losses.update({f"{k}_{i}": v for k, v in terms.items()})
        return losses

    def weighted_total(self, losses: dict[str, Tensor]) -> Tensor:
        """The weighted sum of the terms, in the order of `losses`."""
        w = {"loss_ce": self.weights.ce, "loss_bbox": self.weights.bbox, "loss_giou": self.weights.giou,
             "loss_mask": self.weights.mask, "loss_dice": self.weights.dice,
             "loss_semantic": self.weights.semantic, "loss_segment": self.weights.segment}
        # aux terms carry a layer suffix: loss_ce_0 -> loss_ce; denoising terms weigh as their
        # matched twins: loss_dn_ce -> loss_ce (train/denoising.py)
        return sum(w[k.rstrip("0123456789").rstrip("_").replace("loss_dn_", "loss_")] * v
                   for k, v in losses.items())
