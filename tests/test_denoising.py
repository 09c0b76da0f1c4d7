"""Denoising training (train/denoising.py): the attention mask's blocks, noise-free queries are
the ground truth and their losses a perfectly matched query's, no leakage into the learned
queries, gradients reach the training-only embeddings, the step with denoising off is the step
as it was (a frozen copy below), and a short run with it on gives a checkpoint that predicts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from panoptic_detr import checkpoint as ckpt_io
from panoptic_detr.data.collate import collate_padded
from panoptic_detr.model import PRESETS, build_model
from panoptic_detr.model.detr import LayerOutput
from panoptic_detr.model.transformer import ExtraQueries
from panoptic_detr.predictor import Predictor
from panoptic_detr.train.config import ConfigError, DenoisingSection, config_from_dict, load_config
from panoptic_detr.train.criterion import (
    SetCriterion,
    drop_crowd,
    segment_class_loss,
    segment_memory,
    semantic_loss,
)
from panoptic_detr.train.denoising import (
    DenoisingQueries,
    attention_mask,
    box_sine,
    denoising_losses,
)
from panoptic_detr.train.loop import TrainError, train
from panoptic_detr.train.model_with_loss import ModelWithLoss
from tiny_detr import ToyScenes

ROOT = Path(__file__).resolve().parents[1]


def toy_batch(n: int = 2, seed: int = 0):
    """n toy scenes at 64 px with boxes from their masks (ToyScenes leaves them zero)."""
    from panoptic_detr.ops.boxes import masks_to_boxes_xyxy, xyxy_to_cxcywh

    items = []
    for image, t in ToyScenes(n, 64, 64, num_classes=4, seed=seed):
        h, w = t.masks.shape[-2:]
        t.boxes = xyxy_to_cxcywh(masks_to_boxes_xyxy(t.masks).float() / torch.tensor([w, h, w, h]))
        items.append((image, t))
    return collate_padded(items)


def tiny_model(**overrides):
    torch.manual_seed(0)
    return build_model(PRESETS["tiny"].with_overrides(**overrides))


def test_attention_mask_blocks():
    n, g, p = 3, 2, 2
    m = attention_mask(n, g, p)
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[:3, 3:] = True  # learned queries never see denoising ones
    expected[3:5, 5:7] = True  # group 0 does not see group 1 ...
    expected[5:7, 3:5] = True  # ... nor group 1 group 0
    assert torch.equal(m, expected)
    assert not m.diagonal().any()  # every query sees itself: no row is all blocked


def test_noise_free_queries_are_the_ground_truth():
    _, targets = toy_batch(2)
    torch.manual_seed(0)
    dn_q = DenoisingQueries(5, 32, DenoisingSection(groups=2, box_noise=0.0, label_flip=0.0))
    dn = dn_q(targets, num_queries=6)
    p = max(len(t) for t in targets)
    assert dn.extra.content.shape == (2, 2 * p, 32) and dn.extra.attn_mask.shape == (6 + 2 * p,) * 2
    for i, t in enumerate(targets):
        s = len(t)
        for g in range(2):
            at = slice(g * p, g * p + s)
            torch.testing.assert_close(dn.extra.content[i, at], dn_q.label_embed(t.labels), rtol=0, atol=0)
            # the box embedding is a matrix product, here of all images' boxes at once: its
            # rounding may depend on the number of rows (AMD Zen 4: 6e-8), so float32 noise
            torch.testing.assert_close(dn.extra.position[i, at], dn_q.box_embed(box_sine(t.boxes, 32)),
                                       rtol=1e-5, atol=1e-6)
            pad = dn.extra.content[i, g * p + s: (g + 1) * p]  # padding slots: the last label row
            assert torch.equal(pad, dn_q.label_embed.weight[5].expand_as(pad))
        assert dn.queries[i].tolist() == [6 + g * p + j for g in range(2) for j in range(s)]
        assert dn.targets[i].tolist() == list(range(s)) * 2


def test_box_noise_stays_in_its_bounds_and_labels_flip():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4]]).repeat(2000, 1)
    from panoptic_detr.train.denoising import flip_labels, noise_boxes

    torch.manual_seed(1)
    noisy = noise_boxes(boxes, 0.4)
    shift = (noisy[:, :2] - boxes[:, :2]).abs() / boxes[:, 2:]
    scale = noisy[:, 2:] / boxes[:, 2:]
    assert shift.max() <= 0.2 + 1e-6 and shift.max() > 0.19
    assert scale.min() >= 0.6 - 1e-6 and scale.max() <= 1.4 + 1e-6 and scale.std() > 0.1
    flipped = flip_labels(torch.zeros(2000, dtype=torch.int64), 0.5, 4)
    changed = (flipped != 0).float().mean()  # a flip to class 0 keeps the label: 0.5 x 3/4
    assert 0.3 < changed < 0.45 and set(flipped.tolist()) == {0, 1, 2, 3}


def test_denoising_loss_equals_a_perfectly_matched_querys():
    """Every learned query matched (N = S per image, identity matching): the denoising terms of
    queries that predict the same as those learned ones equal the matched terms, in every group."""
    torch.manual_seed(0)
    t = toy_batch(1, seed=3)[1][0]
    targets, n = [t, t], len(t)  # N = S in both images: every learned query is matched
    crit = SetCriterion(num_classes=5)
    logits, boxes = torch.randn(2, n, 6), torch.rand(2, n, 4) * 0.5 + 0.25
    masks = [torch.randn(n, 16, 16) for _ in range(2)]
    counts = [len(t) for t in targets]
    num_boxes, ce_weight = crit.normalizers(counts, logits)
    identity = [(torch.arange(n), torch.arange(n)) for _ in range(2)]
    matched = crit.class_box_losses(logits, boxes, targets, identity, num_boxes, ce_weight)
    matched.update(crit.mask_losses(masks, targets, identity, num_boxes))

    groups = 2
    dn_q = DenoisingQueries(5, 32, DenoisingSection(groups=groups, box_noise=0.0, label_flip=0.0))
    dn = dn_q(targets, num_queries=n)
    # the denoising queries predict what the learned ones do, group after group
    out = LayerOutput(logits.repeat(1, groups, 1), boxes.repeat(1, groups, 1))
    losses = denoising_losses([out], targets, dn, n, num_boxes)
    dn_masks = [torch.cat([m] * groups) for m in masks]
    pairs = list(zip(dn.queries, dn.targets, strict=True))
    losses.update({k.replace("loss_", "loss_dn_"): v
                   for k, v in crit.mask_losses(dn_masks, targets, pairs, num_boxes * groups).items()})
    for k in ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"):
        torch.testing.assert_close(losses[k.replace("loss_", "loss_dn_")], matched[k])
    # and they weigh in the total as their matched twins
    w = crit.weights
    total = crit.weighted_total({"loss_dn_ce": losses["loss_dn_ce"],
                                 "loss_dn_bbox_0": losses["loss_dn_bbox"]})
    torch.testing.assert_close(total, w.ce * matched["loss_ce"] + w.bbox * matched["loss_bbox"])


def test_learned_queries_do_not_see_the_denoising_ones():
    model = tiny_model().double().eval()
    batch, targets = toy_batch(2)
    batch = batch.to(dtype=torch.float64)
    targets = [t.to("cpu") for t in targets]
    dn_q = DenoisingQueries(5, 32, DenoisingSection(groups=3)).double()
    dn = dn_q(targets, num_queries=6)
    with torch.no_grad():
        plain = model.detect(batch)
        with_dn = model.detect(batch, extra=dn.extra)
        open_mask = ExtraQueries(dn.extra.content, dn.extra.position, torch.zeros_like(dn.extra.attn_mask))
        leaky = model.detect(batch, extra=open_mask)
    close = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(with_dn.pred_logits, plain.pred_logits, **close)
    torch.testing.assert_close(with_dn.pred_boxes, plain.pred_boxes, **close)
    for a, b in zip(with_dn.aux_outputs, plain.aux_outputs, strict=True):
        torch.testing.assert_close(a.pred_logits, b.pred_logits, **close)
    torch.testing.assert_close(with_dn.hs[:, :, :6], plain.hs, **close)
    assert with_dn.hs.shape[2] == 6 + dn.extra.content.shape[1]
    assert len(with_dn.extra_outputs) == 2 and with_dn.extra_outputs[-1].pred_logits.shape == (2, 3 * 3, 6)
    # the same queries without the mask do change the learned queries' outputs
    assert (leaky.pred_logits - plain.pred_logits).abs().max() > 1e-6
    # a denoising group's outputs do not depend on the other groups either
    one = DenoisingQueries(5, 32, DenoisingSection(groups=1)).double()
    one.load_state_dict(dn_q.state_dict())
    p = dn.extra.content.shape[1] // 3
    first = ExtraQueries(dn.extra.content[:, :p], dn.extra.position[:, :p], attention_mask(6, 1, p))
    with torch.no_grad():
        alone = model.detect(batch, extra=first)
    torch.testing.assert_close(with_dn.extra_outputs[-1].pred_boxes[:, :p],
                               alone.extra_outputs[-1].pred_boxes, **close)


def test_gradients_reach_the_denoising_embeddings():
    model = tiny_model().train()
    batch, targets = toy_batch(2)
    dn_q = DenoisingQueries(5, 32, DenoisingSection(groups=2))
    step = ModelWithLoss(model, SetCriterion(num_classes=5), denoising=dn_q)
    losses = step(batch, targets)
    assert {"loss_dn_ce", "loss_dn_bbox", "loss_dn_giou", "loss_dn_mask", "loss_dn_dice", "loss_dn_ce_0"} \
        <= set(losses)
    losses["loss"].backward()
    used = torch.cat([t.labels for t in targets]).unique()
    grad = dn_q.label_embed.weight.grad
    assert grad is not None and (grad[used].abs().sum(1) > 0).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dn_q.box_embed.parameters())
    assert model.mask_head.out_lay.weight.grad.abs().sum() > 0


def reference_detect(model, batch):
    """The detector's forward as it was before denoising existed (frozen copy: do not edit)."""
    from panoptic_detr.model.position import sine_position_encoding

    feats, masks = model.backbone(batch.images, batch.mask)
    c5, padding = feats[-1], masks[-1]
    pos = sine_position_encoding(padding, model.config.hidden_dim).to(c5.dtype)
    src_proj = model.input_proj(c5)
    t = model.transformer
    b, d, h, w = src_proj.shape
    src = src_proj.flatten(2).permute(2, 0, 1)
    pos_f = pos.flatten(2).permute(2, 0, 1)
    pad = padding.flatten(1)
    query_pos = model.query_embed.weight.unsqueeze(1).expand(-1, b, -1)
    memory = t.encoder(src, pos_f, pad)
    tgt, out = torch.zeros_like(query_pos), []
    for layer in t.decoder.layers:
        q = k = tgt + query_pos
        attn = layer.self_attn(q, k, value=tgt, need_weights=False)[0]
        tgt = layer.norm1(tgt + layer.dropout1(attn))
        attn = layer.multihead_attn(tgt + query_pos, memory + pos_f, value=memory, key_padding_mask=pad,
                                    need_weights=False)[0]
        tgt = layer.norm2(tgt + layer.dropout2(attn))
        ffn = layer.linear2(layer.dropout(F.relu(layer.linear1(tgt))))
        tgt = layer.norm3(tgt + layer.dropout3(ffn))
        out.append(t.decoder.norm(tgt))
    hs = torch.stack(out).transpose(1, 2)
    memory = memory.permute(1, 2, 0).reshape(b, d, h, w)
    from panoptic_detr.model.detr import Detection

    logits = model.class_embed(hs)
    boxes = model.bbox_embed(hs).sigmoid()
    aux = [LayerOutput(lg, bx) for lg, bx in zip(logits[:-1], boxes[:-1], strict=True)]
    return Detection(pred_logits=logits[-1], pred_boxes=boxes[-1], aux_outputs=aux,
                     layer4=c5, pos=pos, memory=memory, hs=hs, padding=padding, src_proj=src_proj,
                     fpns=[feats[2], feats[1], feats[0]])


