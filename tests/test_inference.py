"""model/inference.segment: the one inference path (predict, validation and explain run it)."""

from __future__ import annotations

import pytest
import torch

from panoptic_detr.data.images import preprocess
from panoptic_detr.model import detr
from panoptic_detr.model.inference import segment
from panoptic_detr.structures import PaddedBatch
from predict_fixtures import picture, tiny_pretrained


def _batch(model_dtype=torch.float64):
    sizes = ((40, 50, 1), (60, 90, 2))
    ims = [preprocess(picture(h, w, seed=s), 64, 96).to(model_dtype) for h, w, s in sizes]
    return PaddedBatch.from_images(ims)


def test_one_by_one_gives_each_image_its_own_result():
    pre = tiny_pretrained(torch.float64)
    batch = _batch()
    is_thing = pre.categories.thing_mask()
    sizes = [(40, 50), (60, 90)]
    with torch.inference_mode():
        alone = [segment(pre.model, batch.alone(i), sizes[i : i + 1], is_thing, threshold=0.5)[0]
                 for i in (0, 1)]
        apart = segment(pre.model, batch, sizes, is_thing, threshold=0.5, together=False)
        padded = segment(pre.model, batch, sizes, is_thing, threshold=0.5, together=True)
    assert sum(len(s.result.segments_info) for s in alone) > 2
    for a, b in zip(alone, apart, strict=True):
        assert torch.equal(a.result.id_map, b.result.id_map) and torch.equal(a.kept, b.kept)
        assert a.result.segments_info == b.result.segments_info
    # padded together, the unpadded (larger) image still gets its own result
    assert torch.equal(padded[1].result.id_map, alone[1].result.id_map)
    assert padded[0].masks.shape[-2:] == padded[1].masks.shape[-2:]  # the padded grid
    assert padded[0].det is None  # not kept unless asked


def test_auto_mask_chunk_is_the_largest_under_the_budget_and_changes_nothing(monkeypatch):
    pre = tiny_pretrained(torch.float64)
    model, batch = pre.model, _batch()
    with torch.inference_mode():
        det = model.detect(batch)
    c2 = det.fpns[-1]
    per_query = model.mask_head.adapter3.out_channels * c2.shape[-2] * c2.shape[-1] * 8
    monkeypatch.setattr(detr, "MASK_CHUNK_BYTES", int(2.5 * per_query))
    assert model.mask_chunk(det) == 2
    monkeypatch.setattr(detr, "MASK_CHUNK_BYTES", per_query // 2)
    assert model.mask_chunk(det) == 1  # never below one query
    sizes = [(40, 50), (60, 90)]
    is_thing = pre.categories.thing_mask()
    with torch.inference_mode():
        auto = segment(model, batch, sizes, is_thing, threshold=0.5, mask_chunk="auto")
        whole = segment(model, batch, sizes, is_thing, threshold=0.5, mask_chunk=None)
    for a, b in zip(auto, whole, strict=True):
        torch.testing.assert_close(a.masks, b.masks, rtol=0, atol=1e-9)


def test_out_sizes_must_match_the_batch():
    pre = tiny_pretrained(torch.float64)
    with pytest.raises(ValueError, match="out_sizes has 1 entries for 2 images"):
        segment(pre.model, _batch(), [(40, 50)], pre.categories.thing_mask())
