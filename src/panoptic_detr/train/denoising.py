"""Denoising training (DN-DETR, Li et al. 2022; the mask part as Mask DINO): the `denoising:`
section of the config.

Every step, `groups` noised copies of each image's ground truth become extra decoder queries
beside the N learned ones: a noised box (centre shifted, size scaled) embedded as the query's
position, a label (sometimes flipped to a random class) embedded as its content. Each one
learns to reconstruct its own segment, class, box and mask, with no matching: an easy, stable
signal that the Hungarian matching of the early steps lacks. The decoder's self-attention mask
keeps the learned queries from seeing the denoising ones (what they would not have at inference)
and the groups from seeing each other (each would copy the others' answers).

Queries: [learned N | group 0: P | group 1: P | ...], P the most segments of an image of the
batch; an image with fewer fills its slots with padding queries (label index K, box zeros) that
enter no loss. The label embedding and the box MLP are training only: they live here, not in the
model, so the model's state dict, its checkpoints' weights, export and inference are unchanged;
the training checkpoint keeps them in its training state (for an exact resume).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.detr import MLP, LayerOutput
from ..model.transformer import ExtraQueries
from ..ops.boxes import cxcywh_to_xyxy, generalized_box_iou
from ..structures import Target
from .config import DenoisingSection


def attention_mask(num_queries: int, groups: int, per_group: int,
                   device: torch.device | None = None) -> Tensor:
    """[N + G*P, N + G*P] bool, True where a query (row) may not see another (column): the N
    learned queries see only each other; a denoising group sees the learned queries and itself."""
    total = num_queries + groups * per_group
    mask = torch.zeros((total, total), dtype=torch.bool, device=device)
    mask[:num_queries, num_queries:] = True
    for g in range(groups):
        start, end = num_queries + g * per_group, num_queries + (g + 1) * per_group
        mask[start:end, num_queries:start] = True
        mask[start:end, end:] = True
    return mask


def noise_boxes(boxes: Tensor, scale: float) -> Tensor:
    """boxes: [S, 4] normalised (cx, cy, w, h) -> the same, noised: the centre moves by up to
    scale x half the size on each axis, the size is scaled by a factor in [1 - scale, 1 + scale]
    (uniform; the global RNG); centres clamped into the image, sizes to [1e-3, 1]."""
    r = torch.rand_like(boxes) * 2 - 1
    centre = (boxes[:, :2] + r[:, :2] * boxes[:, 2:] * (scale / 2)).clamp(0, 1)
    size = (boxes[:, 2:] * (1 + r[:, 2:] * scale)).clamp(1e-3, 1)
    return torch.cat([centre, size], dim=1)


def flip_labels(labels: Tensor, prob: float, num_classes: int) -> Tensor:
    """labels: [S] -> each replaced by a uniformly drawn class with probability `prob`."""
    flip = torch.rand(labels.shape, device=labels.device) < prob
    random = torch.randint(0, num_classes, labels.shape, device=labels.device)
    return torch.where(flip, random, labels)


def box_sine(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """[..., 4] normalised boxes -> [..., dim] sine features, dim/4 per coordinate (sin and cos
    interleaved), as the image's position encoding does for a cell's (x, y)."""
    quarter = dim // 4
    i = torch.arange(quarter, dtype=boxes.dtype, device=boxes.device)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / quarter)
    x = boxes[..., None] * (2 * math.pi) / freq  # ... x 4 x dim/4
    x = torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), dim=-1).flatten(-2)
    return x.flatten(-2)


@dataclass
class DenoisingBatch:
    """One step's denoising queries and which segment each reconstructs."""

    extra: ExtraQueries
    """What the model decodes beside its learned queries (M = groups x per_group)."""
    queries: list[Tensor]
    """Per image: indices among all N + M queries of its (non-padding) denoising queries,
    group by group."""
    targets: list[Tensor]
    """Per image: the segment each of those reconstructs (index into the image's targets)."""
    groups: int


