"""Panoptic post-processing: parity with the original DETR on the reference cases and on
random outputs, PIL-exact nearest resize, stuff merging, padding, empty results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from panoptic_detr.model.postprocess import panoptic_postprocess, pil_nearest_indices, select_queries


def coco_is_thing(num_classes: int = 250) -> torch.Tensor:
    """The reference cases' convention: classes 1..90 are things, the rest stuff."""
    out = torch.zeros(num_classes, dtype=torch.bool)
    out[1:91] = True
    return out


def segment_set(id_map: torch.Tensor, infos: list[dict]) -> list[tuple[int, int, bytes]]:
    """(category, area, pixel set) of every segment, in a canonical order."""
    out = []
    for s in infos:
        mask = (id_map == s["id"]).numpy()
        out.append((int(s["category_id"]), int(s["area"]), np.packbits(mask).tobytes()))
        assert int(mask.sum()) == int(s["area"])
    return sorted(out)


def check_areas_and_boxes(result) -> None:
    for s in result.segments_info:
        ys, xs = torch.nonzero(result.id_map == s["id"], as_tuple=True)
        assert s["area"] == len(ys)
        assert s["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                             int(ys.max() - ys.min() + 1)]


def naive_original(logits, masks, processed, target, is_thing, threshold=0.85, min_area=4):
    """The original algorithm step by step (loops, softmax, PIL resize), ids from 0."""
    scores, labels = logits.softmax(-1).max(-1)
    keep = labels.ne(logits.shape[-1] - 1) & (scores > threshold)
    classes = labels[keep]
    m = F.interpolate(masks[keep][None], size=processed, mode="bilinear", align_corners=False)[0]
    m = m.flatten(1)
    (h, w), (H, W) = processed, target
    groups: dict[int, list[int]] = {}
    for k, c in enumerate(classes.tolist()):
        if not is_thing[c]:
            groups.setdefault(c, []).append(k)

    def ids_and_areas(m, n, merge):
        if m.shape[0] == 0:
            ids = torch.zeros((h, w), dtype=torch.int64)
        else:
            ids = m.t().softmax(-1).argmax(-1).view(h, w)
        if merge:
            for members in groups.values():
                for k in members:
                    ids[ids == k] = members[0]
        img = Image.fromarray(ids.numpy().astype(np.int32), mode="I").resize((W, H), Image.NEAREST)
        ids = torch.from_numpy(np.asarray(img).astype(np.int64))
        return [int((ids == i).sum()) for i in range(n)], ids

    area, ids = ids_and_areas(m, len(classes), True)
    while len(classes):
        small = torch.tensor([a <= min_area for a in area])
        if not small.any():
            break
        classes, m = classes[~small], m[~small]
        area, ids = ids_and_areas(m, len(classes), False)
    return classes.tolist(), area, ids


def random_outputs(seed: int, n: int = 14, num_classes: int = 7, grid=(6, 8)):
    """DETR-like outputs with duplicated stuff, unconfident and no-object queries, tiny masks."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, num_classes + 1, generator=g)
    cls = torch.randint(0, num_classes + 1, (n,), generator=g)
    confident = torch.rand(n, generator=g) < 0.8
    logits[torch.arange(n), cls] += torch.where(confident, 9.0, 1.0)
    masks = torch.randn(n, *grid, generator=g) * 3
    # a few queries that win only a handful of pixels, to exercise the small-segment filter
    for q in torch.randperm(n, generator=g)[:3].tolist():
        masks[q] -= 8
        y, x = (int(torch.randint(0, n, (1,), generator=g)) for n in grid)
        masks[q, y, x] += 16
    return logits, masks


SMALL_IS_THING = torch.tensor([True, True, True, False, False, False, False])


def test_pil_nearest_indices_match_pil():
    rng = np.random.default_rng(0)
    pairs = [(int(a), int(b)) for a, b in rng.integers(1, 2000, size=(150, 2))] + [(120, 301), (1066, 640)]
    for n_in, n_out in pairs:
        row = Image.fromarray(np.arange(n_in, dtype=np.int32)[None, :], mode="I")
        got = np.asarray(row.resize((n_out, 1), Image.NEAREST))[0]
        assert pil_nearest_indices(n_in, n_out).tolist() == got.tolist(), (n_in, n_out)


def test_select_queries():
    logits = torch.full((2, 4, 3), -10.0)
    logits[0, 0, 1] = 10  # confident class 1
    logits[0, 1, 2] = 10  # no-object
    logits[0, 2] = torch.tensor([1.0, 0.0, 0.0])  # unconfident: p = 0.58
    logits[1, 3, 0] = 10
    keep = select_queries(logits, 0.85)
    assert [k.tolist() for k in keep] == [[0], [3]]


def test_reference_cases_match_original(reference):
    cases = torch.load(reference / "postprocess_cases.pt", weights_only=False)
    is_thing = coco_is_thing()
    for i, case in enumerate(cases):
        size = tuple(case["processed_size"])
        result = panoptic_postprocess(
            case["pred_logits"][0], case["pred_masks"][0], size, size, tuple(case["target_size"]), is_thing
        )
        official = case["official_segments_info"]
        ids = case["official_panoptic_ids"]
        assert result.size == tuple(ids.shape)
        assert segment_set(result.id_map, result.segments_info) == segment_set(ids, official), f"case {i}"
        if not official:
            assert (result.id_map == 0).all()
        assert all(s["id"] >= 1 for s in result.segments_info)
        check_areas_and_boxes(result)


@pytest.mark.parametrize("seed", range(12))
def test_random_outputs_match_original_algorithm(seed):
    logits, masks = random_outputs(seed)
    processed = (24, 32)
    target = [(24, 32), (37, 45), (17, 29), (50, 19)][seed % 4]
    classes, areas, ids = naive_original(logits, masks, processed, target, SMALL_IS_THING)
    result = panoptic_postprocess(logits, masks, processed, processed, target, SMALL_IS_THING)
    assert [s["category_id"] for s in result.segments_info] == classes
    assert [s["area"] for s in result.segments_info] == areas
    check_areas_and_boxes(result)
    if classes:
        torch.testing.assert_close(result.id_map, ids + 1)  # same query order, ids from 1
    else:
        assert (result.id_map == 0).all()


def test_original_mode_splits_duplicated_stuff_union_merges_it(reference):
    case = torch.load(reference / "postprocess_cases.pt", weights_only=False)[1]  # 3 queries of stuff 184
    size = tuple(case["processed_size"])
    args = (case["pred_logits"][0], case["pred_masks"][0], size, size, size, coco_is_thing())
    union = panoptic_postprocess(*args, stuff_merge="union")
    stuff = [s["category_id"] for s in union.segments_info if not s["isthing"]]
    assert sorted(stuff) == sorted(set(stuff))  # one segment per stuff class

    # the union segment is exactly where the first argmax picks any query of its class
    logits = case["pred_logits"][0]
    keep = select_queries(logits[None])[0]
    classes = logits.softmax(-1).argmax(-1)[keep]
    up = F.interpolate(case["pred_masks"][0][keep][None], size=size, mode="bilinear", align_corners=False)[0]
    winner_class = classes[up.argmax(0)]
    seg = next(s for s in union.segments_info if s["category_id"] == 184)
    assert torch.equal(union.id_map == seg["id"], winner_class == 184)
    original = panoptic_postprocess(*args)
    orig_184 = next(s for s in original.segments_info if s["category_id"] == 184)
    assert orig_184["area"] < seg["area"]  # the original hands the duplicates' pixels away


def test_union_mode_one_segment_per_stuff_class_random():
    for seed in range(6):
        logits, masks = random_outputs(seed)
        result = panoptic_postprocess(logits, masks, (24, 32), (24, 32), (30, 40), SMALL_IS_THING,
                                      stuff_merge="union")
        stuff = [s["category_id"] for s in result.segments_info if not s["isthing"]]
        assert len(stuff) == len(set(stuff))
        assert all(s["area"] > 4 for s in result.segments_info)
        assert sum(s["area"] for s in result.segments_info) == 30 * 40 or not result.segments_info


def test_padding_is_cropped_batched_equals_solo():
    logits, masks = random_outputs(3, grid=(11, 14))  # padded batch: mask grid of 44 x 56
    for h, w in [(30, 41), (44, 40), (25, 56)]:
        solo_masks = masks[:, : -(-h // 4), : -(-w // 4)].clone()
        solo = panoptic_postprocess(logits, solo_masks, (h, w), (h, w), (2 * h, 3 * w), SMALL_IS_THING)
        batched = panoptic_postprocess(logits, masks, (h, w), (44, 56), (2 * h, 3 * w), SMALL_IS_THING)
        assert torch.equal(solo.id_map, batched.id_map)
        assert solo.segments_info == batched.segments_info
        # padding logits do not leak in
        noisy = masks.clone()
        noisy[:, -(-h // 4):] = 50.0
        noisy[:, :, -(-w // 4):] = -50.0
        again = panoptic_postprocess(logits, noisy, (h, w), (44, 56), (2 * h, 3 * w), SMALL_IS_THING)
        assert torch.equal(again.id_map, solo.id_map)


def test_empty_keep_gives_all_void():
    logits = torch.zeros(5, 8)
    logits[:, -1] = 10  # everything is no-object
    result = panoptic_postprocess(logits, torch.randn(5, 4, 4), (16, 16), (16, 16), (9, 7), SMALL_IS_THING)
    assert result.size == (9, 7)
    assert result.segments_info == []
    assert (result.id_map == 0).all()


def test_kept_query_masks_only_and_segment_fields():
    logits, masks = random_outputs(5)
    keep = select_queries(logits[None])[0]
    boxes = torch.rand(len(logits), 4) * 0.5 + 0.25
    full = panoptic_postprocess(logits, masks, (24, 32), (24, 32), (24, 32), SMALL_IS_THING, pred_boxes=boxes)
    kept = panoptic_postprocess(logits, masks[keep], (24, 32), (24, 32), (24, 32), SMALL_IS_THING,
                                query_idx=keep, pred_boxes=boxes)
    assert torch.equal(full.id_map, kept.id_map)
    assert full.segments_info == kept.segments_info
    assert [s["id"] for s in full.segments_info] == list(range(1, len(full.segments_info) + 1))
    scores = logits.softmax(-1).max(-1).values
    for s in full.segments_info:
        ys, xs = torch.nonzero(full.id_map == s["id"], as_tuple=True)
        assert s["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                             int(ys.max() - ys.min() + 1)]
        assert s["isthing"] == bool(SMALL_IS_THING[s["category_id"]])
        assert any(abs(s["score"] - float(v)) < 1e-6 for v in scores[keep])
        assert len(s["pred_bbox"]) == 4
    with pytest.raises(ValueError, match="query_idx"):
        panoptic_postprocess(logits, masks[keep[1:]], (24, 32), (24, 32), (24, 32), SMALL_IS_THING,
                             query_idx=keep[1:])


def test_near_tied_logits_resolved_like_the_softmax():
    # two queries one float32 step apart: the logits' argmax picks the second, the original's
    # softmax rounds both to the same probability and picks the first
    a = torch.tensor(0.3)
    b = torch.nextafter(a, torch.tensor(1.0))
    logits = torch.full((3, 5), -10.0)
    logits[0, 3] = 10.0  # query 0: stuff class 3
    logits[1, 0] = 10.0  # query 1: thing class 0
    logits[2, 1] = 10.0  # query 2: thing class 1
    masks = torch.stack([torch.full((4, 4), float(v)) for v in (a, b, -5.0)])
    classes, areas, ids = naive_original(logits, masks, (16, 16), (16, 16), SMALL_IS_THING)
    result = panoptic_postprocess(logits, masks, (16, 16), (16, 16), (16, 16), SMALL_IS_THING)
    assert classes == [3] and areas == [256]  # the first query wins everywhere
    assert [s["category_id"] for s in result.segments_info] == classes
    torch.testing.assert_close(result.id_map, ids + 1)


def test_chunked_upsampling_gives_the_same_segments(monkeypatch):
    from panoptic_detr.model import postprocess

    logits, masks = random_outputs(11)
    whole = panoptic_postprocess(logits, masks, (24, 32), (24, 32), (17, 29), SMALL_IS_THING)
    monkeypatch.setattr(postprocess, "UPSAMPLE_BYTES", 3 * 24 * 32 * 4)  # 3 queries a chunk
    chunked = panoptic_postprocess(logits, masks, (24, 32), (24, 32), (17, 29), SMALL_IS_THING)
    assert len(select_queries(logits[None])[0]) > 3  # several chunks
    assert torch.equal(whole.id_map, chunked.id_map) and whole.segments_info == chunked.segments_info


def test_select_queries_thresholds_bfloat16_logits_in_float32():
    """p = 0.8808 in float32, 0.8789 if the softmax ran in bfloat16: against 0.88 a bfloat16
    network's query is kept, and post-processing the same logits agrees (no mask missing)."""
    logits = torch.tensor([[-10.0, 2.0, -10.0, 0.0]] * 2).bfloat16()
    assert select_queries(logits[None], 0.88)[0].tolist() == [0, 1]
    masks = torch.zeros(2, 4, 4)
    masks[0, :, :2] = masks[1, :, 2:] = 5
    is_thing = torch.tensor([True, True, True])
    result = panoptic_postprocess(logits, masks, (16, 16), (16, 16), (16, 16), is_thing, threshold=0.88,
                                  query_idx=torch.tensor([0, 1]))
    assert len(result.segments_info) == 2


def _confident(classes: list[int], num_classes: int = 7) -> torch.Tensor:
    logits = torch.zeros(len(classes), num_classes + 1)
    logits[torch.arange(len(classes)), torch.tensor(classes)] = 10.0
    return logits


def test_overlap_threshold_drops_thing_fragments_only():
    """Query 1 (a thing) has a large mask but wins only a sliver: query 0, another thing, is
    stronger on most of it. With overlap_threshold 0.5 the sliver goes (its pixels to the next
    best query), with 0 it stays; a stuff query left with a sliver is never dropped by it."""
    h, w = 16, 20  # a 4 x 5 grid of mask logits
    masks = torch.full((3, h // 4, w // 4), -5.0)
    masks[2] = 1.0  # stuff everywhere, weak: it wins the last column
    masks[0, :, :3] = 8.0  # thing 0: the left three columns, strong
    masks[1, :, :3] = 4.0  # thing 1: its own mask is the first four columns, but thing 0 is
    masks[1, :, 3] = 2.0  # stronger on three of them: it wins only the fourth
    for classes, dropped in (([0, 1, 3], True), ([0, 3, 3], False)):
        logits = _confident(classes)
        plain = panoptic_postprocess(logits, masks, (h, w), (h, w), (h, w), SMALL_IS_THING)
        assert len(plain.segments_info) == (3 if classes[1] != classes[2] else 2)
        filtered = panoptic_postprocess(logits, masks, (h, w), (h, w), (h, w), SMALL_IS_THING,
                                        overlap_threshold=0.5)
        if not dropped:  # query 1 is stuff (merged with query 2's class): nothing changes
            assert filtered.segments_info == plain.segments_info
            assert torch.equal(filtered.id_map, plain.id_map)
            continue
        cats = sorted(s["category_id"] for s in filtered.segments_info)
        assert cats == [0, 3]
        stuff = next(s for s in filtered.segments_info if s["category_id"] == 3)
        sliver = plain.id_map == next(s["id"] for s in plain.segments_info if s["category_id"] == 1)
        # its pixels go to the next best query there: mostly the stuff, thing 0 near its edge
        assert bool(sliver.any()) and bool((filtered.id_map[sliver] > 0).all())
        assert float((filtered.id_map[sliver] == stuff["id"]).float().mean()) > 0.5
        # overlap 0 is exactly the original
        same = panoptic_postprocess(logits, masks, (h, w), (h, w), (h, w), SMALL_IS_THING,
                                    overlap_threshold=0.0)
        assert same.segments_info == plain.segments_info and torch.equal(same.id_map, plain.id_map)


@pytest.mark.parametrize("seed", range(4))
def test_overlap_threshold_keeps_whole_things_and_only_removes(seed):
    """On random outputs the filter only removes thing segments: every segment it keeps keeps
    its class, and the stuff segments are all still there."""
    logits, masks = random_outputs(seed)
    plain = panoptic_postprocess(logits, masks, (24, 32), (24, 32), (30, 40), SMALL_IS_THING)
    filtered = panoptic_postprocess(logits, masks, (24, 32), (24, 32), (30, 40), SMALL_IS_THING,
                                    overlap_threshold=0.6)
    plain_stuff = {s["category_id"] for s in plain.segments_info if not s["isthing"]}
    assert plain_stuff <= {s["category_id"] for s in filtered.segments_info}
    assert sum(s["isthing"] for s in filtered.segments_info) <= sum(s["isthing"] for s in plain.segments_info)
    assert sum(s["area"] for s in filtered.segments_info) == sum(s["area"] for s in plain.segments_info)


def test_score_assignment_gives_shared_pixels_to_the_confident_query():
    """Two things over the same pixels: query 0 confident (p ~ 0.99) with logit 2 there, query 1
    doubtful (p ~ 0.6) with logit 3. DETR's assignment (highest logit) gives them to query 1;
    Mask2Former's (score x sigmoid: 0.87 against 0.57) to query 0."""
    h, w = 16, 20
    masks = torch.full((3, h // 4, w // 4), -6.0)
    masks[2] = 0.0  # stuff, everywhere but weak
    masks[0, :, :3] = masks[1, :, :3] = 1.0
    masks[0, 1:3, 1:3], masks[1, 1:3, 1:3] = 2.0, 3.0  # the contested core
    logits = torch.full((3, 8), -4.0)
    logits[1] = 0.0
    logits[0, 0], logits[1, 1], logits[2, 4] = 6.0, 2.35, 6.0
    scores = logits.softmax(-1).amax(-1)
    assert scores[0] > 0.98 and 0.55 < scores[1] < 0.65  # the case this test is about
    core = torch.zeros(h, w, dtype=torch.bool)
    core[6:10, 6:10] = True  # well inside the contested 2 x 2 cells after upsampling
    owner = {}
    for mode in ("mask", "score"):
        r = panoptic_postprocess(logits, masks, (h, w), (h, w), (h, w), SMALL_IS_THING, threshold=0.5,
                                 pixel_assignment=mode)
        ids = {s["category_id"]: s["id"] for s in r.segments_info}
        owner[mode] = {c for c, i in ids.items() if bool((r.id_map[core] == i).all())}
    assert owner == {"mask": {1}, "score": {0}}


@pytest.mark.parametrize("seed", range(4))
def test_score_assignment_is_mask2formers_argmax(seed):
    """On random outputs (distinct thing classes, all kept, no segment filtered), each pixel goes
    to argmax over queries of score x sigmoid(upsampled mask logit), Mask2Former's
    `panoptic_inference`; with one score for every query it is DETR's argmax of the logits."""
    g = torch.Generator().manual_seed(seed)
    n, h, w = 5, 24, 32
    logits = torch.randn(n, 8, generator=g)
    logits[torch.arange(n), torch.arange(n)] += 4.0 + 2 * torch.rand(n, generator=g)
    masks = torch.randn(n, h // 4, w // 4, generator=g) * 3
    is_thing = torch.ones(7, dtype=torch.bool)
    scores = logits.softmax(-1).amax(-1)
    prob = scores[:, None, None] * torch.sigmoid(F.interpolate(masks[None], size=(h, w), mode="bilinear",
                                                               align_corners=False)[0])
    r = panoptic_postprocess(logits, masks, (h, w), (h, w), (h, w), is_thing, threshold=0.3, min_area=0,
                             pixel_assignment="score")
    assert len(r.segments_info) == n
    query_of_id = torch.tensor([0] + [s["category_id"] for s in r.segments_info])  # class k = query k
    assert torch.equal(query_of_id[r.id_map], prob.argmax(0))
    # one score for all: the assignment is the original's
    same = logits[:1].repeat(n, 1)
    by_score = panoptic_postprocess(same, masks, (h, w), (h, w), (30, 40), is_thing, threshold=0.3,
                                    pixel_assignment="score")
    by_mask = panoptic_postprocess(same, masks, (h, w), (h, w), (30, 40), is_thing, threshold=0.3)
    assert torch.equal(by_score.id_map, by_mask.id_map) and by_score.segments_info == by_mask.segments_info


def test_pixel_assignment_is_checked():
    with pytest.raises(ValueError, match="pixel_assignment"):
        panoptic_postprocess(*random_outputs(0), (24, 32), (24, 32), (24, 32), SMALL_IS_THING,
                             pixel_assignment="logit")
