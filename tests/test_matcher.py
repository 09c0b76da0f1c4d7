"""Hungarian matcher: optimal against brute force, invariant to the order of queries."""

from __future__ import annotations

import itertools

import torch

from panoptic_detr.train.matcher import MatchCosts, hungarian_match, match_cost_matrix


def _random_case(g: torch.Generator, b: int, n: int, k: int, sizes: list[int]):
    logits = torch.randn(b, n, k + 1, generator=g, dtype=torch.float64)
    boxes = torch.rand(b, n, 4, generator=g, dtype=torch.float64) * 0.5 + 0.1
    labels = [torch.randint(0, k, (s,), generator=g) for s in sizes]
    tboxes = [torch.rand(s, 4, generator=g, dtype=torch.float64) * 0.5 + 0.1 for s in sizes]
    return logits, boxes, labels, tboxes


def _brute_force_cost(cost: torch.Tensor) -> float:
    """Minimum total cost over all injective assignments of targets (columns) to queries."""
    n, t = cost.shape
    return min(
        sum(float(cost[q, j]) for j, q in enumerate(perm)) for perm in itertools.permutations(range(n), t)
    )


def test_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    sizes = [3, 0, 4, 1]
    logits, boxes, labels, tboxes = _random_case(g, b=4, n=5, k=6, sizes=sizes)
    matches = hungarian_match(logits, boxes, labels, tboxes)
    for i, (q, t) in enumerate(matches):
        assert len(q) == len(t) == sizes[i]
        assert len(set(q.tolist())) == sizes[i]
        cost = match_cost_matrix(logits[i : i + 1], boxes[i : i + 1], labels[i], tboxes[i])[0]
        if sizes[i]:
            got = float(cost[q, t].sum())
            assert abs(got - _brute_force_cost(cost)) < 1e-9


def test_cost_matrix_batched_equals_one_by_one():
    g = torch.Generator().manual_seed(2)
    logits, boxes, labels, tboxes = _random_case(g, b=3, n=4, k=5, sizes=[2, 3, 1])
    costs = MatchCosts(class_weight=1.5, bbox_weight=3.0, giou_weight=0.5)
    batched = match_cost_matrix(logits, boxes, torch.cat(labels), torch.cat(tboxes), costs)
    start = 0
    for i, lab in enumerate(labels):
        one = match_cost_matrix(logits[i : i + 1], boxes[i : i + 1], lab, tboxes[i], costs)[0]
        torch.testing.assert_close(batched[i, :, start : start + len(lab)], one)
        start += len(lab)


def test_invariant_to_query_permutation():
    g = torch.Generator().manual_seed(3)
    logits, boxes, labels, tboxes = _random_case(g, b=2, n=8, k=4, sizes=[5, 3])
    perm = torch.randperm(8, generator=g)
    base = hungarian_match(logits, boxes, labels, tboxes)
    permuted = hungarian_match(logits[:, perm], boxes[:, perm], labels, tboxes)
    for (q0, t0), (q1, t1) in zip(base, permuted, strict=True):
        # the same (original query, target) pairs, whatever order the queries came in
        pairs0 = sorted(zip(q0.tolist(), t0.tolist(), strict=True))
        assert pairs0 == sorted(zip(perm[q1].tolist(), t1.tolist(), strict=True))


def test_perfect_predictions_match_themselves():
    g = torch.Generator().manual_seed(4)
    tboxes = torch.rand(3, 4, generator=g) * 0.3 + 0.2
    labels = torch.tensor([2, 0, 1])
    logits = torch.full((1, 5, 4), -10.0)
    boxes = torch.rand(1, 5, 4, generator=g) * 0.3 + 0.2
    for q, s in zip([4, 1, 3], range(3), strict=True):
        logits[0, q, labels[s]] = 10.0
        boxes[0, q] = tboxes[s]
    ((q, t),) = hungarian_match(logits, boxes, [labels], [tboxes])
    assert dict(zip(t.tolist(), q.tolist(), strict=True)) == {0: 4, 1: 1, 2: 3}


def _disc(h: int, w: int, cy: float, cx: float, r: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    return (((ys - cy) ** 2 + (xs - cx) ** 2) <= r * r).double()


def test_mask_costs_decide_where_boxes_and_classes_cannot():
    """Two segments with the same class and box (a ring around a disc): the box costs tie, so
    DETR's matching takes the identity; with mask costs the query whose mask is the ring gets
    the ring whichever query holds it."""
    h = w = 32
    disc, outer = _disc(h, w, 16, 16, 6), _disc(h, w, 16, 16, 12)
    ring = outer - disc
    targets = torch.stack([ring, disc])
    box = torch.tensor([[0.5, 0.5, 0.75, 0.75]], dtype=torch.float64)
    tboxes = box.repeat(2, 1)
    labels = torch.tensor([1, 1])
    logits = torch.zeros(1, 2, 3, dtype=torch.float64)
    # query 0 predicts the disc, query 1 the ring, as logits at a quarter of the resolution
    pred = torch.stack([disc, ring])[None]
    pred = torch.nn.functional.avg_pool2d(pred, 4)[0] * 20 - 10
    costs = MatchCosts(mask_weight=1.0, dice_weight=1.0)
    [(q, t)] = hungarian_match(logits, box[None].repeat(1, 2, 1), [labels], [tboxes], costs,
                               [pred], [targets])
    assert dict(zip(t.tolist(), q.tolist(), strict=True)) == {0: 1, 1: 0}
    # the same with the queries swapped: the matching follows the masks
    [(q, t)] = hungarian_match(logits, box[None].repeat(1, 2, 1), [labels], [tboxes], costs,
                               [pred.flip(0)], [targets])
    assert dict(zip(t.tolist(), q.tolist(), strict=True)) == {0: 0, 1: 1}


def test_mask_cost_matrix_against_its_definition():
    from panoptic_detr.train.matcher import mask_cost_matrix

    g = torch.Generator().manual_seed(4)
    pred = torch.randn(5, 6, 7, generator=g, dtype=torch.float64)
    tgt = (torch.rand(3, 24, 28, generator=g) > 0.5).double()
    got = mask_cost_matrix(pred, tgt, MatchCosts(mask_weight=2.0, dice_weight=3.0))
    t = torch.nn.functional.avg_pool2d(tgt[None], 4)[0].flatten(1)
    for i in range(5):
        for j in range(3):
            x = pred[i].flatten().float()
            bce = torch.nn.functional.binary_cross_entropy_with_logits(x, t[j].float())
            p = x.sigmoid()
            dice = 1 - (2 * (p * t[j]).sum() + 1) / (p.sum() + t[j].sum() + 1)
            torch.testing.assert_close(got[i, j], (2 * bce + 3 * dice).to(got.dtype), rtol=1e-5, atol=1e-5)


def test_mask_costs_need_masks():
    import pytest

    logits, boxes, labels, tboxes = _random_case(torch.Generator().manual_seed(5), 1, 3, 2, [2])
    with pytest.raises(ValueError, match="pred_masks"):
        hungarian_match(logits, boxes, labels, tboxes, MatchCosts(dice_weight=1.0))
