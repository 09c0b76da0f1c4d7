"""The model and its criterion as one module: detect -> match -> the mask head for the matched
queries -> losses. Its `forward` is what DDP wraps and synchronises, and the only place where
the network and the criterion meet: the criterion sees tensors, never the model.

The mask head is per query, so only the matched queries' masks enter the loss: computing just
those gives the same loss and gradients as computing all N masks and selecting, at a fraction
of the cost. The order of the calls is the order of the loss terms, and also the order in
which the autograd graph is built, which fixes the order in which backward adds up gradients:
moving a call changes the trained weights in their last bits.

With `denoising` (train/denoising.py), the model also decodes noised copies of the ground truth
as extra queries, and their reconstruction losses come after the auxiliary ones; without it the
step runs exactly the calls it ran before denoising existed (tests/test_denoising.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..model.detr import Detection
from ..structures import PaddedBatch, Target
from .criterion import SetCriterion, drop_crowd, segment_class_loss, segment_memory, semantic_loss
from .denoising import DenoisingBatch, DenoisingQueries, denoising_losses


class ModelWithLoss(nn.Module):
    def __init__(self, model: nn.Module, criterion: SetCriterion, all_query_masks: bool = False,
                 denoising: DenoisingQueries | None = None) -> None:
        """model: a `DETRPanoptic` (or anything with its `detect`, `predict_masks`, `class_embed`).
        all_query_masks: run the full forward (masks of all N queries, the original's way) and
        select the matched ones; the same loss, for comparison only.
        denoising: add the denoising queries and their losses (None: off)."""
        super().__init__()
        if denoising is not None and all_query_masks:
            raise ValueError("denoising runs the mask head on chosen queries only: "
                             "all_query_masks must be off")
        self.model = model
        self.criterion = criterion
        self.all_query_masks = all_query_masks
        self.denoising = denoising

    def forward(
        self, batch: PaddedBatch, targets: list[Target], step_counts: list[int] | None = None
    ) -> dict[str, Tensor]:
        """The unweighted loss terms and `loss`, their weighted sum (what to back-propagate).

        targets: one `Target` per image, on the model's device.
        step_counts: non-crowd segments per image of the whole optimiser step when it is split
        into micro-batches (see `criterion.normalizers`); default: this batch's."""
        model, crit = self.model, self.criterion
        dn: DenoisingBatch | None = None
        if self.denoising is None:
            det: Detection = model(batch) if self.all_query_masks else model.detect(batch)
        else:
            num_queries = model.query_embed.num_embeddings
            dn = self.denoising(drop_crowd(targets), num_queries)
            det = model.detect(batch, extra=None if dn is None else dn.extra)
        matched = drop_crowd(targets)
        counts = [len(t) for t in matched] if step_counts is None else step_counts
        num_boxes, ce_weight = crit.normalizers(counts, det.pred_logits)
        all_masks = det.pred_masks  # every query's masks: the original's forward, or to match on
        if crit.costs.uses_masks and all_masks is None:
            b, n = det.pred_logits.shape[:2]
            all_masks = model.predict_masks(det, [torch.arange(n)] * b, one_batch=True)
        indices = crit.match(det.pred_logits, det.pred_boxes, matched,
                             all_masks if crit.costs.uses_masks else None)
        losses = crit.class_box_losses(det.pred_logits, det.pred_boxes, matched, indices, num_boxes,
                                       ce_weight)
        if crit.masks:
            losses.update(self._mask_losses(det, matched, indices, num_boxes, all_masks))
        if crit.weights.semantic > 0:  # crowd segments too: their class is known
            cells = model.class_embed(det.memory.flatten(2).transpose(1, 2))  # B x hw x K+1
            losses["loss_semantic"] = semantic_loss(cells, det.memory, det.padding, targets, len(counts))
        if crit.weights.segment > 0:
            pooled, labels = segment_memory(det.memory, matched)
            losses["loss_segment"] = segment_class_loss(model.class_embed(pooled), labels, num_boxes)
        losses.update(crit.aux_losses(det.aux_outputs, matched, num_boxes, ce_weight))
        if self.denoising is not None:
            losses.update(self._denoising_losses(det, matched, dn, num_boxes))
        losses["loss"] = crit.weighted_total(losses)
        return losses

    def _mask_losses(
        self, det: Detection, targets: list[Target], indices: list[tuple[Tensor, Tensor]], num_boxes: float,
        all_masks: list[Tensor] | None = None,
    ) -> dict[str, Tensor]:
        queries = [q.to(det.pred_logits.device) for q, _ in indices]
        if sum(len(q) for q in queries) == 0:
            # no segment anywhere in the batch: a zero that still reaches every trainable
            # parameter, so DDP sees the same gradients ready on every process
            zero = sum(p.view(-1)[0] for p in self.model.parameters() if p.requires_grad) * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        if all_masks is not None:  # every query's mask was computed (the original's way, or to match)
            masks = [m[q] for m, q in zip(all_masks, queries, strict=True)]
        else:
            masks = self.model.predict_masks(det, queries, one_batch=True)  # per image Q_i x H/4 x W/4
        return self.criterion.mask_losses(masks, targets, indices, num_boxes)

    def _denoising_losses(
        self, det: Detection, targets: list[Target], dn: DenoisingBatch | None, num_boxes: float
    ) -> dict[str, Tensor]:
        """The denoising queries' class and box losses of every layer, then their mask losses."""
        masks_on = self.criterion.masks and self.denoising.section.masks
        if dn is None:  # no segment in the batch: zeros that reach the denoising parameters,
            # under the usual keys (processes and micro-batches log the same terms)
            zero = self.denoising.zero()
            names = ("loss_dn_ce", "loss_dn_bbox", "loss_dn_giou")
            keys = [f"{k}_{i}" for i in range(len(det.aux_outputs)) for k in names] + list(names)
            return dict.fromkeys(keys + (["loss_dn_mask", "loss_dn_dice"] if masks_on else []), zero)
        num_queries = self.model.query_embed.num_embeddings
        losses = denoising_losses(det.extra_outputs, targets, dn, num_queries, num_boxes)
        if masks_on:
            masks = self.model.predict_masks(det, dn.queries, one_batch=True)  # per image G*S_i x H/4 x W/4
            pairs = list(zip(dn.queries, dn.targets, strict=True))
            terms = self.criterion.mask_losses(masks, targets, pairs, num_boxes * dn.groups)
            losses.update({k.replace("loss_", "loss_dn_"): v for k, v in terms.items()})
        return losses
