"""Set criterion (tensors in, losses out) and ModelWithLoss (the model's outputs into it):
matched-only masks == all masks then select (loss and gradients), crowd handling, perfect
predictions, aux terms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from panoptic_detr.ops.boxes import masks_to_boxes_xyxy, xyxy_to_cxcywh
from panoptic_detr.structures import PaddedBatch, Target
from panoptic_detr.train.criterion import SetCriterion, upsample_bilinear
from panoptic_detr.train.matcher import MatchCosts, hungarian_match
from panoptic_detr.train.model_with_loss import ModelWithLoss
from tiny_detr import TinyDETR


def random_target(g: torch.Generator, h: int, w: int, n: int, num_classes: int, crowd: int = 0) -> Target:
    """n rectangular segments with random classes; the last `crowd` are crowd."""
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i in range(n):
        y0, x0 = (int(v) for v in torch.randint(0, h // 2, (2,), generator=g))
        masks[i, y0 : y0 + h // 3, x0 : x0 + w // 3] = True
    boxes = masks_to_boxes_xyxy(masks) / torch.tensor([w, h, w, h])
    iscrowd = torch.zeros(n, dtype=torch.bool)
    if crowd:
        iscrowd[-crowd:] = True
    return Target(masks=masks, labels=torch.randint(0, num_classes, (n,), generator=g),
                  boxes=xyxy_to_cxcywh(boxes), iscrowd=iscrowd, area=masks.sum((1, 2)).float(), size=(h, w))


def class_box_losses(crit: SetCriterion, logits: torch.Tensor, boxes: torch.Tensor, targets: list[Target]):
    """The criterion's pieces on bare tensors: normalisers, matching, class and box losses."""
    num_boxes, ce_weight = crit.normalizers([len(t) for t in targets], logits)
    indices = crit.match(logits, boxes, targets)
    return crit.class_box_losses(logits, boxes, targets, indices, num_boxes, ce_weight)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def tiny_real_model() -> torch.nn.Module:
    from panoptic_detr.model import PRESETS, build_model

    return build_model(PRESETS["tiny"].with_overrides(num_classes=4))


@pytest.mark.parametrize("costs", [MatchCosts(), MatchCosts(mask_weight=2.0, dice_weight=5.0)],
                         ids=["box-costs", "mask-costs"])
@pytest.mark.parametrize("make_model", [TinyDETR, tiny_real_model], ids=["stand-in", "detr-tiny"])
def test_matched_only_masks_equal_all_queries_loss_and_grads(make_model, costs):
    torch.manual_seed(0)
    model = make_model().double()
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(3, *hw, dtype=torch.float64, generator=g) for hw in ((32, 24), (24, 32))]
    batch = PaddedBatch.from_images(images)
    targets = [random_target(g, 32, 24, 3, 4), random_target(g, 24, 32, 2, 4, crowd=1)]
    results = []
    for all_queries in (False, True):
        model.zero_grad()
        step = ModelWithLoss(model, SetCriterion(num_classes=4, costs=costs), all_query_masks=all_queries)
        losses = step(batch, targets)
        losses["loss"].backward()
        results.append(({k: v.detach() for k, v in losses.items()}, _grads(model)))
    (l0, g0), (l1, g1) = results
    assert set(l0) == set(l1) and "loss_dice" in l0 and "loss_ce_0" in l0
    for k in l0:
        torch.testing.assert_close(l0[k], l1[k], rtol=1e-12, atol=1e-12)
    assert set(g0) == set(g1) and any(k.startswith("mask_head.") for k in g0)
    for k in g0:
        torch.testing.assert_close(g0[k], g1[k], rtol=1e-10, atol=1e-12)


