"""Parity with the original DETR-R50 panoptic model (../shared/reference, see its README).

The reference weights are rebuilt from their names, saved as an original checkpoint
({"model": state_dict}) and loaded through `load_pretrained`, the path a downloaded
checkpoint takes; the outputs are compared with the original's on the stored padded batch.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from panoptic_detr.loading import load_pretrained
from panoptic_detr.model import PRESETS
from panoptic_detr.structures import PaddedBatch

KEYS = ["layer4", "pos", "memory", "hs", "pred_logits", "pred_boxes", "pred_masks"]
# float32 noise of the original itself (reference README), our bound is 3x it
FLOAT32_NOISE = {"pred_logits": 4e-4, "pred_boxes": 3e-5, "pred_masks": 3e-4}


@pytest.fixture(scope="module")
def checkpoint(reference, tmp_path_factory):
    spec = importlib.util.spec_from_file_location("reference_weights", reference / "reference_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sd = module.reference_state_dict(json.loads((reference / "official_keys.json").read_text()))
    sd.update(torch.load(reference / "bn_stats.pt", weights_only=True))
    path = tmp_path_factory.mktemp("parity") / "detr-r50-reference.pth"
    torch.save({"model": sd}, path)
    return path


@pytest.fixture(scope="module")
def official(reference):
    return torch.load(reference / "official_outputs.pt", weights_only=True)


def run(checkpoint, official, dtype):
    pretrained = load_pretrained(checkpoint)  # preset inferred from the tensors
    assert pretrained.config == PRESETS["detr_r50_panoptic"]
    model = pretrained.model.to(dtype)
    batch = PaddedBatch(official["input"].to(dtype), official["input_mask"])
    with torch.no_grad():
        out = model(batch)
    return model, out


@pytest.fixture(scope="module")
def float64(checkpoint, official):
    return run(checkpoint, official, torch.float64)


@pytest.fixture(scope="module")
def float32(checkpoint, official):
    return run(checkpoint, official, torch.float32)


def max_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    assert ours.shape == theirs.shape
    return (ours.double() - theirs).abs().max().item()


@pytest.mark.parametrize("key", KEYS)
def test_float64_matches_the_original(float64, official, key):
    _, out = float64
    assert getattr(out, key).dtype == torch.float64
    assert max_error(getattr(out, key), official[key]) < 1e-8


def test_float64_fast_mask_path_matches_the_original(float64, official):
    """predict_masks for a subset of queries, in any order, gives the original's masks."""
    model, out = float64
    queries = [torch.tensor([99, 3, 42, 0, 17]), torch.tensor([7, 64])]
    with torch.no_grad():
        masks = model.predict_masks(out, queries)
    for i, idx in enumerate(queries):
        assert max_error(masks[i], official["pred_masks"][i, idx]) < 1e-8


@pytest.mark.parametrize("key", list(FLOAT32_NOISE))
def test_float32_within_three_times_the_original_noise(float32, official, key):
    _, out = float32
    assert getattr(out, key).dtype == torch.float32
    assert max_error(getattr(out, key), official[key]) < 3 * FLOAT32_NOISE[key]


def test_float32_fast_mask_path_equals_the_full_forward(float32):
    model, out = float32
    with torch.no_grad():
        masks = model.predict_masks(out, [torch.arange(100), torch.arange(100)])
    # same maths, only the first convolution's sum is split: float32 rounding apart
    torch.testing.assert_close(torch.stack(masks), out.pred_masks, rtol=0, atol=2e-4)


def test_reference_outputs_are_not_degenerate(official):
    """The comparison means something: outputs vary across queries, images and pixels."""
    assert official["pred_logits"].std(1).min() > 0.1
    masks = official["pred_masks"]
    assert masks.std((2, 3)).min() > 0.3  # every mask varies over the image
    assert masks.std(1).mean() > 5e-3  # and masks differ between queries (by ~1e-2, far above 1e-8)
    assert (official["pred_boxes"].std(1) > 0.01).all()


def test_float32_channels_last_within_three_times_the_original_noise(checkpoint, official):
    """Channels-last (the faster layout for CPU convolutions) stays within the same bounds."""
    model = load_pretrained(checkpoint).model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(PaddedBatch(official["input"].float(), official["input_mask"]))
    for key, noise in FLOAT32_NOISE.items():
        assert max_error(getattr(out, key), official[key]) < 3 * noise


def test_prepared_for_inference_matches_the_original(checkpoint, official):
    """BN folded into the convolutions + channels-last: float64 within 1e-8 (detection and a
    few masks, to keep the test short), float32 within 3x the original's noise."""
    model = load_pretrained(checkpoint).model.to(torch.float64).prepare_for_inference()
    queries = [torch.tensor([0, 50, 99]), torch.tensor([12])]
    with torch.no_grad():
        det = model.detect(PaddedBatch(official["input"], official["input_mask"]))
        masks = model.predict_masks(det, queries)
        for key in ("layer4", "memory", "hs", "pred_logits", "pred_boxes"):
            assert max_error(getattr(det, key), official[key]) < 1e-8
        for i, idx in enumerate(queries):
            assert max_error(masks[i], official["pred_masks"][i, idx]) < 1e-8
        model = load_pretrained(checkpoint).model.prepare_for_inference()  # folded in float32
        out = model(PaddedBatch(official["input"].float(), official["input_mask"]))
    for key, noise in FLOAT32_NOISE.items():
        assert max_error(getattr(out, key), official[key]) < 3 * noise
