"""A few-hundred-parameter stand-in with DETRPanoptic's training interface (detect,
predict_masks, aux_outputs; mask head per query), for trainer tests that need no backbone."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from panoptic_detr.structures import PaddedBatch


class TinyDETR(nn.Module):
    def __init__(self, num_classes: int = 4, num_queries: int = 6, dim: int = 8, layers: int = 2):
        super().__init__()
        self.backbone = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.decoder = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.bbox_embed = nn.Linear(dim, 4)
        self.bbox_attention = nn.Linear(dim, dim)
        self.mask_head = nn.Conv2d(1, 1, kernel_size=3, padding=1)

    def detect(self, batch: PaddedBatch) -> dict:
        feats = self.backbone(batch.images)  # B x C x H/4 x W/4
        g = feats.mean(dim=(2, 3))[:, None]  # B x 1 x C
        hs = self.query_embed.weight[None] + g
        outs = []
        for layer in self.decoder:
            hs = torch.tanh(layer(hs) + g)
            outs.append({"pred_logits": self.class_embed(hs), "pred_boxes": self.bbox_embed(hs).sigmoid()})
        det = dict(outs[-1])
        det["aux_outputs"] = outs[:-1]
        det["features"] = feats
        det["hs"] = hs
        return det

    def predict_masks(self, det: dict, queries: list[Tensor]) -> list[Tensor]:
        out = []
        for i, q in enumerate(queries):
            emb = self.bbox_attention(det["hs"][i, q])  # Q x C
            m = torch.einsum("qc,chw->qhw", emb, det["features"][i])
            out.append(self.mask_head(m[:, None])[:, 0])  # Q x H/4 x W/4
        return out

    def forward(self, batch: PaddedBatch) -> dict:
        det = self.detect(batch)
        n = det["pred_logits"].shape[1]
        masks = self.predict_masks(det, [torch.arange(n)] * len(batch))
        return {**det, "pred_masks": torch.stack(masks)}