def reference_step(model, crit, batch, targets):
    """ModelWithLoss.forward as it was before denoising existed (frozen copy: do not edit; its
    one change since, the mask head's one batch over all images, is not denoising's)."""
    det = reference_detect(model, batch)
    matched = drop_crowd(targets)
    counts = [len(t) for t in matched]
    num_boxes, ce_weight = crit.normalizers(counts, det.pred_logits)
    indices = crit.match(det.pred_logits, det.pred_boxes, matched)
    losses = crit.class_box_losses(det.pred_logits, det.pred_boxes, matched, indices, num_boxes, ce_weight)
    queries = [q for q, _ in indices]
    masks = model.predict_masks(det, queries, one_batch=True)
    losses.update(crit.mask_losses(masks, matched, indices, num_boxes))
    if crit.weights.semantic > 0:
        cells = model.class_embed(det.memory.flatten(2).transpose(1, 2))
        losses["loss_semantic"] = semantic_loss(cells, det.memory, det.padding, targets, len(counts))
    if crit.weights.segment > 0:
        pooled, labels = segment_memory(det.memory, matched)
        losses["loss_segment"] = segment_class_loss(model.class_embed(pooled), labels, num_boxes)
    losses.update(crit.aux_losses(det.aux_outputs, matched, num_boxes, ce_weight))
    w = crit.weights
    names = {"loss_ce": w.ce, "loss_bbox": w.bbox, "loss_giou": w.giou, "loss_mask": w.mask,
             "loss_dice": w.dice, "loss_semantic": w.semantic, "loss_segment": w.segment}
    losses["loss"] = sum(names[k.rstrip("0123456789").rstrip("_")] * v for k, v in losses.items())
    return losses


