"""The box conversions written out in ops/boxes.py give torchvision's numbers exactly."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_convert

from panoptic_detr.ops.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_conversions_equal_torchvisions_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    boxes = (torch.rand(3, 50, 4, generator=g) * 2 - 0.5).to(dtype)  # batch dims, any values
    assert torch.equal(cxcywh_to_xyxy(boxes), box_convert(boxes, "cxcywh", "xyxy"))
    assert torch.equal(xyxy_to_cxcywh(boxes), box_convert(boxes, "xyxy", "cxcywh"))
    assert cxcywh_to_xyxy(boxes[:0]).shape == (0, 50, 4)
