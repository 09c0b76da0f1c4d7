"""eval/pq.py: parity with the COCO panoptic API's results, its rules on tiny maps, invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest

from panoptic_detr.data.panoptic_png import read_panoptic_png
from panoptic_detr.eval.pq import PanopticFormatError, PQStat, intersection_table, pq_image, pq_results

CATS = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1}, {"id": 3, "isthing": 0}, {"id": 4, "isthing": 0}]
CAT_IDS = {c["id"] for c in CATS}


def load_reference(reference, name):
    root = reference / "pq"
    gt = json.loads((root / "gt" / "panoptic_examples.json").read_text())
    pred = json.loads((root / name / "predictions.json").read_text())
    by_image = {a["image_id"]: a for a in pred["annotations"]}
    pairs = []
    for g in gt["annotations"]:
        p = by_image[g["image_id"]]
        gt_ids = read_panoptic_png(root / "gt" / "panoptic_examples" / g["file_name"])
        pred_ids = read_panoptic_png(root / name / "predictions" / p["file_name"])
        pairs.append((gt_ids, g["segments_info"], pred_ids, p["segments_info"]))
    return gt["categories"], pairs


def score(pairs, categories):
    stat = PQStat()
    for g, gs, p, ps in pairs:
        stat += pq_image(g, gs, p, ps, {c["id"] for c in categories})
    return pq_results(stat, categories)


def assert_results_equal(got, want, tol=1e-12):
    for name in ("All", "Things", "Stuff"):
        assert got[name]["n"] == want[name]["n"], name
        for m in ("pq", "sq", "rq"):
            assert got[name][m] == pytest.approx(want[name][m], abs=tol), (name, m)
    assert {str(k) for k in got["per_class"]} == {str(k) for k in want["per_class"]}
    for cat, v in got["per_class"].items():
        w = want["per_class"][cat] if cat in want["per_class"] else want["per_class"][str(cat)]
        for m in ("pq", "sq", "rq"):
            assert v[m] == pytest.approx(w[m], abs=tol), (cat, m)


@pytest.mark.parametrize("k", ["1", "2", "3"])
def test_equals_coco_panoptic_api(reference, k):
    categories, pairs = load_reference(reference, f"pred_{k}")
    expected = json.loads((reference / "pq" / "expected_pq.json").read_text())[k]
    assert_results_equal(score(pairs, categories), expected)


def test_reference_gt_as_prediction_scores_one(reference):
    categories, pairs = load_reference(reference, "pred_1")
    # The GT as a prediction, crowd regions included: they are neither matches nor false positives.
    perfect = [(g, gs, g, [{"id": s["id"], "category_id": s["category_id"]} for s in gs if s["area"] > 0])
               for g, gs, _, _ in pairs]
    res = score(perfect, categories)
    for name in ("All", "Things", "Stuff"):
        assert res[name]["pq"] == pytest.approx(1.0, abs=1e-12) and res[name]["n"] > 0


# ---------------------------------------------------------------- random scenes

def random_scene(rng, h=48, w=64, n=8):
    """A GT id map of overlapping rectangles over a stuff background, with void and crowd."""
    ids = np.zeros((h, w), np.int64)
    ids[:, : w // 2] = 1
    ids[:, w // 2:] = 2
    segs = {1: (3, 0), 2: (4, 0)}
    crowded = set()  # COCO has at most one crowd region per class and image
    for k in range(3, 3 + n):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        ids[y: y + rng.integers(4, h // 2), x: x + rng.integers(4, w // 2)] = k
        cat = int(rng.integers(1, 3))
        crowd = cat not in crowded and rng.random() < 0.15
        crowded |= {cat} if crowd else set()
        segs[k] = (cat, int(crowd))
    ids[rng.random((h, w)) < 0.03] = 0  # void
    ids[:2] = 0
    present = set(np.unique(ids).tolist()) - {0}
    info = [{"id": k, "category_id": c, "iscrowd": cr, "area": int((ids == k).sum())}
            for k, (c, cr) in segs.items() if k in present]
    return ids, info


def perturb(rng, ids, info):
    """A prediction: shifted, partly relabelled, some segments dropped, void and noise added."""
    p = np.roll(ids, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1)).copy()
    cats = {s["id"]: s["category_id"] for s in info}
    for k in list(cats):
        if rng.random() < 0.15:
            p[p == k] = 0
            del cats[k]
        elif rng.random() < 0.2:
            cats[k] = int(rng.integers(1, 5))
    noise = rng.random(p.shape) < 0.05
    p[noise] = rng.choice(list(cats) + [0], size=int(noise.sum()))
    p[p == 1] = np.where(rng.random(int((p == 1).sum())) < 0.5, 1, 99)  # a spurious speckle segment
    cats[99] = 3
    present = set(np.unique(p).tolist()) - {0}
    return p, [{"id": k, "category_id": c} for k, c in cats.items() if k in present]


def relabel(ids, info, rng):
    old = np.array(sorted({s["id"] for s in info}))
    new = rng.choice(np.arange(1, 2**24), size=old.size, replace=False)
    lut = dict(zip(old.tolist(), new.tolist(), strict=True))
    out = np.zeros_like(ids)
    for o, n in lut.items():
        out[ids == o] = n
    return out, [{**s, "id": lut[s["id"]]} for s in info]


def random_pairs(seed, n=6):
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        g, gs = random_scene(rng)
        p, ps = perturb(rng, g, gs)
        pairs.append((g, gs, p, ps))
    return pairs


def stats_equal(a, b, tol=1e-12):
    keys = {k for k, s in a.per_class.items() if s.tp + s.fp + s.fn} | \
           {k for k, s in b.per_class.items() if s.tp + s.fp + s.fn}
    for k in keys:
        x, y = a[k], b[k]
        assert (x.tp, x.fp, x.fn) == (y.tp, y.fp, y.fn), k
        assert x.iou == pytest.approx(y.iou, abs=tol), k


def test_random_predictions_are_imperfect_and_vary():
    res = score(random_pairs(0), CATS)
    assert 0.05 < res["All"]["pq"] < 0.95
    assert res["Things"]["n"] == 2 and res["Stuff"]["n"] == 2


@pytest.mark.parametrize("seed", [0, 1])
def test_perfect_prediction_scores_one(seed):
    pairs = random_pairs(seed)
    perfect = [(g, gs, g, [{"id": s["id"], "category_id": s["category_id"]} for s in gs])
               for g, gs, _, _ in pairs]
    res = score(perfect, CATS)
    for name in ("All", "Things", "Stuff"):
        assert res[name]["pq"] == res[name]["sq"] == res[name]["rq"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permuting_segment_ids_changes_nothing(seed):
    rng = np.random.default_rng(100 + seed)
    pairs = random_pairs(seed)
    for g, gs, p, ps in pairs:
        g2, gs2 = relabel(g, gs, rng)
        p2, ps2 = relabel(p, ps, rng)
        order = rng.permutation(len(ps2))
        stats_equal(pq_image(g, gs, p, ps, CAT_IDS), pq_image(g2, gs2, p2, [ps2[i] for i in order], CAT_IDS))


def test_image_order_and_split_merge_invariance():
    pairs = random_pairs(3, n=8)
    whole = score(pairs, CATS)
    rng = np.random.default_rng(0)
    shuffled = [pairs[i] for i in rng.permutation(len(pairs))]
    assert_results_equal(score(shuffled, CATS), whole)
    halves = []
    for part in (pairs[:3], pairs[3:]):
        s = PQStat()
        for g, gs, p, ps in part:
            s += pq_image(g, gs, p, ps, CAT_IDS)
        halves.append(s)
    assert_results_equal(pq_results(halves[0] + halves[1], CATS), whole)


@pytest.mark.parametrize("noise", [0.0, 0.3, 1.0])
def test_intersection_table_equals_pixelwise_counts(noise):
    rng = np.random.default_rng(7)
    g, _ = random_scene(rng)
    p = np.roll(g, 5, axis=1) * 10
    mask = rng.random(p.shape) < noise
    p[mask] = rng.integers(0, 200, int(mask.sum()))  # ids listed, unlisted and void, mixed
    g_listed = np.array([3, 4, 5, 7, 9])  # some GT ids left unlisted on purpose
    p_listed = np.unique(p[p > 0])[::2]
    table = intersection_table(g.astype(np.uint32), p.astype(np.uint32), g_listed, p_listed)

    def rows(ids, listed):  # boolean masks: each listed id, void, everything else
        return [ids == i for i in listed] + [ids == 0, (ids != 0) & ~np.isin(ids, listed)]

    want = np.array([[int((a & b).sum()) for b in rows(p, p_listed)] for a in rows(g, g_listed)])
    np.testing.assert_array_equal(table, want)
    assert table.sum() == g.size


# ---------------------------------------------------------------- the rules on tiny maps

def one_image(gt, gt_info, pred, pred_info):
    return pq_image(np.array(gt), gt_info, np.array(pred), pred_info, CAT_IDS)


def test_iou_must_exceed_half():
    gt = [[1, 1, 1, 1]]
    info = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 4}]
    half = one_image(gt, info, [[5, 5, 6, 6]], [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 2}])
    assert (half[1].tp, half[1].fn, half[1].fp, half[2].fp) == (0, 1, 1, 1)  # IoU 0.5: no match
    more = one_image(gt, info, [[5, 5, 5, 6]], [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 1}])
    assert (more[1].tp, more[1].fn, more[1].fp) == (1, 0, 1) and more[1].iou == pytest.approx(0.75)


def test_void_left_out_of_union_and_mostly_void_prediction_ignored():
    gt = [[0, 0, 1, 1, 1, 0]]
    info = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 3}]
    s = one_image(gt, info, [[7, 7, 7, 7, 0, 8]], [{"id": 7, "category_id": 1}, {"id": 8, "category_id": 3}])
    # id 7: intersection 2, union 4 + 3 - 2 - 2 (void) = 3; id 8 lies on void only: ignored
    assert (s[1].tp, s[1].fp, s[1].fn, s[3].fp) == (1, 0, 0, 0) and s[1].iou == pytest.approx(2 / 3)


def test_crowd_never_matched_nor_missed_and_covers_predictions_of_its_class():
    gt = [[1, 1, 1, 1, 2, 2]]
    info = [{"id": 1, "category_id": 1, "iscrowd": 1, "area": 4},
            {"id": 2, "category_id": 2, "iscrowd": 0, "area": 2}]
    pred = [[5, 5, 5, 5, 6, 6]]
    same = one_image(gt, info, pred, [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 2}])
    assert (same[1].tp, same[1].fn, same[1].fp) == (0, 0, 0) and same[2].tp == 1
    other = one_image(gt, info, pred, [{"id": 5, "category_id": 2}, {"id": 6, "category_id": 2}])
    assert (other[2].fp, other[2].tp, other[1].fn) == (1, 1, 0)


def test_gt_area_is_taken_from_the_json_as_the_api_does():
    s = one_image([[1, 1, 1, 1]], [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 10}],
                  [[5, 5, 5, 5]], [{"id": 5, "category_id": 1}])
    assert s[1].tp == 0 and s[1].fn == 1 and s[1].fp == 1  # IoU 4 / 10


@pytest.mark.parametrize("pred, info, message", [
    ([[5, 6]], [{"id": 5, "category_id": 1}], "ids [6] are in the PNG but not in the JSON"),
    ([[5, 5]], [{"id": 5, "category_id": 1}, {"id": 9, "category_id": 1}], "ids [9] are in the JSON but not"),
    ([[5, 5]], [{"id": 5, "category_id": 77}], "segment id 5 has unknown category_id 77"),
    ([[5, 5, 5]], [{"id": 5, "category_id": 1}], "prediction size 3x1 differs from the ground truth's 2x1"),
])
def test_mismatching_predictions_raise_clear_errors(pred, info, message):
    with pytest.raises(PanopticFormatError, match=message.replace("[", r"\[").replace("]", r"\]")):
        one_image([[1, 1]], [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 2}], pred, info)


def test_all_problems_reported_at_once():
    with pytest.raises(PanopticFormatError) as e:
        one_image([[1, 1]], [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 2}], [[5, 6]],
                  [{"id": 5, "category_id": 77}, {"id": 9, "category_id": 1}])
    assert len(e.value.problems) == 3


@pytest.mark.parametrize("pred, fp", [([[0, 9, 9, 9, 9, 9, 1, 1]], 0),   # 3 of 5 pixels on void: ignored
                                      ([[0, 0, 9, 9, 9, 9, 1, 1]], 1)])  # 2 of 4: exactly half, counted
def test_unmatched_prediction_ignored_only_when_more_than_half_void(pred, fp):
    gt = [[0, 0, 0, 0, 1, 1, 1, 1]]
    info = [{"id": 1, "category_id": 3, "iscrowd": 0, "area": 4}]
    s = one_image(gt, info, pred, [{"id": 9, "category_id": 1}, {"id": 1, "category_id": 3}])
    assert s[1].fp == fp and s[3].fn == 1
