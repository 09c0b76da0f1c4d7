"""The network: every preset builds, shapes, the fast mask path, batching and padding invariants."""

from __future__ import annotations

import json
import math

import pytest
import torch

from panoptic_detr.model import PRESETS, Detection, DETRConfig, build_model, count_parameters
from panoptic_detr.model.position import sine_position_encoding
from panoptic_detr.model.weights import to_original
from panoptic_detr.structures import PaddedBatch

SMALL = ["tiny", "detr_r18_small", "detr_r34_small", "detr_vgg_small"]


def tiny_model(dtype: torch.dtype = torch.float64, **overrides):
    torch.manual_seed(0)
    return build_model(PRESETS["tiny"].with_overrides(**overrides)).to(dtype).eval()


def images(*sizes: tuple[int, int], dtype: torch.dtype = torch.float64, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=g, dtype=dtype) for h, w in sizes]


@pytest.mark.parametrize("name", SMALL)
def test_small_presets_run(name):
    config = PRESETS[name]
    model = build_model(config).eval()
    batch = PaddedBatch.from_images(images((64, 96), (48, 64), dtype=torch.float32))
    with torch.no_grad():
        out = model(batch)
    assert isinstance(out, Detection) and out.attention_maps is None
    n, k = config.num_queries, config.num_classes
    assert out.pred_logits.shape == (2, n, k + 1)
    assert out.pred_boxes.shape == (2, n, 4)
    assert out.pred_masks.shape == (2, n, 16, 24)
    assert len(out.aux_outputs) == config.num_decoder_layers - 1
    assert out.hs.shape == (config.num_decoder_layers, 2, n, config.hidden_dim)
    c5 = (4, 6) if config.dilation else (2, 3)  # stride 16 or 32 of the 64x96 padded batch
    assert out.memory.shape == (2, config.hidden_dim, *c5)
    assert out.layer4.shape == (2, config.backbone_channels[-1], *c5)
    assert ((out.pred_boxes > 0) & (out.pred_boxes < 1)).all()
    assert all(torch.isfinite(getattr(out, k)).all() for k in ("pred_logits", "pred_masks"))


def test_r50_matches_the_original_checkpoint_layout(reference):
    """Every tensor name and shape of detr-r50-panoptic, nothing more."""
    with torch.device("meta"):
        model = build_model(PRESETS["detr_r50_panoptic"])
    ours = {k: list(v.shape) for k, v in to_original(model.state_dict()).items()}
    assert ours == json.loads((reference / "official_keys.json").read_text())
    assert count_parameters(model) == 42_899_288


def test_big_presets_build():
    with torch.device("meta"):
        dc5 = build_model(PRESETS["detr_r50_dc5_panoptic"])
        r101 = build_model(PRESETS["detr_r101_panoptic"])
    assert dc5.backbone.body.layer4[1].conv2.dilation == (2, 2)
    assert dc5.backbone.body.layer4[0].conv2.stride == (1, 1)
    assert len(r101.backbone.body.layer3) == 23
    assert count_parameters(dc5) == 42_899_288
    assert count_parameters(r101) == 61_839_192


def test_dc5_has_c5_at_stride_16():
    model = build_model(PRESETS["tiny"].with_overrides(backbone="resnet50", dilation=True)).eval()
    with torch.no_grad():
        out = model(PaddedBatch.from_images(images((64, 96), dtype=torch.float32)))
    assert out.layer4.shape[-2:] == (4, 6)
    assert out.pred_masks.shape[-2:] == (16, 24)


def test_dc5_of_a_basic_block_resnet_keeps_the_weights():
    """ResNet-18 DC5: C5 at stride 16, the same tensors as the plain one, so plain weights load."""
    plain = build_model(PRESETS["tiny"]).eval()
    dc5 = build_model(PRESETS["tiny"].with_overrides(dilation=True)).eval()
    dc5.load_state_dict(plain.state_dict())
    body = dc5.backbone.body
    assert body.layer4[0].conv1.stride == (1, 1) and body.layer4[0].downsample[0].stride == (1, 1)
    assert body.layer4[1].conv1.dilation == (2, 2) and body.layer4[0].conv1.dilation == (1, 1)
    batch = PaddedBatch.from_images(images((64, 96), dtype=torch.float32))
    with torch.no_grad():
        out, ref = dc5(batch), plain(batch)
    assert out.layer4.shape[-2:] == (4, 6) and ref.layer4.shape[-2:] == (2, 3)
    assert out.pred_masks.shape == ref.pred_masks.shape
    # the stride-1 first conv sees every position the strided one saw
    torch.testing.assert_close(body.layer4[0].conv1(torch.ones(1, 256, 4, 4))[..., ::2, ::2],
                               plain.backbone.body.layer4[0].conv1(torch.ones(1, 256, 4, 4)))