class DenoisingQueries(nn.Module):
    """Makes a step's denoising queries from its targets (`forward`); holds the training-only
    label embedding ([K + 1, d], the last row for padding queries) and box MLP."""

    def __init__(self, num_classes: int, dim: int, section: DenoisingSection) -> None:
        super().__init__()
        if dim % 8:
            raise ValueError(f"denoising: hidden_dim={dim} must be divisible by 8 (box sine features)")
        self.num_classes, self.dim, self.section = num_classes, dim, section
        self.label_embed = nn.Embedding(num_classes + 1, dim)
        self.box_embed = MLP(dim, dim, dim, 2)

    def forward(self, targets: list[Target], num_queries: int) -> DenoisingBatch | None:
        """targets: the step's non-crowd segments per image; num_queries: the model's N.
        None when the batch has no segment (nothing to denoise)."""
        s = self.section
        per_group = max(len(t) for t in targets)
        if per_group == 0:
            return None
        device = self.label_embed.weight.device
        b, m = len(targets), s.groups * per_group
        labels = torch.full((b, m), self.num_classes, dtype=torch.int64, device=device)
        boxes = torch.zeros((b, m, 4), dtype=self.label_embed.weight.dtype, device=device)
        queries, slots = [], []
        for g in range(s.groups):
            for i, t in enumerate(targets):
                n = len(t)
                at = slice(g * per_group, g * per_group + n)
                labels[i, at] = flip_labels(t.labels.to(device), s.label_flip, self.num_classes)
                boxes[i, at] = noise_boxes(t.boxes.to(boxes), s.box_noise)
        for t in targets:
            n = len(t)
            idx = torch.arange(n, device=device)
            queries.append(torch.cat([num_queries + g * per_group + idx for g in range(s.groups)]))
            slots.append(idx.repeat(s.groups))
        extra = ExtraQueries(content=self.label_embed(labels),
                             position=self.box_embed(box_sine(boxes, self.dim)),
                             attn_mask=attention_mask(num_queries, s.groups, per_group, device))
        return DenoisingBatch(extra, queries, slots, s.groups)

    def zero(self) -> Tensor:
        """A zero loss that reaches every parameter here (a step with nothing to denoise still
        gives DDP a gradient for each)."""
        return sum(p.view(-1)[0] for p in self.parameters()) * 0.0


def class_box_losses(out: LayerOutput, targets: list[Target], dn: DenoisingBatch, num_queries: int,
                     normalizer: float) -> dict[str, Tensor]:
    """loss_ce, loss_bbox, loss_giou of the denoising queries of one decoder layer (`out`:
    [B, M, K+1] logits, [B, M, 4] boxes) against their own segments, each query's term as a
    matched query's (class weight 1, no no-object term), summed and / `normalizer`
    (num_boxes x groups: one group weighs as the matched queries)."""
    device = out.pred_logits.device
    batch_idx = torch.cat([torch.full_like(q, i) for i, q in enumerate(dn.queries)]).to(device)
    query_idx = torch.cat(dn.queries).to(device) - num_queries
    labels = torch.cat([t.labels[s.to(t.labels.device)] for t, s in zip(targets, dn.targets, strict=True)])
    logits = out.pred_logits[batch_idx, query_idx]  # T x K+1
    loss_ce = F.cross_entropy(logits, labels.to(device), reduction="sum") / normalizer
    src = out.pred_boxes[batch_idx, query_idx]
    tgt = torch.cat([t.boxes[s.to(t.boxes.device)] for t, s in zip(targets, dn.targets, strict=True)]).to(src)
    loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / normalizer
    giou = torch.diag(generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)))
    return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / normalizer}


def denoising_losses(outputs: list[LayerOutput], targets: list[Target], dn: DenoisingBatch, num_queries: int,
                     num_boxes: float) -> dict[str, Tensor]:
    """The class and box losses of the denoising queries of every decoder layer: the last's as
    loss_dn_ce, loss_dn_bbox, loss_dn_giou, the earlier ones' with the layer's suffix
    (loss_dn_ce_0, ...), as the auxiliary losses. Weighted in the total as their matched twins."""
    losses = {}
    last = len(outputs) - 1
    for i, out in enumerate(outputs):
        terms = class_box_losses(out, targets, dn, num_queries, num_boxes * dn.groups)
        suffix = "" if i == last else f"_{i}"
        losses.update({k.replace("loss_", "loss_dn_") + suffix: v for k, v in terms.items()})
    return losses