def test_denoising_off_is_the_step_as_it_was():
    """Losses and gradients bit for bit, with dropout on (so the random draws are in the same
    order too), against the frozen copy of the step before denoising."""
    from panoptic_detr.train.config import LossWeights

    model = tiny_model(dropout=0.1).train()
    ref_model = copy.deepcopy(model)
    crit = SetCriterion(num_classes=5, weights=LossWeights(semantic=1.0, segment=10.0))
    batch, targets = toy_batch(2, seed=5)
    torch.manual_seed(7)
    new = ModelWithLoss(model, crit)(batch, targets)
    new["loss"].backward()
    torch.manual_seed(7)
    ref = reference_step(ref_model, crit, batch, targets)
    ref["loss"].backward()
    assert list(new) == list(ref)
    for k in ref:
        assert torch.equal(new[k], ref[k]), k
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            assert torch.equal(p.grad, q.grad), name


def test_config_section_off_by_default_and_in_every_shipped_config():
    from panoptic_detr.demo import DEMO_CONFIG

    for path in [*sorted((ROOT / "configs").glob("*.yaml")), DEMO_CONFIG]:
        assert load_config(path).denoising.groups == 0, path
    assert config_from_dict({}).denoising == DenoisingSection()
    cfg = config_from_dict({}, ["denoising.groups=3", "denoising.box_noise=0.2"])
    assert (cfg.denoising.groups, cfg.denoising.box_noise) == (3, 0.2)
    with pytest.raises(ConfigError, match="denoising.label_flip: 1.5 is out of range"):
        config_from_dict({}, ["denoising.label_flip=1.5"])
    with pytest.raises(ConfigError, match="denoising.groups: denoising runs the mask head"):
        config_from_dict({}, ["denoising.groups=2", "all_query_masks=true"])