def test_group_norm_backbone_trains_and_is_batch_independent():
    config = PRESETS["tiny"].with_overrides(backbone_norm="group_norm")
    model = build_model(config).double().train()
    sd = model.state_dict()
    assert "backbone.body.bn1.weight" in sd and "backbone.body.bn1.running_mean" not in sd
    assert isinstance(model.backbone.body.layer2[0].bn1, torch.nn.GroupNorm)
    # from scratch every residual branch starts at zero (its last norm's scale)
    assert not model.backbone.body.layer3[1].bn2.weight.detach().any()
    a, b = images((64, 64), (64, 64))
    both = model(PaddedBatch.from_images([a, b]))
    one = model(PaddedBatch.from_images([b]))
    torch.testing.assert_close(both.pred_masks[1:], one.pred_masks, rtol=0, atol=1e-10)
    both.pred_logits.sum().backward()
    assert model.backbone.body.layer2[0].bn1.weight.grad is not None


@pytest.mark.parametrize("dilation", [False, True])
def test_vgg_small_trunk_strides_training_and_batch_independence(dilation):
    config = PRESETS["tiny"].with_overrides(backbone="vgg_small", backbone_norm="group_norm",
                                            dilation=dilation)
    torch.manual_seed(0)
    model = build_model(config).double().train()
    a, b = images((64, 96), (64, 96))
    feats, _ = model.backbone(torch.stack([a, b]), torch.zeros(2, 64, 96, dtype=torch.bool))
    c5 = (4, 6) if dilation else (2, 3)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 16, 24), (64, 8, 12), (128, 4, 6), (256, *c5)]
    # no pretrained weights can exist for it: every parameter trains, nothing is frozen to fold
    assert all(p.requires_grad for p in model.backbone.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.backbone.fuse_batchnorm()
    assert model.state_dict().keys() == before.keys()
    both = model(PaddedBatch.from_images([a, b]))
    one = model(PaddedBatch.from_images([b]))
    torch.testing.assert_close(both.pred_masks[1:], one.pred_masks, rtol=0, atol=1e-10)
    both.pred_logits.sum().backward()
    assert model.backbone.body.layer1[0][0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="vgg_small"):
        config.with_overrides(backbone_norm="frozen_bn")
    # odd sizes: the same grids as a ResNet's (post-processing crops ceil(h/4) x ceil(w/4) cells)
    resnet = build_model(PRESETS["tiny"].with_overrides(dilation=dilation)).eval()
    odd = torch.randn(1, 3, 97, 75)
    no_pad = torch.zeros(1, 97, 75, dtype=torch.bool)
    with torch.no_grad():
        sizes = [f.shape[-2:] for f in model.backbone.float()(odd, no_pad)[0]]
        assert sizes == [f.shape[-2:] for f in resnet.backbone(odd, no_pad)[0]]


def test_config_validation_and_round_trip():
    config = PRESETS["detr_r18_small"]
    assert DETRConfig.from_dict(config.to_dict()) == config
    assert config.with_overrides(num_queries=7).num_queries == 7
    with pytest.raises(ValueError, match="mask_head_groups"):
        config.with_overrides(mask_head_groups=8)  # 128 + 4 channels: not 8 groups
    with pytest.raises(ValueError, match="backbone"):
        config.with_overrides(backbone="vgg16")
    with pytest.raises(ValueError, match="backbone_norm"):
        config.with_overrides(backbone_norm="batch_norm")
    with pytest.raises(ValueError, match="pretrained_backbone"):
        config.with_overrides(backbone_norm="group_norm", pretrained_backbone=True)
    with pytest.raises(ValueError, match="unknown"):
        DETRConfig.from_dict({**config.to_dict(), "lr": 1.0})


def test_attention_maps_are_a_joint_softmax_and_zero_on_padding():
    model = tiny_model()
    batch = PaddedBatch.from_images(images((64, 96), (32, 64)))
    with torch.no_grad():
        det = model.detect(batch, return_attention=True)
    att = det.attention_maps  # B x N x M x h x w
    assert att.shape == (2, 6, 2, 2, 3)
    torch.testing.assert_close(att.sum((2, 3, 4)), torch.ones(2, 6, dtype=att.dtype))
    pad = det.padding
    assert pad[1].sum() == 4 and not pad[0].any()  # 32x64 in 64x96: one row and a column of C5
    assert (att[1][:, :, pad[1]] == 0).all()
    assert (att[1][:, :, ~pad[1]] > 0).all()


@pytest.mark.parametrize("pos_keys", [False, True])
def test_fast_masks_equal_the_direct_formulation(pos_keys):
    """The split first convolution and broadcast adapters give the original's masks."""
    model = tiny_model(mask_attention_pos=pos_keys)
    # non-trivial attention-map weights, so their channels matter in the comparison
    with torch.no_grad():
        model.mask_head.lay1.weight[:, model.config.hidden_dim :] *= 100
    batch = PaddedBatch.from_images(images((64, 96), (40, 70)))
    with torch.no_grad():
        full = model(batch).pred_masks  # B x N x H/4 x W/4
        det = model.detect(batch)
        queries = [torch.tensor([5, 0, 3]), torch.tensor([], dtype=torch.long)]
        fast = model.predict_masks(det, queries)
        every = model.predict_masks(det, [torch.arange(6)] * 2)
    assert fast[0].shape == (3, 16, 24) and fast[1].shape == (0, 16, 24)
    torch.testing.assert_close(fast[0], full[0, [5, 0, 3]], rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.stack(every), full, rtol=0, atol=1e-12)
    assert full.std() > 0.1  # not a degenerate comparison


def test_masks_in_one_batch_equal_each_images_own():
    """Training's one batch over all images' queries (features gathered per query) gives the
    masks each image gets alone, and its gradients reach the head as the per-image path's."""
    model = tiny_model()
    with torch.no_grad():
        model.mask_head.lay1.weight[:, model.config.hidden_dim :] *= 100
    batch = PaddedBatch.from_images(images((64, 96), (40, 70), (56, 56), seed=5))
    queries = [torch.tensor([5, 0, 3]), torch.tensor([], dtype=torch.long), torch.tensor([1, 2, 4, 0])]
    det = model.detect(batch)
    want = model.predict_masks(det, queries)
    got = model.predict_masks(det, queries, one_batch=True)
    assert [g.shape[0] for g in got] == [3, 0, 4]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)
    assert torch.cat(want).std() > 0.1
    weights = torch.randn(7, *want[0].shape[-2:], dtype=want[0].dtype)
    params = [model.mask_head.lay1.weight, model.mask_head.adapter3.weight,
              model.bbox_attention.q_linear.weight]
    want_grads = torch.autograd.grad((torch.cat(want) * weights).sum(), params, retain_graph=True)
    got_grads = torch.autograd.grad((torch.cat(got) * weights).sum(), params)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)
    assert model.predict_masks(det, [q[:0] for q in queries], one_batch=True)[0].shape == (0, 16, 24)