def test_crowd_segments_do_not_change_the_loss():
    model = TinyDETR(num_classes=4).double()
    g = torch.Generator().manual_seed(2)
    batch = PaddedBatch.from_images([torch.randn(3, 32, 32, dtype=torch.float64, generator=g)])
    t = random_target(g, 32, 32, 4, 4, crowd=2)
    keep = ~t.iscrowd
    t_clean = Target(masks=t.masks[keep], labels=t.labels[keep], boxes=t.boxes[keep], iscrowd=t.iscrowd[keep],
                     area=t.area[keep], size=t.size)
    step = ModelWithLoss(model, SetCriterion(num_classes=4))
    a = step(batch, [t])
    b = step(batch, [t_clean])
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_perfect_predictions_have_near_zero_box_and_class_loss():
    """A model whose matched outputs equal the targets: box losses 0, CE small."""
    t = random_target(torch.Generator().manual_seed(3), 16, 16, 2, 3)
    logits = torch.full((1, 5, 4), -20.0)
    logits[0, :, 3] = 20.0  # no-object everywhere...
    boxes = torch.rand(1, 5, 4) * 0.2 + 0.4
    for q, s in ((1, 0), (4, 1)):  # ...but two exact predictions
        logits[0, q] = -20.0
        logits[0, q, t.labels[s]] = 20.0
        boxes[0, q] = t.boxes[s]
    crit = SetCriterion(num_classes=3, masks=False)
    losses = class_box_losses(crit, logits, boxes, [t])
    assert float(losses["loss_bbox"]) < 1e-6 and float(losses["loss_giou"]) < 1e-6
    assert float(losses["loss_ce"]) < 1e-6
    shifted = class_box_losses(crit, logits, boxes + 0.01, [t])
    # 4 coordinates off by 0.01 for each of the 2 boxes, / 2 boxes
    assert abs(float(shifted["loss_bbox"]) - 0.04) < 1e-5


def test_class_loss_is_weighted_cross_entropy_and_micro_batches_add_up():
    model = TinyDETR(num_classes=4).double()
    g = torch.Generator().manual_seed(5)
    images = [torch.randn(3, 16, 16, dtype=torch.float64, generator=g) for _ in range(3)]
    targets = [random_target(g, 16, 16, n, 4) for n in (3, 1, 2)]
    step = ModelWithLoss(model, SetCriterion(num_classes=4, masks=False))
    whole = step(PaddedBatch.from_images(images), targets)
    # the class term is F.cross_entropy's weighted mean (no-object weighs eos_coef)
    det = model.detect(PaddedBatch.from_images(images))
    indices = hungarian_match(det.pred_logits, det.pred_boxes, [t.labels for t in targets],
                              [t.boxes for t in targets])
    classes = torch.full((3, 6), 4)
    for i, (q, s) in enumerate(indices):
        classes[i, q] = targets[i].labels[s]
    weight = torch.tensor([1.0, 1, 1, 1, 0.1], dtype=torch.float64)
    expected = torch.nn.functional.cross_entropy(det.pred_logits.transpose(1, 2), classes, weight)
    torch.testing.assert_close(whole["loss_ce"], expected)
    # two micro-batches normalised by the step's counts sum to the whole batch's losses
    counts = [3, 1, 2]
    part1 = step(PaddedBatch.from_images(images[:1]), targets[:1], counts)
    part2 = step(PaddedBatch.from_images(images[1:]), targets[1:], counts)
    for k in whole:
        torch.testing.assert_close(part1[k] + part2[k], whole[k])


