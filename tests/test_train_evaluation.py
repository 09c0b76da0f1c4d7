"""Validation PQ in training: an oracle scores ~100, wrong classes 0."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from panoptic_detr.structures import Categories, Target
from panoptic_detr.train.distributed import DistInfo
from panoptic_detr.train.evaluation import make_evaluator, target_panoptic

CATS = Categories([{"id": 1, "name": "thing", "isthing": 1}, {"id": 2, "name": "stuff", "isthing": 0},
                   {"id": 3, "name": "other", "isthing": 1}])


def scene(h: int = 32, w: int = 48) -> tuple[torch.Tensor, Target]:
    masks = torch.zeros(3, h, w, dtype=torch.bool)
    masks[1] = True  # stuff background
    masks[0, 8:20, 12:28] = True
    masks[2, 20:28, 32:44] = True
    masks[1] &= ~(masks[0] | masks[2])
    t = Target(masks=masks, labels=torch.tensor([1, 2, 3]), boxes=torch.zeros(3, 4),
               iscrowd=torch.zeros(3, dtype=torch.bool), area=masks.sum((1, 2)).float(), size=(h, w))
    return torch.zeros(3, h, w), t


class Oracle(nn.Module):
    """Predicts the segments of `target` (queries 0..S-1), optionally with shifted classes."""

    def __init__(self, target: Target, n: int = 5, shift: int = 0, score_logit: float = 10.0,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.target, self.n, self.shift, self.score_logit, self.dtype = target, n, shift, score_logit, dtype
        self.unused = nn.Parameter(torch.zeros(1))  # gives the evaluator the model's dtype

    def detect(self, batch, return_attention=False):
        logits = torch.full((len(batch), self.n, CATS.num_classes + 1), -10.0)
        logits[:, :, -1] = 10.0
        for s, lab in enumerate(self.target.labels.tolist()):
            logits[:, s, -1] = 0.0 if self.score_logit < 10 else -10.0
            logits[:, s, (lab + self.shift - 1) % 3 + 1] = self.score_logit
        # the fields of a Detection that the evaluation reads
        boxes = torch.rand(len(batch), self.n, 4)
        return SimpleNamespace(pred_logits=logits.to(self.dtype), pred_boxes=boxes)

    def predict_masks(self, det, queries, chunk=None):
        small = self.target.masks[:, ::4, ::4].float() * 20 - 10  # S x H/4 x W/4
        full = torch.full((self.n, *small.shape[1:]), -10.0)
        full[: len(small)] = small
        return [full[q] for q in queries]


def test_oracle_scores_near_100_and_wrong_classes_0():
    image, t = scene()
    val = [(image, t)] * 3
    evaluate = make_evaluator(CATS, threshold=0.85, batch_size=2)
    right = evaluate(Oracle(t), val, torch.device("cpu"), DistInfo())
    # every segment matched; IoU < 1 only from upsampling the stride-4 masks at the borders
    assert all(v > 95 for v in right.values()), right
    wrong = evaluate(Oracle(t, shift=1), val, torch.device("cpu"), DistInfo())
    assert wrong == {"pq": 0.0, "pq_th": 0.0, "pq_st": 0.0}


def test_bfloat16_logits_near_the_threshold_select_as_float32():
    """Under bfloat16 autocast the logits are bfloat16: a query at probability 0.8808 (0.8789 once
    rounded) against threshold 0.88 must be kept or dropped the same by the query selection and
    the post-processing (dropped by one and kept by the other, it would be a ValueError)."""
    image, t = scene()
    val = [(image, t)] * 2
    evaluate = make_evaluator(CATS, threshold=0.88)
    want = evaluate(Oracle(t, score_logit=2.0), val, torch.device("cpu"), DistInfo())
    got = evaluate(Oracle(t, score_logit=2.0, dtype=torch.bfloat16), val, torch.device("cpu"), DistInfo())
    assert want["pq"] > 95 and got == want


def test_target_panoptic_round_trip():
    _, t = scene()
    id_map, segments = target_panoptic(t)
    for s, seg in enumerate(segments):
        assert torch.equal(id_map == seg["id"], t.masks[s]) and seg["area"] == int(t.masks[s].sum())
        assert seg["category_id"] == int(t.labels[s])