def test_batched_equals_one_by_one_for_same_size_images():
    model = tiny_model()
    ims = images((64, 96), (64, 96), seed=3)
    with torch.no_grad():
        both = model(PaddedBatch.from_images(ims))
        alone = [model(PaddedBatch.from_images([im])) for im in ims]
    for i, one in enumerate(alone):
        for key in ("pred_logits", "pred_boxes", "pred_masks", "memory", "hs"):
            b, o = getattr(both, key), getattr(one, key)
            b, o = (b[:, i], o[:, 0]) if key == "hs" else (b[i], o[0])
            torch.testing.assert_close(b, o, rtol=0, atol=1e-10)


def test_position_encoding_of_the_valid_region_ignores_padding():
    """The sine encoding is normalised by each image's own extent: the same grid cells get
    the same code alone or padded (sizes that are multiples of 32, so C5 cells align)."""
    model = tiny_model()
    small, big = images((64, 96), (128, 160))
    with torch.no_grad():
        alone = model.detect(PaddedBatch.from_images([small])).pos[0]
        padded = model.detect(PaddedBatch.from_images([small, big]))
    assert padded.padding[0].sum() == 4 * 5 - 2 * 3
    torch.testing.assert_close(padded.pos[0, :, :2, :3], alone, rtol=0, atol=1e-6)


def test_sine_position_encoding_values():
    mask = torch.zeros(1, 2, 3, dtype=torch.bool)
    mask[:, :, 2] = True  # last column is padding
    pos = sine_position_encoding(mask, dim=8, dtype=torch.float64)
    # y = 1, 2 over 2 rows, and x = 1, 2 over 2 valid columns, both scaled to (0, 2 pi]
    y = torch.tensor([1.0, 2.0], dtype=torch.float64) / (2 + 1e-6) * 2 * math.pi
    torch.testing.assert_close(pos[0, 0, :, 0], torch.sin(y))
    torch.testing.assert_close(pos[0, 1, :, 0], torch.cos(y))
    torch.testing.assert_close(pos[0, 2, :, 0], torch.sin(y / 100.0))  # 10000 ** (2 * 1 / 4)
    torch.testing.assert_close(pos[0, 4, 0, :2], torch.sin(y))  # x half, same valid extent