def test_images_without_segments():
    model = TinyDETR(num_classes=4)
    g = torch.Generator().manual_seed(4)
    batch = PaddedBatch.from_images([torch.randn(3, 16, 16, generator=g)] * 2)
    targets = [random_target(g, 16, 16, 0, 4), random_target(g, 16, 16, 1, 4)]
    losses = ModelWithLoss(model, SetCriterion(num_classes=4))(batch, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()


def test_semantic_loss_is_each_cells_cross_entropy_against_its_class_shares():
    """The dense class loss on the encoder memory, against a cell-by-cell count of the pixels:
    each 4x4-pixel cell's target is its classes' pixel shares; void-heavy and padded cells skip."""
    from panoptic_detr.train.criterion import semantic_loss

    k = 3
    g = torch.Generator().manual_seed(5)
    labels = [torch.randint(-1, k, (16, 16), generator=g), torch.randint(-1, k, (12, 16), generator=g)]
    labels[0][:4, :4] = -1  # a void cell
    targets = []
    for lab in labels:
        present = [c for c in range(k) if bool((lab == c).any())]
        masks = torch.stack([lab == c for c in present])
        targets.append(Target(masks=masks, labels=torch.tensor(present), boxes=torch.zeros(len(present), 4),
                              iscrowd=torch.zeros(len(present), dtype=torch.bool),
                              area=masks.sum((1, 2)).float(), size=tuple(lab.shape)))
    memory = torch.randn(2, k + 1, 4, 4, generator=g, requires_grad=True)
    padding = torch.zeros(2, 4, 4, dtype=torch.bool)
    padding[1, 3] = True  # the second image is 12 rows high
    head = torch.nn.Linear(k + 1, k + 1)
    with torch.no_grad():
        head.weight.copy_(torch.eye(k + 1))
        head.bias.zero_()

    def cells(mem):  # the class head on every memory cell: B x hw x K+1
        return head(mem.flatten(2).transpose(1, 2))

    loss = semantic_loss(cells(memory), memory, padding, targets)

    per_image = []
    for b, lab in enumerate(labels):
        terms = []
        for i in range(lab.shape[0] // 4):
            for j in range(4):
                cell = lab[4 * i : 4 * i + 4, 4 * j : 4 * j + 4].flatten()
                share = torch.bincount(cell[cell >= 0], minlength=k + 1).float() / 16
                if share.sum() <= 0.5:
                    continue
                terms.append(-(share / share.sum() * memory[b, :, i, j].log_softmax(0)).sum())
        assert 4 < len(terms) < 16  # some cells skipped, most kept
        per_image.append(torch.stack(terms).mean())
    torch.testing.assert_close(loss, torch.stack(per_image).mean())
    loss.backward()
    assert memory.grad[1, :, 3].abs().sum() == 0 and memory.grad[0, :, 0, 0].abs().sum() == 0
    # micro-batches normalised by the step's image count add up to the whole batch (alone, the
    # 12-row image has a 3-row memory and no padding)
    mem = memory.detach()
    first = semantic_loss(cells(mem[:1]), mem[:1], padding[:1], targets[:1], step_images=2)
    second = semantic_loss(cells(mem[1:, :, :3]), mem[1:, :, :3], padding[1:, :3], targets[1:], step_images=2)
    torch.testing.assert_close(first + second, loss.detach())


def test_segment_class_loss_is_each_segments_mean_memory_through_the_class_head():
    """Each segment's loss is the cross-entropy of the class head on the memory averaged over
    the segment's pixels (pixel-weighted over the 4x4 cells); an image without segments adds 0."""
    from types import SimpleNamespace

    from panoptic_detr.train.criterion import segment_class_loss, segment_memory

    k = 3
    g = torch.Generator().manual_seed(6)
    memory = torch.randn(2, 8, 4, 4, generator=g, requires_grad=True)
    model = SimpleNamespace(class_embed=torch.nn.Linear(8, k + 1))
    full = torch.zeros(16, 16, dtype=torch.bool)
    small, odd = full.clone(), full.clone()
    small[4:8, 8:12] = True  # exactly one cell: (1, 2)
    odd[0:4, 0:6] = True  # 16 pixels in cell (0, 0), 8 in cell (0, 1)
    masks = torch.stack([small, odd])
    targets = [Target(masks=masks, labels=torch.tensor([0, 2]), boxes=torch.zeros(2, 4),
                      iscrowd=torch.zeros(2, dtype=torch.bool), area=masks.sum((1, 2)).float(),
                      size=(16, 16)),
               random_target(g, 16, 16, 0, k)]
    pooled, labels = segment_memory(memory, targets)
    loss = segment_class_loss(model.class_embed(pooled), labels, torch.tensor(4.0))
    m = memory[0]
    expected = torch.nn.functional.cross_entropy(
        model.class_embed(torch.stack([m[:, 1, 2], (2 * m[:, 0, 0] + m[:, 0, 1]) / 3])), torch.tensor([0, 2]),
        reduction="sum") / 4
    torch.testing.assert_close(loss, expected)
    loss.backward()
    touched = memory.grad[0].abs().sum(0) > 0
    assert touched.nonzero().tolist() == [[0, 0], [0, 1], [1, 2]] and not memory.grad[1].any()


def test_segment_loss_enters_the_total_with_its_weight():
    from panoptic_detr.train.criterion import LossWeights

    model = tiny_real_model()
    g = torch.Generator().manual_seed(7)
    batch = PaddedBatch.from_images([torch.randn(3, 64, 64, generator=g)])
    targets = [random_target(g, 64, 64, 3, 4)]
    torch.manual_seed(0)
    off = ModelWithLoss(model, SetCriterion(4, LossWeights()))(batch, targets)
    torch.manual_seed(0)
    on = ModelWithLoss(model, SetCriterion(4, LossWeights(segment=2.0)))(batch, targets)
    assert "loss_segment" not in off and on["loss_segment"] > 0
    torch.testing.assert_close(on["loss"], off["loss"] + 2 * on["loss_segment"])


def test_mask_losses_on_given_logits_need_no_model():
    """The criterion scores mask logits it is handed: near-perfect ones score ~0, their
    opposites a lot; no model is involved."""
    t = random_target(torch.Generator().manual_seed(8), 16, 16, 2, 3)
    crit = SetCriterion(num_classes=3)
    indices = [(torch.tensor([4, 1]), torch.tensor([0, 1]))]
    perfect = (t.masks.double() * 2 - 1) * 30  # at the target's size: upsampling is the identity
    good = crit.mask_losses([perfect], [t], indices, 2.0)
    bad = crit.mask_losses([-perfect], [t], indices, 2.0)
    assert float(good["loss_dice"]) < 1e-6 and float(good["loss_mask"]) < 1e-6
    assert float(bad["loss_dice"]) > 0.9 and float(bad["loss_mask"]) > 1


def test_mask_losses_at_the_mask_resolution_score_the_pooled_targets():
    """mask_resolution "mask": the targets are area-averaged to the logits' grid (each 4 x 4
    block of the padded image becomes its share of the segment) and scored there, so the
    losses equal focal and dice against those shares computed by hand; the logits are not
    resized (their gradient is the soft loss's, cell by cell)."""
    from panoptic_detr.train.config import LossWeights
    from panoptic_detr.train.criterion import dice_loss, focal_loss

    g = torch.Generator().manual_seed(3)
    targets = [random_target(g, 32, 28, 3, 4), random_target(g, 24, 32, 2, 4)]  # padded to 32 x 32
    indices = [(torch.tensor([5, 0, 2]), torch.tensor([2, 0, 1])),
               (torch.tensor([1, 7]), torch.tensor([1, 0]))]
    logits = [torch.randn(3, 8, 8, generator=g, dtype=torch.double, requires_grad=True),
              torch.randn(2, 8, 8, generator=g, dtype=torch.double, requires_grad=True)]
    crit = SetCriterion(4, LossWeights(mask_resolution="mask"))
    got = crit.mask_losses(logits, targets, indices, 5.0)

    shares = []
    for t, (_, s) in zip(targets, indices, strict=True):
        m = torch.zeros(len(t), 32, 32, dtype=torch.double)
        m[:, : t.masks.shape[1], : t.masks.shape[2]] = t.masks.double()
        shares.append(m[s].reshape(len(s), 8, 4, 8, 4).mean((2, 4)))  # each 4 x 4 block's share
    src, tgt = torch.cat(logits).flatten(1), torch.cat(shares).flatten(1)
    assert bool(((tgt > 0) & (tgt < 1)).any())  # some cells are partly covered: soft targets
    torch.testing.assert_close(got["loss_mask"], focal_loss(src, tgt, 5.0))
    torch.testing.assert_close(got["loss_dice"], dice_loss(src, tgt, 5.0))
    image = SetCriterion(4, LossWeights()).mask_losses(logits, targets, indices, 5.0)
    assert float((image["loss_dice"] - got["loss_dice"]).abs().detach()) > 1e-3  # DETR's way scores otherwise
    (got["loss_mask"] + got["loss_dice"]).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in logits)


def test_the_config_loss_section_is_the_criterions_weights():
    from panoptic_detr.train.config import ConfigError, config_from_dict
    from panoptic_detr.train.criterion import LossWeights

    cfg = config_from_dict({"loss": {"segment": 2, "ce": 3.0}})
    assert isinstance(cfg.loss, LossWeights) and cfg.loss == LossWeights(ce=3.0, segment=2.0)
    assert SetCriterion(4, cfg.loss).weights is cfg.loss
    with pytest.raises(ConfigError, match=r"loss\.dense: unknown key \(known: ce, bbox, giou, mask, dice, "
                                          r"eos_coef, semantic, segment, mask_resolution\)"):
        config_from_dict({"loss": {"dense": 1.0}})
    with pytest.raises(ConfigError, match="loss.ce: expected a number"):
        config_from_dict({"loss": {"ce": "high"}})
    with pytest.raises(ConfigError, match=r"mask_resolution: must be one of \('image', 'mask'\), got 'low'"):
        config_from_dict({"loss": {"mask_resolution": "low"}})


@pytest.mark.parametrize("shape, size", [((5, 8, 8), (32, 32)), ((3, 7, 9), (28, 37)),
                                         ((2, 25, 38), (100, 150)), ((4, 10, 10), (7, 13))])
def test_upsample_bilinear_equals_interpolate_with_its_gradient(shape, size):
    """The matrix-product upsampling of the mask loss is F.interpolate's, forward and backward
    (upsampling by 4 as in training, odd factors, and a downsampling axis)."""
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x.requires_grad_(True)
    grad = torch.randn(shape[0], *size, dtype=torch.float64)
    want = F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    (want_grad,) = torch.autograd.grad(want, x, grad)
    got = upsample_bilinear(x, size)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=1e-12)
