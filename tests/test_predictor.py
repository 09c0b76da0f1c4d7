"""Predictor: batched == one by one, kept-only masks == full forward, checkpoint files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_detr.data.images import preprocess
from panoptic_detr.demo import DEMO_SCENES
from panoptic_detr.gt.instances import panoptic_to_semantic
from panoptic_detr.model.postprocess import select_queries
from panoptic_detr.predictor import Predictor
from panoptic_detr.structures import PaddedBatch
from predict_fixtures import picture, save_checkpoint, tiny_pretrained

SMALL = {"size": 64, "max_size": 96, "threshold": 0.5}


def assert_same_result(a, b):
    assert torch.equal(a.id_map, b.id_map)
    assert len(a.segments_info) == len(b.segments_info)
    for sa, sb in zip(a.segments_info, b.segments_info, strict=True):
        assert {k: v for k, v in sa.items() if k not in ("score", "pred_bbox")} == \
               {k: v for k, v in sb.items() if k not in ("score", "pred_bbox")}
        assert abs(sa["score"] - sb["score"]) < 1e-9


@pytest.mark.parametrize("together", [True, False])
def test_batched_equals_one_by_one(together):
    pre = tiny_pretrained(torch.float64)
    opts = {**SMALL, "batched_network": together}
    same = [picture(48, 72, seed=s) for s in range(3)]
    batched = Predictor(pre, batch_size=3, **opts).predict_batch(same)
    alone = Predictor(pre, batch_size=1, **opts)
    assert sum(len(r.segments_info) for r in batched) > 3  # the test compares real segments
    for image, result in zip(same, batched, strict=True):
        assert result.size == (48, 72)
        assert_same_result(result, alone.predict(image))
    # mixed sizes: padding never reaches the largest image; run one by one (the CPU default),
    # the padded small image gets its own result too
    big, small = picture(60, 90, seed=7), picture(40, 50, seed=8)
    both = Predictor(pre, batch_size=2, **opts).predict_batch([small, big])
    assert both[0].size == (40, 50) and both[1].size == (60, 90)
    assert_same_result(both[1], alone.predict(big))
    if not together:
        assert_same_result(both[0], alone.predict(small))


def test_network_batching_defaults_to_one_by_one_on_cpu():
    pre = tiny_pretrained(torch.float64)
    assert Predictor(pre, **SMALL).batched_network is False
    assert Predictor(pre, batched_network=True, **SMALL).batched_network is True


@pytest.mark.parametrize("attention_pos", [False, True])
def test_kept_query_masks_equal_full_forward_masks(attention_pos):
    pre = tiny_pretrained(torch.float64, mask_attention_pos=attention_pos)
    model = pre.model
    x = [preprocess(picture(48, 72, seed=s), 64, 96).double() for s in (0, 1)]
    batch = PaddedBatch.from_images([x[0], x[1][:, :48]])
    with torch.inference_mode():
        full = model(batch).pred_masks
        det = model.detect(batch)
        keep = select_queries(det.pred_logits, 0.5)
        kept = model.predict_masks(det, keep)
    assert any(len(k) for k in keep)
    for i, k in enumerate(keep):
        torch.testing.assert_close(kept[i], full[i, k], rtol=0, atol=1e-9)
    # chunked: the same masks, also for empty selections (the small presets' attention keys
    # carry the positional encoding: a chunked path that forgot it failed here)
    every = [torch.arange(6), torch.tensor([], dtype=torch.long)]
    with torch.inference_mode():
        parts = model.predict_masks(det, every, chunk=2)
    torch.testing.assert_close(parts[0], full[0], rtol=0, atol=1e-9)
    assert parts[1].shape == (0, *full.shape[-2:])


def test_predict_from_a_project_checkpoint(tmp_path):
    pre = tiny_pretrained()
    ckpt = save_checkpoint(tmp_path / "tiny.pth", pre)
    image = picture(50, 70, seed=2)
    Image.fromarray(image).save(tmp_path / "im.png")
    predictor = Predictor(weights=ckpt, prepare=False, **SMALL)
    assert predictor.categories.name(3) == "grass"
    from_file = predictor.predict(tmp_path / "im.png")
    from_array = Predictor(pre, prepare=False, **SMALL).predict(image)
    assert from_file.size == (50, 70)
    assert from_file.segments_info, "the tiny model should find segments"
    assert_same_result(from_file, from_array)
    # prepared for inference (BN folded, channels-last): float32 rounding apart, the same
    fast = Predictor(weights=ckpt, prepare=True, **SMALL)
    assert fast.model.backbone is not predictor.model.backbone
    prepared = fast.predict(image)
    agree = (prepared.id_map == from_file.id_map).float().mean()
    assert agree > 0.97
    assert [s["category_id"] for s in prepared.segments_info] == \
        [s["category_id"] for s in from_file.segments_info]
    ids = {s["id"] for s in from_file.segments_info}
    assert set(from_file.id_map.unique().tolist()) <= ids | {0}
    assert {s["category_id"] for s in from_file.segments_info} <= {1, 2, 3, 4}
    assert all(np.isfinite(s["score"]) for s in from_file.segments_info)


def test_checkpoint_advice_and_explicit_options():
    pre = tiny_pretrained()
    assert Predictor(pre).size == 800  # no advice: the original's settings
    pre.inference = {"size": 64, "max_size": 96, "threshold": 0.6}
    advised = Predictor(pre)
    assert (advised.size, advised.max_size, advised.threshold) == (64, 96, 0.6)
    explicit = Predictor(pre, size=32, threshold=0.9)
    assert (explicit.size, explicit.max_size, explicit.threshold) == (32, 96, 0.9)


def test_bfloat16_network_gives_nearly_the_float32_segmentation():
    """The trained demo checkpoint on its bundled scenes: bfloat16 labels >= 97 % of pixels with
    the float32 category (measured 2026-11-24: see benchmarks/RESULTS.md)."""
    with pytest.raises(ValueError, match="dtype must be one of"):
        Predictor("demo", dtype="float16")
    fp32, bf16 = Predictor("demo", prepare=True), Predictor("demo", prepare=True, dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    agree, total = 0, 0
    for path in sorted(DEMO_SCENES.glob("*.jpg")):
        a, b = fp32.predict(path), bf16.predict(path)
        cat_a = panoptic_to_semantic(a.id_map.numpy(), a.segments_info)
        cat_b = panoptic_to_semantic(b.id_map.numpy(), b.segments_info)
        agree += int((cat_a == cat_b).sum())
        total += cat_a.size
    assert agree / total >= 0.97
