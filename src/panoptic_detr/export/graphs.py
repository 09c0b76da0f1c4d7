"""The two steps of `model.inference.segment` as exportable modules: `DetectGraph` (what
`DETRPanoptic.detect` computes, plus the mask head's per-image part) and `MaskGraph` (the mask
head for the kept queries of one image, what `DETRPanoptic.predict_masks` runs per image).

Both call the model's own methods; the one substitution is `mask_head.upsample_add`, whose
fast 2x-block path is chosen by a Python test on the sizes (a 2x grid or not, which depends on
the image size). Traced, that test would freeze one branch into the graph, so while exporting
it is replaced by the general nearest-upsample-and-add it equals (`nearest_upsample_add`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import DETRPanoptic, mask_head
from ..model.mask_head import ImageFeatures
from ..structures import PaddedBatch

DETECT_INPUTS = ("images", "mask")
DETECT_OUTPUTS = ("pred_logits", "pred_boxes", "queries", "keys", "padding", "lay1", "adapter1",
                  "adapter2", "adapter3")
"""pred_logits [B, N, K+1], pred_boxes [B, N, 4] (normalised cx, cy, w, h), queries [B, N, d]
(the last decoder layer), keys [B, d, h, w] (what the mask attention attends over), padding
[B, h, w] bool (C5 grid), lay1 [B, d+M, h, w] and adapter1..3 [B, C_i, H/s, W/s] (s = 16, 8, 4):
the mask head's per-image part (`MaskHead.image_features`)."""
MASK_INPUTS = ("queries", "keys", "padding", "lay1", "adapter1", "adapter2", "adapter3")
"""One image's rows of the detect outputs: queries [Q, d] (the kept queries only), the others
with batch 1."""
MASK_OUTPUTS = ("masks",)
"""masks [Q, H/4, W/4] mask logits."""
SHAPES = {
    "detect": {"images": "[B, 3, H, W] float32, ImageNet-normalised, 0 on padding",
               "mask": "[B, H, W] bool, True on padding",
               "pred_logits": "[B, N, K+1] float32 class logits, the last is no-object",
               "pred_boxes": "[B, N, 4] float32 normalised (cx, cy, w, h)",
               "queries": "[B, N, d] float32 last decoder layer", "keys": "[B, d, h, w] float32",
               "padding": "[B, h, w] bool", "lay1": "[B, d+M, h, w] float32",
               "adapter1": "[B, d/2, H/16, W/16] float32", "adapter2": "[B, d/4, H/8, W/8] float32",
               "adapter3": "[B, d/8, H/4, W/4] float32"},
    "mask": {"queries": "[Q, d] float32: rows of one image's queries, the kept ones",
             "keys / padding / lay1 / adapter1..3": "that image's rows of the detect outputs (batch 1)",
             "masks": "[Q, H/4, W/4] float32 mask logits"},
}
"""What model.json says of each graph's tensors (h, w: the C5 grid, H/32 or H/16 with DC5)."""


class DetectGraph(nn.Module):
    """images [B, 3, H, W] float32 (normalised, zero on padding), mask [B, H, W] bool (True on
    padding) -> the tensors named by `DETECT_OUTPUTS`."""

    def __init__(self, model: DETRPanoptic):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        det = m.detect(PaddedBatch(images, mask))
        shared = m.mask_head.image_features(det.src_proj, det.fpns)
        return (det.pred_logits, det.pred_boxes, det.hs[-1], m._keys(det), det.padding,
                shared.lay1_features, *shared.adapters)


class MaskGraph(nn.Module):
    """The tensors named by `MASK_INPUTS` -> masks [Q, H/4, W/4]."""

    def __init__(self, model: DETRPanoptic):
        super().__init__()
        self.model = model

    def forward(self, queries: Tensor, keys: Tensor, padding: Tensor, lay1: Tensor, adapter1: Tensor,
                adapter2: Tensor, adapter3: Tensor) -> Tensor:
        m = self.model
        att = m.bbox_attention(queries[None], keys, padding)[0]  # Q x M x h x w
        return m.mask_head.query_masks(ImageFeatures(lay1, [adapter1, adapter2, adapter3]), att)


def nearest_upsample_add(x: Tensor, skip: Tensor) -> Tensor:
    """skip + nearest upsampling of x to skip's size, for any sizes (see the module docstring)."""
    return skip + F.interpolate(x, size=skip.shape[-2:], mode="nearest")


@contextlib.contextmanager
def exportable() -> Iterator[None]:
    """While exporting: the mask head's upsampling without its size-dependent branch."""
    fast = mask_head.upsample_add
    mask_head.upsample_add = nearest_upsample_add
    try:
        yield
    finally:
        mask_head.upsample_add = fast


def sample_inputs(model: DETRPanoptic, height: int = 96, width: int = 128) -> tuple[tuple, tuple]:
    """Inputs to trace both graphs with: a padded batch of 2 (the second image smaller) and 3 kept
    queries of its first image (sizes >= 2 everywhere, so no dimension is taken for a constant)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, height, width, generator=g)
    mask = torch.zeros(2, height, width, dtype=torch.bool)
    mask[1, height * 3 // 4 :], mask[1, :, width * 3 // 4 :] = True, True
    images[mask[:, None].expand_as(images)] = 0
    with torch.no_grad():
        out = DetectGraph(model)(images, mask)
    one = [t[:1] for t in out[2:]]
    return (images, mask), (one[0][0, :3], *one[1:])