def test_short_run_with_denoising_gives_a_checkpoint_that_predicts(tmp_path):
    data = tmp_path / "data"
    base = {
        "model": {"preset": "tiny"},
        "data": {"train": str(data / "train"), "synth": {"n_train": 4, "size": 64}, "augment": False,
                 "max_size": 64, "val_size": 64, "check": False},
        "steps": 3, "batch_size": 2, "out_dir": str(tmp_path / "run"), "device": "cpu",
        "denoising": {"groups": 2},
    }
    metrics = train(config_from_dict(base), progress=False)
    assert metrics["step"] == 3 and {"loss_dn_ce", "loss_dn_mask", "loss_dn_bbox_0"} <= set(metrics)
    path = tmp_path / "run" / ckpt_io.LAST
    ck = ckpt_io.load_checkpoint(path)
    plain = build_model(PRESETS["tiny"].with_overrides(num_classes=12))
    assert {k: v.shape for k, v in ck["model"].items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert set(ck["train_state"]["denoising"]) == {"label_embed.weight", *(
        f"box_embed.{k}" for k in DenoisingQueries(12, 32, DenoisingSection()).box_embed.state_dict())}
    result = Predictor(weights=str(path), prepare=False, threshold=0.0).predict(torch.rand(3, 64, 64).numpy()
                                                                                 .transpose(1, 2, 0))
    assert result.id_map.shape == (64, 64)
    # resuming it with denoising off is refused in one line
    with pytest.raises(TrainError, match="trained with denoising on, the config has it off"):
        off = {**base, "denoising": {"groups": 0}, "steps": 4}
        train(config_from_dict(off), resume=True, progress=False)


def test_a_batch_without_segments_logs_the_same_terms_as_zeros():
    model = tiny_model().train()
    batch, targets = toy_batch(2)
    dn_q = DenoisingQueries(5, 32, DenoisingSection(groups=2))
    step = ModelWithLoss(model, SetCriterion(num_classes=5), denoising=dn_q)
    full = step(batch, targets)
    empty = [t.to("cpu") for t in targets]
    for t in empty:
        keep = torch.zeros(len(t), dtype=torch.bool)
        t.masks, t.labels, t.boxes, t.iscrowd, t.area = (t.masks[keep], t.labels[keep], t.boxes[keep],
                                                         t.iscrowd[keep], t.area[keep])
        t.segment_ids = None
    none = step(batch, empty)
    assert list(none) == list(full)
    assert all(float(none[k].detach()) == 0 for k in none if k.startswith("loss_dn_"))
    none["loss"].backward()
    assert dn_q.label_embed.weight.grad is not None  # zero, but there for DDP


def test_exact_resume_with_denoising(tmp_path):
    """1 step, stop, resume 1 == 2 uninterrupted: the denoising embeddings, their optimiser
    state and the noise draws (global RNG) all come back."""
    data = tmp_path / "data"
    from panoptic_detr.data.synth import make_dataset

    make_dataset(data, 4, seed=0, size=(64, 64), progress=False)

    def cfg(out, steps):
        return config_from_dict({
            "model": {"preset": "tiny", "overrides": {"dropout": 0.1}},
            "data": {"train": str(data), "augment": False, "max_size": 64, "val_size": 64, "check": False},
            "steps": steps, "batch_size": 2, "out_dir": str(out), "device": "cpu", "denoising": {"groups": 2},
        })

    train(cfg(tmp_path / "a", 2), progress=False)
    train(cfg(tmp_path / "b", 1), progress=False)
    first = ckpt_io.load_checkpoint(tmp_path / "b" / ckpt_io.LAST)["train_state"]["denoising"]
    train(cfg(tmp_path / "b", 2), resume=True, progress=False)
    a = ckpt_io.load_checkpoint(tmp_path / "a" / ckpt_io.LAST)
    b = ckpt_io.load_checkpoint(tmp_path / "b" / ckpt_io.LAST)
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    dn_a, dn_b = a["train_state"]["denoising"], b["train_state"]["denoising"]
    for k in dn_a:
        assert torch.equal(dn_a[k], dn_b[k]), k
    assert not torch.equal(first["label_embed.weight"], dn_b["label_embed.weight"])  # it trained
