"""The panoptic head (DETR paper sec. 4.4, fig. 8): per-query attention maps over the encoder
output, and the small FPN-style conv head that turns them into mask logits at stride 4.

The head works on each query on its own, so the masks of a chosen subset of queries can be
computed without the others (`MaskHead.image_features` + `MaskHead.query_masks`). Its first
convolution sees cat(projected C5 features, the query's M attention maps); a convolution is
linear in its input channels, so that is conv(features) + conv(attention maps): the feature
part is computed once per image and only M channels per query. The FPN adapters of C4/C3/C2
are also computed once per image and broadcast over the queries, never copied per query.
`MaskHead.forward` is the original's direct formulation (features copied for every query),
kept as the reference the fast path is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MHAttentionMap(nn.Module):
    """Multi-head attention weights (no values) of queries over the encoder output: a softmax
    taken jointly over heads x positions, as the original; padding positions get weight 0."""

    def __init__(self, d: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(d, d)
        self.k_linear = nn.Linear(d, d)
        self.scale = float(d / num_heads) ** -0.5
        for lin in (self.q_linear, self.k_linear):
            nn.init.zeros_(lin.bias)
            nn.init.xavier_uniform_(lin.weight)

    def forward(self, q: Tensor, k: Tensor, padding: Tensor) -> Tensor:
        """q: [B, N, d] decoder output; k: [B, d, H, W] encoder memory; padding: [B, H, W].

        Returns [B, N, M, H, W] attention maps, summing to 1 over (M, H, W).
        """
        b, n, d = q.shape
        m = self.num_heads
        q = self.q_linear(q).view(b, n, m, d // m)
        # the key projection as a 1x1 convolution keeps the memory in its B x d x H x W layout
        k = F.conv2d(k, self.k_linear.weight[..., None, None], self.k_linear.bias)
        k = k.reshape(b, m, d // m, *k.shape[-2:])
        logits = torch.einsum("bqmc,bmchw->bqmhw", q * self.scale, k)  # B x N x M x H x W
        logits = logits.masked_fill(padding[:, None, None], float("-inf"))
        return logits.flatten(2).softmax(-1).view(logits.shape)


@dataclass
class ImageFeatures:
    """What the mask head shares between all queries of a batch of images."""

    lay1_features: Tensor
    """[B, d+M, H/32, W/32] lay1 applied to the projected C5 features alone, bias included."""
    adapters: list[Tensor]
    """[B, d/2, H/16, W/16], [B, d/4, H/8, W/8], [B, d/8, H/4, W/4]: adapted C4, C3, C2."""

    def repeated(self, counts: list[int]) -> ImageFeatures:
        """Image i's features counts[i] times, one row per query in image order. The queries of
        one image only: a batch-1 view, broadcast over them (no copy); of several: the rows
        gathered (a copy, the price of running several images' queries as one batch). Decided
        from the Python counts, so nothing waits on the device."""
        used = [i for i, c in enumerate(counts) if c]
        if len(used) == 1:
            one = slice(used[0], used[0] + 1)
            return ImageFeatures(self.lay1_features[one], [a[one] for a in self.adapters])
        device = self.lay1_features.device
        rows = torch.repeat_interleave(torch.arange(len(counts), device=device),
                                       torch.tensor(counts, device=device), output_size=sum(counts))
        return ImageFeatures(self.lay1_features.index_select(0, rows),
                             [a.index_select(0, rows) for a in self.adapters])


class MaskHead(nn.Module):
    """FPN-style conv head: cat(projected C5, attention maps) -> 5 x (3x3 conv, GroupNorm,
    ReLU) with nearest 2x upsampling plus the adapted C4, C3, C2 after lay2, lay3, lay4 ->
    a 3x3 conv to one mask logit per pixel at stride 4."""

    def __init__(self, d: int, num_heads: int, fpn_dims: tuple[int, int, int], groups: int = 8):
        """fpn_dims: channels of C4, C3, C2."""
        super().__init__()
        dim = d + num_heads
        widths = [dim, d // 2, d // 4, d // 8, d // 16]
        self.d = d
        self.lay1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.gn1 = nn.GroupNorm(groups, dim)
        self.lay2 = nn.Conv2d(dim, widths[1], 3, padding=1)
        self.gn2 = nn.GroupNorm(groups, widths[1])
        self.lay3 = nn.Conv2d(widths[1], widths[2], 3, padding=1)
        self.gn3 = nn.GroupNorm(groups, widths[2])
        self.lay4 = nn.Conv2d(widths[2], widths[3], 3, padding=1)
        self.gn4 = nn.GroupNorm(groups, widths[3])
        self.lay5 = nn.Conv2d(widths[3], widths[4], 3, padding=1)
        self.gn5 = nn.GroupNorm(groups, widths[4])
        self.out_lay = nn.Conv2d(widths[4], 1, 3, padding=1)
        self.adapter1 = nn.Conv2d(fpn_dims[0], widths[1], 1)
        self.adapter2 = nn.Conv2d(fpn_dims[1], widths[2], 1)
        self.adapter3 = nn.Conv2d(fpn_dims[2], widths[3], 1)
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_uniform_(mod.weight, a=1)
                nn.init.zeros_(mod.bias)

    # -- the original formulation -------------------------------------------------------
    def forward(self, features: Tensor, attention: Tensor, fpns: list[Tensor]) -> Tensor:
        """features: [B, d, h, w] projected C5; attention: [B, N, M, h, w]; fpns: [C4, C3, C2].

        Returns [B, N, H/4, W/4] mask logits. Copies the image features for every query.
        """
        b, n = attention.shape[:2]

        def per_query(t: Tensor) -> Tensor:  # B x C x h x w -> B*N x C x h x w (a copy)
            return t.unsqueeze(1).expand(-1, n, -1, -1, -1).flatten(0, 1)

        x = torch.cat([per_query(features), attention.flatten(0, 1)], 1)
        x = F.relu(self.gn1(self.lay1(x)))
        adapters = [per_query(a(f)) for a, f in zip(self._adapters(), fpns, strict=True)]
        out = self._decode(x, adapters)
        return out.reshape(b, n, *out.shape[-2:])

    # -- the fast path: shared per-image part + per-query part ---------------------------
    def image_features(self, features: Tensor, fpns: list[Tensor]) -> ImageFeatures:
        """The query-independent part, once per image. features: [B, d, h, w]; fpns: [C4, C3, C2]."""
        w = self.lay1.weight[:, : self.d]
        lay1 = F.conv2d(features, w, self.lay1.bias, padding=1)
        adapters = [a(f) for a, f in zip(self._adapters(), fpns, strict=True)]
        return ImageFeatures(lay1, adapters)

    def query_masks(self, shared: ImageFeatures, attention: Tensor) -> Tensor:
        """Masks of Q queries. shared: `image_features` of their image (batch 1, broadcast
        over the queries) or one row per query (`ImageFeatures.repeated`); attention:
        [Q, M, h, w] -> [Q, H/4, W/4]."""
        size = shared.adapters[-1].shape[-2:]
        if attention.shape[0] == 0:
            return attention.new_zeros((0, *size))
        w = self.lay1.weight[:, self.d :]
        x = F.conv2d(attention, w, padding=1) + shared.lay1_features  # Q x (d+M) x h x w
        x = F.relu(self.gn1(x))
        return self._decode(x, shared.adapters)[:, 0]

    # -- shared tail --------------------------------------------------------------------
    def _adapters(self) -> tuple[nn.Conv2d, nn.Conv2d, nn.Conv2d]:
        return self.adapter1, self.adapter2, self.adapter3

    def _decode(self, x: Tensor, adapters: list[Tensor]) -> Tensor:
        """x: [Q, d+M, h, w] after lay1/gn1/relu; adapters broadcastable to [Q, C_i, ...]
        (batch 1 or Q). Returns [Q, 1, H/4, W/4]."""
        x = F.relu(self.gn2(self.lay2(x)))
        for adapted, lay, gn in zip(
            adapters, (self.lay3, self.lay4, self.lay5), (self.gn3, self.gn4, self.gn5), strict=True
        ):
            x = upsample_add(x, adapted)
            x = F.relu(gn(lay(x)))
        return self.out_lay(x)


def upsample_add(x: Tensor, skip: Tensor) -> Tensor:
    """skip + nearest upsampling of x to skip's size. x: [Q, C, h, w]; skip: [1 or Q, C, H, W].

    When H, W = 2h, 2w (the usual case) this is one broadcast add over 2x2 blocks, without
    materialising the upsampled tensor; it equals `F.interpolate(x, size=(H, W))`, whose
    nearest source index floor(i * h / H) is i // 2 then.
    """
    q, c, h, w = x.shape
    big_h, big_w = skip.shape[-2:]
    if (big_h, big_w) != (2 * h, 2 * w):
        return skip + F.interpolate(x, size=(big_h, big_w), mode="nearest")
    # splitting a dimension is a view in any memory layout (contiguous or channels-last)
    blocks = skip.unflatten(2, (h, 2)).unflatten(4, (w, 2)) + x[:, :, :, None, :, None]
    return blocks.reshape(max(q, skip.shape[0]), c, big_h, big_w)