def test_gradients_reach_heads_and_trainable_backbone_only():
    model = build_model(PRESETS["tiny"]).train()
    batch = PaddedBatch.from_images(images((64, 64), dtype=torch.float32))
    det = model.detect(batch)
    masks = model.predict_masks(det, [torch.tensor([1, 4])])
    (masks[0].sum() + det.pred_logits.sum() + det.pred_boxes.sum()).backward()
    body = model.backbone.body
    assert body.layer1[0].conv1.weight.grad is None and not body.conv1.weight.requires_grad
    for p in (body.layer2[0].conv1.weight, model.mask_head.lay1.weight, model.bbox_attention.q_linear.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_tiny_images_give_finite_outputs():
    """A 1x1 image, and a small image padded beside a big one (one valid C5 cell)."""
    model = tiny_model()
    with torch.no_grad():
        one = model(PaddedBatch.from_images(images((1, 1))))
        mixed = model(PaddedBatch.from_images(images((8, 8), (96, 96))), return_attention=True)
    assert one.pred_masks.shape == (1, 6, 1, 1)
    assert mixed.padding[0].sum() == 8  # 3x3 C5 grid, one valid cell
    for out in (one, mixed):
        for key in ("pred_logits", "pred_boxes", "pred_masks"):
            assert torch.isfinite(getattr(out, key)).all()
    on_cell = mixed.attention_maps[0, :, :, 0, 0].sum(-1)  # N: all weight on that cell
    torch.testing.assert_close(on_cell, torch.ones_like(on_cell))


@pytest.mark.parametrize("size", [(6, 8), (5, 7)])
def test_upsample_add_equals_nearest_interpolation(size):
    from panoptic_detr.model.mask_head import upsample_add

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, *size, generator=g, dtype=torch.float64)
    big = (12, 16) if size == (6, 8) else (10, 13)  # exact 2x, and odd sizes (fallback)
    for batch in (1, 3):  # one image's skip broadcast over the queries, or one per query
        skip = torch.randn(batch, 4, *big, generator=g, dtype=torch.float64)
        want = skip + torch.nn.functional.interpolate(x, size=big, mode="nearest")
        torch.testing.assert_close(upsample_add(x, skip), want, rtol=0, atol=0)
        cl = torch.channels_last
        got = upsample_add(x.contiguous(memory_format=cl), skip.contiguous(memory_format=cl))
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_channels_last_gives_the_same_outputs():
    """A predictor may switch the model to channels-last (faster convolutions on CPU)."""
    model = tiny_model()
    batch = PaddedBatch.from_images(images((64, 96), (40, 64)))
    with torch.no_grad():
        want = model(batch)
        want_fast = model.predict_masks(model.detect(batch), [torch.tensor([2, 0]), torch.tensor([5])])
        model.to(memory_format=torch.channels_last)
        cl = PaddedBatch(batch.images.contiguous(memory_format=torch.channels_last), batch.mask)
        got = model(cl)
        got_fast = model.predict_masks(model.detect(cl), [torch.tensor([2, 0]), torch.tensor([5])])
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(getattr(got, key), getattr(want, key), rtol=0, atol=1e-10)
    for g, w in zip(got_fast, want_fast, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_prepare_for_inference_keeps_the_outputs():
    """Frozen BN folded into the convolutions, channels-last: the same function."""
    model = tiny_model()
    batch = PaddedBatch.from_images(images((64, 96), (40, 64)))
    queries = [torch.tensor([3, 1]), torch.tensor([0, 5, 2])]
    with torch.no_grad():
        want = model(batch)
        want_fast = model.predict_masks(model.detect(batch), queries)
        model.prepare_for_inference()
        model.prepare_for_inference()  # a second time changes nothing
        got = model(batch)
        got_fast = model.predict_masks(model.detect(batch), queries)
    assert not any("bn" in k or "downsample.1" in k for k in model.state_dict())
    assert model.backbone.body.layer2[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for key in ("layer4", "memory", "pred_logits", "pred_boxes", "pred_masks"):
        torch.testing.assert_close(getattr(got, key), getattr(want, key), rtol=0, atol=1e-10)
    for g, w in zip(got_fast, want_fast, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10)


def test_mask_attention_options():
    """pos keys: the attention reads memory + pos; init gain: only lay1's attention weights."""
    plain, gained = tiny_model(), tiny_model(mask_attention_init_gain=1000.0)
    d = plain.config.hidden_dim
    w0, w1 = plain.mask_head.lay1.weight, gained.mask_head.lay1.weight
    torch.testing.assert_close(w1[:, :d], w0[:, :d], rtol=0, atol=0)
    torch.testing.assert_close(w1[:, d:], 1000 * w0[:, d:])
    model = tiny_model(mask_attention_pos=True)
    batch = PaddedBatch.from_images(images((64, 96), (40, 70)))
    with torch.no_grad():
        det = model.detect(batch, return_attention=True)
        by_hand = model.bbox_attention(det.hs[-1], det.memory + det.pos, det.padding)
        without = model.bbox_attention(det.hs[-1], det.memory, det.padding)
    torch.testing.assert_close(det.attention_maps, by_hand, rtol=0, atol=0)
    assert (det.attention_maps - without).abs().max() > 1e-3
