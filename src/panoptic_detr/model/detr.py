"""DETR for panoptic segmentation (Carion et al. 2020, fig. 2 and fig. 8).

backbone -> C5 -> 1x1 conv to d -> transformer(+ sine positions, N learned queries) -> for
every query a class (K + no-object) and a box; the mask head turns the last decoder output's
attention over the encoder memory, plus C4/C3/C2, into a mask per query at stride 4.

`detect` runs everything but the mask head and returns a `Detection`; `predict_masks` runs the
mask head for chosen queries only (training: the matched ones; inference: the confident ones).
`forward` does both for all queries, as the original.

Parameter names equal the original checkpoints' without the `detr.` prefix (and with
`backbone.body` for `backbone.0.body`); see `weights.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..settings import MaskChunk
from ..structures import PaddedBatch
from .backbone import Backbone
from .config import DETRConfig
from .mask_head import MaskHead, MHAttentionMap
from .position import sine_position_encoding
from .transformer import ExtraQueries, Transformer

MASK_CHUNK_BYTES = 24 * 2**20
"""chunk="auto" on a CPU: as many queries per mask-head call as keep its largest activation
(a stride-4 map per query) under this. glibc serves blocks over 32 MB with fresh mmaps whose
pages the kernel zeroes on first touch: at 800x1066, 10 queries at a time made 68 MB blocks
and the mask stage 45 % slower than 4 at a time (benchmarks/RESULTS.md)."""
GPU_MASK_CHUNK = 10
"""chunk="auto" elsewhere: bounds the head's memory (chunk x d/8 x H/4 x W/4 values)."""


@dataclass
class LayerOutput:
    """One decoder layer's predictions."""

    pred_logits: Tensor
    """[B, N, K+1] class logits (the last is no-object)."""
    pred_boxes: Tensor
    """[B, N, 4] normalised (cx, cy, w, h)."""


@dataclass
class Detection:
    """What `DETRPanoptic.detect` computes: the predictions of every query and the
    intermediates the mask head and `explain` read (B images, N queries, d = hidden_dim,
    L decoder layers, h x w = H/32 x W/32 the C5 grid, or H/16 x W/16 with dilation)."""

    pred_logits: Tensor
    """[B, N, K+1] the last decoder layer's class logits (the last class is no-object)."""
    pred_boxes: Tensor
    """[B, N, 4] the last decoder layer's boxes, normalised (cx, cy, w, h)."""
    aux_outputs: list[LayerOutput]
    """The same for every decoder layer but the last (L - 1 entries), for the auxiliary losses."""
    layer4: Tensor
    """[B, C5, h, w] the backbone's last feature map."""
    pos: Tensor
    """[B, d, h, w] sine position encoding (float32, as the original, for any model dtype)."""
    memory: Tensor
    """[B, d, h, w] the encoder's output."""
    hs: Tensor
    """[L, B, N, d] every decoder layer's output."""
    padding: Tensor
    """[B, h, w] bool, True on padding."""
    src_proj: Tensor
    """[B, d, h, w] C5 projected to d (the transformer's input; the mask head's too)."""
    fpns: list[Tensor]
    """[C4, C3, C2] backbone maps for the mask head's FPN, [B, C_i, H/s, W/s] at s = 16, 8, 4."""
    attention_maps: Tensor | None = None
    """With `return_attention`: [B, N, M, h, w] the mask head's attention (softmax jointly over
    M heads x positions, 0 on padding)."""
    pred_masks: Tensor | None = None
    """The full `forward` only: [B, N, H/4, W/4] mask logits of every query."""
    extra_outputs: list[LayerOutput] | None = None
    """With `extra` queries (training only): every decoder layer's predictions of the M extra
    queries (L entries, the last layer's last); the fields above then hold the N learned
    queries' only, but `hs` all N + M (`predict_masks` reaches extra query j as N + j)."""

    def one(self, index: int) -> Detection:
        """Image `index`'s outputs as a batch of one (copies: the batch's memory can go). The
        mask head is per image, so `predict_masks` on it gives that image's masks in the batch."""
        if self.hs.shape[1] == 1 and index == 0:
            return self

        def row(t: Tensor | None, dim: int = 0) -> Tensor | None:
            return None if t is None else t.narrow(dim, index, 1).clone()

        def layers(outs: list[LayerOutput] | None) -> list[LayerOutput] | None:
            return None if outs is None else [LayerOutput(row(o.pred_logits), row(o.pred_boxes))
                                               for o in outs]

        return Detection(row(self.pred_logits), row(self.pred_boxes), layers(self.aux_outputs),
                         row(self.layer4), row(self.pos), row(self.memory), row(self.hs, 1),
                         row(self.padding), row(self.src_proj), [row(f) for f in self.fpns],
                         row(self.attention_maps), row(self.pred_masks), layers(self.extra_outputs))


