"""The model and its criterion as one module: detect -> match -> the mask head for the matched
queries -> losses. Its `forward` is what DDP wraps and synchronises, and the only place where
the network and the criterion meet: the criterion sees tensors, never the model.

The mask head is per query, so only the matched queries' masks enter the loss: computing just
those gives the same loss and gradients as computing all N masks and selecting, at a fraction
of the cost. The order of the calls is the order of the loss terms, and also the order in
which the autograd graph is built, which fixes the order in which backward adds up gradients:
moving a call changes the trained weights in their last bits.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..model.detr import Detection
from ..structures import PaddedBatch, Target
from .criterion import SetCriterion, drop_crowd, segment_class_loss, segment_memory, semantic_loss


class ModelWithLoss(nn.Module):
    def __init__(self, model: nn.Module, criterion: SetCriterion, all_query_masks: bool = False) -> None:
        """model: a `DETRPanoptic` (or anything with its `detect`, `predict_masks`, `class_embed`).
        all_query_masks: run the full forward (masks of all N queries, the original's way) and
        select the matched ones; the same loss, for comparison only."""
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.all_query_masks = all_query_masks

    def forward(
        self, batch: PaddedBatch, targets: list[Target], step_counts: list[int] | None = None
    ) -> dict[str, Tensor]:
        """The unweighted loss terms and `loss`, their weighted sum (what to back-propagate).

        targets: one `Target` per image, on the model's device.
        step_counts: non-crowd segments per image of the whole optimiser step when it is split
        into micro-batches (see `criterion.normalizers`); default: this batch's."""
        model, crit = self.model, self.criterion
        det: Detection = model(batch) if self.all_query_masks else model.detect(batch)
        matched = drop_crowd(targets)
        counts = [len(t) for t in matched] if step_counts is None else step_counts
        num_boxes, ce_weight = crit.normalizers(counts, det.pred_logits)
        indices = crit.match(det.pred_logits, det.pred_boxes, matched)
        losses = crit.class_box_losses(det.pred_logits, det.pred_boxes, matched, indices, num_boxes,
                                       ce_weight)
        if crit.masks:
            losses.update(self._mask_losses(det, matched, indices, num_boxes))
        if crit.weights.semantic > 0:  # crowd segments too: their class is known
            cells = model.class_embed(det.memory.flatten(2).transpose(1, 2))  # B x hw x K+1
            losses["loss_semantic"] = semantic_loss(cells, det.memory, det.padding, targets, len(counts))
        if crit.weights.segment > 0:
            pooled, labels = segment_memory(det.memory, matched)
            losses["loss_segment"] = segment_class_loss(model.class_embed(pooled), labels, num_boxes)
        losses.update(crit.aux_losses(det.aux_outputs, matched, num_boxes, ce_weight))
        losses["loss"] = crit.weighted_total(losses)
        return losses

    def _mask_losses(
        self, det: Detection, targets: list[Target], indices: list[tuple[Tensor, Tensor]], num_boxes: float
    ) -> dict[str, Tensor]:
        queries = [q.to(det.pred_logits.device) for q, _ in indices]
        if sum(len(q) for q in queries) == 0:
            # no segment anywhere in the batch: a zero that still reaches every trainable
            # parameter, so DDP sees the same gradients ready on every process
            zero = sum(p.view(-1)[0] for p in self.model.parameters() if p.requires_grad) * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        if det.pred_masks is not None:  # every query's mask was computed (the original's way)
            masks = [m[q] for m, q in zip(det.pred_masks, queries, strict=True)]
        else:
            masks = self.model.predict_masks(det, queries)  # per image Q_i x H/4 x W/4
        return self.criterion.mask_losses(masks, targets, indices, num_boxes)
