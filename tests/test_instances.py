"""COCO instances <-> panoptic: decoding, the overlap rule, fragments, round trips."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from panoptic_detr.gt.instances import (
    crop_mask,
    decode_annotations,
    decode_segmentation,
    instances_to_panoptic,
    panoptic_to_instances,
    panoptic_to_semantic,
)


def _random_partition(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """[H, W] labels 0..n from nearest random seed points: n disjoint blobs plus background 0."""
    seeds = rng.uniform(0, 1, size=(n + 1, 2)) * [h, w]
    yy, xx = np.mgrid[0:h, 0:w]
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return d.argmin(axis=0)


def test_round_trip_non_overlapping_preserves_masks_and_categories():
    rng = np.random.default_rng(0)
    for trial in range(5):
        h, w, n = 23 + trial, 31, 6
        labels = _random_partition(rng, h, w, n)
        masks = np.stack([labels == k for k in range(1, n + 1)])
        cats = rng.integers(1, 90, size=n).tolist()
        crowd = (rng.uniform(size=n) < 0.3).tolist()
        id_map, segs, report = instances_to_panoptic(masks, cats, crowd, order="area", min_area=50)
        assert report["overlap_pixels"] == 0 and report["dropped"] == [] and report["occluded"] == 0
        anns = panoptic_to_instances(id_map, segs, image_id=7)
        assert len(anns) == n
        for k, ann in enumerate(anns):
            back, problems = decode_segmentation(ann["segmentation"], h, w)
            assert problems == []
            np.testing.assert_array_equal(back, masks[k])
            assert ann["category_id"] == cats[k] and ann["iscrowd"] == int(crowd[k])
            assert ann["image_id"] == 7 and ann["area"] == masks[k].sum()
        # and back again through the annotation decoder
        masks2, cats2, crowd2, _, problems = decode_annotations(anns, h, w)
        assert problems == []
        np.testing.assert_array_equal(masks2, masks)
        assert cats2 == cats and crowd2 == [bool(c) for c in crowd]


def test_polygon_rle_and_uncompressed_rle_agree():
    h, w = 12, 10
    square = [[2, 3, 7, 3, 7, 9, 2, 9]]
    m_poly, problems = decode_segmentation(square, h, w)
    assert problems == [] and m_poly.sum() == 5 * 6 and m_poly[3:9, 2:7].all()
    rle = mask_utils.encode(np.asfortranarray(m_poly.astype(np.uint8)))
    m_rle, _ = decode_segmentation({"size": [h, w], "counts": rle["counts"].decode()}, h, w)
    np.testing.assert_array_equal(m_rle, m_poly)
    # uncompressed RLE: column-major run lengths starting with zeros
    flat = m_poly.reshape(-1, order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    m_unc, _ = decode_segmentation({"size": [h, w], "counts": counts}, h, w)
    np.testing.assert_array_equal(m_unc, m_poly)


def test_bad_polygons_and_rle_are_reported():
    h, w = 10, 10
    m, problems = decode_segmentation([[-5, -5, 5, -5, 5, 5, -5, 5]], h, w)
    assert m.sum() == 25 and m[:5, :5].all() and "clipped" in problems[0]
    m, problems = decode_segmentation([[1, 1, 4, 1], [2, 2, 6, 2, 6, 6, 2, 6]], h, w)
    assert m.sum() == 16 and "polygon 0: degenerate" in problems[0]
    m, problems = decode_segmentation([[1, "x", 5, 1, 3, 1], "abc"], h, w)
    assert m is None and "polygon 0: degenerate" in problems[0] and "polygon 1: degenerate" in problems[1]
    m, problems = decode_segmentation([[1, 1, 5, 1, 3, 1]], h, w)  # collinear
    assert m is None and "no pixel" in problems[0]
    m, problems = decode_segmentation([[20, 20, 30, 20, 30, 30]], h, w)  # all outside
    assert m is None and any("no pixel" in p for p in problems)
    m, problems = decode_segmentation({"size": [5, 5], "counts": [25]}, h, w)
    assert m is None and "differs from the image size" in problems[0]
    anns = [{"id": 3, "category_id": 1, "segmentation": [[1, 1, 2, 1]]},
            {"id": 4, "category_id": 2, "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}]
    masks, cats, _, ids, problems = decode_annotations(anns, h, w)
    assert ids == [4] and cats == [2] and masks.shape == (1, h, w)
    assert problems == ["annotation 3: polygon 0: degenerate (2 points), skipped; no pixel left, "
                        "annotation skipped"]


def _two_overlapping(h=20, w=20):
    big = np.zeros((h, w), bool)
    big[2:15, 2:15] = True
    small = np.zeros((h, w), bool)
    small[10:18, 10:18] = True
    return big, small


def test_overlap_rule_area_and_annotation_order():
    big, small = _two_overlapping()
    # area: the smaller instance on top, whichever comes first in the file
    for masks, cats, small_idx in (([big, small], [1, 2], 1), ([small, big], [2, 1], 0)):
        id_map, segs, report = instances_to_panoptic(np.stack(masks), cats, order="area")
        inter = big & small
        assert (id_map[inter] == small_idx + 1).all()
        assert report["overlap_pixels"] == inter.sum() and report["occluded"] == 1
        by_cat = {s["category_id"]: s for s in segs}
        assert by_cat[2]["area"] == small.sum() and by_cat[1]["area"] == big.sum() - inter.sum()
    # annotation order: the later on top
    id_map, _, _ = instances_to_panoptic(np.stack([small, big]), [2, 1], order="annotation")
    assert (id_map[big & small] == 2).all()
    # crowd lies under non-crowd even when smaller
    id_map, segs, _ = instances_to_panoptic(np.stack([big, small]), [1, 2], [False, True])
    assert (id_map[big & small] == 1).all()
    assert {s["category_id"]: s["iscrowd"] for s in segs} == {1: 0, 2: 1}
    with pytest.raises(ValueError, match="order"):
        instances_to_panoptic(np.stack([big]), [1], order="size")


def test_fragments_below_min_area_are_dropped_and_uncover_what_lies_beneath():
    h, w = 20, 20
    bottom = np.zeros((h, w), bool)
    bottom[0:20, 0:20] = True
    middle = np.zeros((h, w), bool)
    middle[5:12, 5:12] = True  # 49 px, leaves 3 px uncovered by the top
    top = np.zeros((h, w), bool)
    top[5:12, 5:11] = True
    top[5:11, 11] = True
    tiny = np.zeros((h, w), bool)
    tiny[0, 0] = True  # 1 px, not occluded: kept although below min_area
    masks = np.stack([bottom, middle, top, tiny])
    id_map, segs, report = instances_to_panoptic(masks, [1, 2, 3, 4], order="annotation", min_area=5)
    assert [d["index"] for d in report["dropped"]] == [1]
    assert report["dropped"][0]["area"] == 1
    assert id_map[11, 11] == 1  # the dropped fragment's pixel went back to the bottom instance
    assert id_map[0, 0] == 4
    assert sorted(s["category_id"] for s in segs) == [1, 3, 4]
    assert sum(s["area"] for s in segs) == h * w


def test_random_overlaps_every_pixel_owned_by_a_covering_instance():
    rng = np.random.default_rng(1)
    h, w, n = 30, 40, 8
    masks = np.zeros((n, h, w), bool)
    for k in range(n):
        y, x = rng.integers(0, h - 5), rng.integers(0, w - 5)
        masks[k, y : y + rng.integers(3, 20), x : x + rng.integers(3, 25)] = True
    areas = masks.reshape(n, -1).sum(1)
    id_map, segs, report = instances_to_panoptic(masks, list(range(1, n + 1)), order="area")
    covered = masks.any(0)
    assert ((id_map > 0) == covered).all()
    for y, x in zip(*np.nonzero(covered), strict=True):
        owners = np.flatnonzero(masks[:, y, x])
        smallest = owners[areas[owners] == areas[owners].min()].max()  # ties: later on top
        assert id_map[y, x] == smallest + 1
    assert sum(s["area"] for s in segs) == covered.sum()
    # the same from cropped masks (what build-gt uses to save memory)
    cropped = [crop_mask(m) for m in masks]
    id_map2, segs2, report2 = instances_to_panoptic(cropped, list(range(1, n + 1)), size=(h, w))
    np.testing.assert_array_equal(id_map2, id_map)
    assert segs2 == segs and report2 == report
    for s in segs:
        ys, xs = np.nonzero(id_map == s["id"])
        assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_no_instances_give_an_all_void_map():
    id_map, segs, report = instances_to_panoptic(np.zeros((0, 4, 5), bool), [], [], min_area=3)
    assert id_map.shape == (4, 5) and not id_map.any() and segs == [] and report["overlap_pixels"] == 0
    assert not instances_to_panoptic([], [], size=(4, 5))[0].any()
    with pytest.raises(ValueError, match="size"):
        instances_to_panoptic([], [])
    assert panoptic_to_instances(id_map, segs, image_id=1) == []


def test_panoptic_to_semantic():
    id_map = np.array([[0, 5, 5], [9, 9, 77]])
    segs = [{"id": 5, "category_id": 3}, {"id": 9, "category_id": 200}]
    sem = panoptic_to_semantic(id_map, segs)
    assert sem.dtype == np.uint8
    np.testing.assert_array_equal(sem, [[255, 3, 3], [200, 200, 255]])
    sem = panoptic_to_semantic(id_map, [{"id": 5, "category_id": 300}])
    assert sem.dtype == np.uint16 and sem[0, 1] == 300 and sem[1, 0] == 255
    with pytest.raises(ValueError, match="255"):
        panoptic_to_semantic(id_map, [{"id": 5, "category_id": 255}])