class MLP(nn.Module):
    """Linear layers with ReLU between them (the box head: 3 layers, d -> d -> d -> 4)."""

    def __init__(self, dim_in: int, dim_hidden: int, dim_out: int, num_layers: int):
        super().__init__()
        dims = [dim_in] + [dim_hidden] * (num_layers - 1) + [dim_out]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class DETRPanoptic(nn.Module):
    def __init__(self, config: DETRConfig):
        super().__init__()
        c = config
        self.config = c
        d = c.hidden_dim
        self.backbone = Backbone(c.backbone, c.dilation, c.pretrained_backbone, c.backbone_norm)
        c2, c3, c4, c5 = self.backbone.channels
        self.input_proj = nn.Conv2d(c5, d, kernel_size=1)
        self.query_embed = nn.Embedding(c.num_queries, d)
        self.transformer = Transformer(
            d, c.nheads, c.num_encoder_layers, c.num_decoder_layers, c.dim_feedforward, c.dropout
        )
        self.class_embed = nn.Linear(d, c.num_classes + 1)
        self.bbox_embed = MLP(d, d, 4, 3)
        self.bbox_attention = MHAttentionMap(d, c.mask_heads)
        self.mask_head = MaskHead(d, c.mask_heads, (c4, c3, c2), c.mask_head_groups)
        with torch.no_grad():  # see DETRConfig.mask_attention_init_gain
            self.mask_head.lay1.weight[:, d:] *= c.mask_attention_init_gain

    def prepare_for_inference(self, channels_last: bool = True) -> DETRPanoptic:
        """Make this model faster for inference, in place: frozen batch norms folded into
        their convolutions and, optionally, channels-last tensors (faster convolutions on
        CPUs). Same outputs up to float rounding (see tests/test_model_parity.py). Eval mode;
        do not train or save the result (its state dict no longer has the BN tensors)."""
        self.eval()
        self.backbone.fuse_batchnorm()
        if channels_last:
            self.to(memory_format=torch.channels_last)
        return self

    def detect(self, batch: PaddedBatch, return_attention: bool = False,
               extra: ExtraQueries | None = None) -> Detection:
        """Everything but the masks; with `return_attention`, also the mask head's attention maps.
        extra: queries decoded beside the learned ones (training only: denoising), whose
        predictions go to `Detection.extra_outputs`."""
        feats, masks = self.backbone(batch.images, batch.mask)
        c5, padding = feats[-1], masks[-1]
        # float32 whatever the model's dtype, as the original (its float64 outputs carry this)
        pos = sine_position_encoding(padding, self.config.hidden_dim).to(c5.dtype)
        src_proj = self.input_proj(c5)
        hs, memory = self.transformer(src_proj, padding, self.query_embed.weight, pos, extra)
        logits = self.class_embed(hs)  # L x B x N x K+1
        boxes = self.bbox_embed(hs).sigmoid()  # L x B x N x 4
        extra_outputs = None
        if extra is not None:
            n = self.query_embed.num_embeddings
            extra_outputs = [LayerOutput(lg[:, n:], bx[:, n:]) for lg, bx in zip(logits, boxes, strict=True)]
            logits, boxes = logits[:, :, :n], boxes[:, :, :n]
        det = Detection(
            pred_logits=logits[-1],
            pred_boxes=boxes[-1],
            aux_outputs=[LayerOutput(lg, bx) for lg, bx in zip(logits[:-1], boxes[:-1], strict=True)],
            layer4=c5,
            pos=pos,
            memory=memory,
            hs=hs,
            padding=padding,
            src_proj=src_proj,
            fpns=[feats[2], feats[1], feats[0]],
            extra_outputs=extra_outputs,
        )
        if return_attention:
            det.attention_maps = self.bbox_attention(hs[-1], self._keys(det), padding)
        return det

    def _keys(self, det: Detection) -> Tensor:
        """What the mask head's attention map attends over: [B, d, h, w]."""
        if self.config.mask_attention_pos:
            return det.memory + det.pos.to(det.memory.dtype)
        return det.memory

    def mask_chunk(self, det: Detection) -> int:
        """What chunk="auto" of `predict_masks` means for `det` (see `MASK_CHUNK_BYTES`)."""
        c2 = det.fpns[-1]  # B x C2 x H/4 x W/4
        if c2.device.type != "cpu":
            return GPU_MASK_CHUNK
        per_query = self.mask_head.adapter3.out_channels * c2.shape[-2] * c2.shape[-1] * c2.element_size()
        return max(1, MASK_CHUNK_BYTES // per_query)

    def predict_masks(
        self, det: Detection, queries: list[Tensor], chunk: MaskChunk = None, one_batch: bool = False
    ) -> list[Tensor]:
        """Mask logits of the chosen queries only.

        det: what `detect` returned; queries: per image a LongTensor of query indices.
        chunk: run the per-query part of the head this many queries at a time (the same masks:
        the head is per query and its GroupNorm normalises each query on its own), which bounds
        its stride-4 activations (chunk x d/8 x H/4 x W/4 floats); None: all at once; "auto":
        `self.mask_chunk(det)`.
        one_batch: every image's queries through the head as one batch (training: a few large
        convolutions instead of a few per image); the same masks up to float rounding. Off
        (inference), each image's masks are computed from that image alone, bit for bit what it
        gets in any batch (the server caches them).
        Returns per image [Q_i, H/4, W/4] mask logits, in the order of `queries[i]`.
        """
        if len(queries) != det.hs.shape[1]:
            raise ValueError(f"queries has {len(queries)} entries for {det.hs.shape[1]} images")
        if one_batch:
            if chunk is not None:
                raise ValueError("one_batch runs all queries at once: chunk must be None")
            return self._masks_in_one_batch(det, queries)
        if chunk == "auto":
            chunk = self.mask_chunk(det)
        last = det.hs[-1]  # B x N x d
        keys = self._keys(det)
        size = det.fpns[-1].shape[-2:]  # H/4 x W/4
        out = []
        for i, idx in enumerate(queries):
            if idx.numel() == 0:  # nothing kept: not even the image's shared part is needed
                out.append(last.new_zeros((0, *size)))
                continue
            one = slice(i, i + 1)
            shared = self.mask_head.image_features(det.src_proj[one], [f[one] for f in det.fpns])
            # the image's keys in one layout whatever the batch's (`Detection.one` copies keep
            # other strides than a row of the batch): a kernel may round differently by layout
            keys_i = keys[one].contiguous()
            idx = idx.to(last.device)
            parts = []
            for part in idx.split(chunk) if chunk else (idx,):
                att = self.bbox_attention(last[one, part], keys_i, det.padding[one])[0]  # q x M x h x w
                parts.append(self.mask_head.query_masks(shared, att))
            out.append(parts[0] if len(parts) == 1 else torch.cat(parts))
        return out

    def _masks_in_one_batch(self, det: Detection, queries: list[Tensor]) -> list[Tensor]:
        """`predict_masks(det, queries, one_batch=True)`: the shared part for all images at
        once, then all queries' masks as one batch, each with its image's shared features."""
        last = det.hs[-1]  # B x N x d
        counts = [len(idx) for idx in queries]
        if sum(counts) == 0:
            return [last.new_zeros((0, *det.fpns[-1].shape[-2:])) for _ in queries]
        keys = self._keys(det)
        att = torch.cat([  # Q x M x h x w, the queries of all images in order
            self.bbox_attention(last[i : i + 1, idx.to(last.device)], keys[i : i + 1],
                                det.padding[i : i + 1])[0]
            for i, idx in enumerate(queries) if len(idx)
        ])
        shared = self.mask_head.image_features(det.src_proj, det.fpns).repeated(counts)
        return list(self.mask_head.query_masks(shared, att).split(counts))

    def forward(self, batch: PaddedBatch, return_attention: bool = False) -> Detection:
        """The full model as the original: `detect` plus `pred_masks` for every query (through
        the mask head's direct formulation)."""
        det = self.detect(batch, return_attention=True)
        att = det.attention_maps
        if not return_attention:
            det.attention_maps = None
        det.pred_masks = self.mask_head(det.src_proj, att, det.fpns)
        return det


def build_model(config: DETRConfig) -> DETRPanoptic:
    """A randomly initialised model (backbone from ImageNet if `config.pretrained_backbone`)."""
    return DETRPanoptic(config)


def count_parameters(model: nn.Module) -> int:
    """All parameters (trainable or frozen); frozen batch-norm buffers are not parameters."""
    return sum(p.numel() for p in model.parameters())
