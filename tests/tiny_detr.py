"""A few-hundred-parameter stand-in with DETRPanoptic's training interface (detect returning a
`Detection`, predict_masks, class_embed; mask head per query), for trainer tests that need no
backbone. Its feature map stands in for the encoder memory (and every other map)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from panoptic_detr.model.detr import Detection, LayerOutput
from panoptic_detr.structures import PaddedBatch, Target


class TinyDETR(nn.Module):
    def __init__(self, num_classes: int = 4, num_queries: int = 6, dim: int = 8, layers: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.backbone = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.query_embed = nn.Embedding(num_queries, dim)
        self.decoder = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.bbox_embed = nn.Linear(dim, 4)
        self.bbox_attention = nn.Linear(dim, dim)
        self.mask_head = nn.Conv2d(1, 1, kernel_size=3, padding=1)

    def detect(self, batch: PaddedBatch, return_attention: bool = False) -> Detection:
        feats = self.backbone(batch.images)  # B x C x H/4 x W/4
        g = feats.mean(dim=(2, 3))[:, None]  # B x 1 x C
        hs = self.query_embed.weight[None] + g
        outs, states = [], []
        for layer in self.decoder:
            hs = self.dropout(torch.tanh(layer(hs) + g))
            outs.append(LayerOutput(self.class_embed(hs), self.bbox_embed(hs).sigmoid()))
            states.append(hs)
        padding = torch.zeros((feats.shape[0], *feats.shape[-2:]), dtype=torch.bool, device=feats.device)
        last = outs[-1]
        return Detection(pred_logits=last.pred_logits, pred_boxes=last.pred_boxes, aux_outputs=outs[:-1],
                         layer4=feats, pos=torch.zeros_like(feats), memory=feats, hs=torch.stack(states),
                         padding=padding, src_proj=feats, fpns=[feats])

    def predict_masks(self, det: Detection, queries: list[Tensor], chunk: int | None = None,
                      one_batch: bool = False) -> list[Tensor]:
        out = []
        for i, q in enumerate(queries):
            emb = self.bbox_attention(det.hs[-1, i, q])  # Q x C
            m = torch.einsum("qc,chw->qhw", emb, det.memory[i])
            out.append(self.mask_head(m[:, None])[:, 0])  # Q x H/4 x W/4
        return out

    def forward(self, batch: PaddedBatch) -> Detection:
        det = self.detect(batch)
        n = det.pred_logits.shape[1]
        det.pred_masks = torch.stack(self.predict_masks(det, [torch.arange(n)] * len(batch)))
        return det


class ToyScenes(torch.utils.data.Dataset):
    """n images [3, h, w] in 0..1 with 1-3 rectangles each (colour = class), as (image, Target)."""

    def __init__(self, n: int, h: int = 32, w: int = 32, num_classes: int = 4, seed: int = 0,
                 crowd: bool = False):
        self.items = []
        g = torch.Generator().manual_seed(seed)
        for i in range(n):
            k = int(torch.randint(1, 4, (), generator=g))
            masks = torch.zeros(k, h, w, dtype=torch.bool)
            labels = torch.randint(0, num_classes, (k,), generator=g)
            image = torch.rand(3, h, w, generator=g) * 0.2
            for s in range(k):
                y0 = int(torch.randint(0, h // 2, (), generator=g))
                x0 = int(torch.randint(0, w // 2, (), generator=g))
                masks[s, y0 : y0 + h // 3 + 2 * s, x0 : x0 + w // 3] = True
                masks[:s] &= ~masks[s]  # later rectangles occlude earlier ones
                image[:, masks[s]] = (labels[s].float() + 1) / (num_classes + 1)
            iscrowd = torch.zeros(k, dtype=torch.bool)
            if crowd:
                iscrowd[0] = True
            target = Target(masks=masks, labels=labels, boxes=torch.zeros(k, 4), iscrowd=iscrowd,
                            area=masks.sum((1, 2)).float(), image_id=i, orig_size=(h, w), size=(h, w),
                            segment_ids=torch.arange(1, k + 1))
            self.items.append((image, target))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]
