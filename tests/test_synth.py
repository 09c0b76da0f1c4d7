"""Synthetic scenes: deterministic, consistent with their segments, learnable, valid datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from panoptic_detr.cli import main
from panoptic_detr.data.images import load_image
from panoptic_detr.data.panoptic_png import read_panoptic_png
from panoptic_detr.data.synth import _SHAPES, THINGS, make_dataset, make_scene, synth_categories
from panoptic_detr.ops.panoptic import segment_stats

STUFF_IDS = {c["id"] for c in synth_categories() if not c["isthing"]}
THING_IDS = {c["id"] for c in synth_categories() if c["isthing"]}


def test_categories_table():
    cats = synth_categories()
    assert len(THING_IDS) >= 6 and len(STUFF_IDS) >= 4
    assert len({c["id"] for c in cats}) == len(cats) and all(len(c["color"]) == 3 for c in cats)
    assert max(THING_IDS) < min(STUFF_IDS)


def test_shapes_are_bounded_with_their_areas():
    """Each thing class, on a fine grid: inside the unit disc (so rotation never clips it) and
    of its analytic area (radius 1)."""
    g = np.linspace(-1.5, 1.5, 1201)
    u, v = np.meshgrid(g, g)
    px = (g[1] - g[0]) ** 2
    star = 5 * 0.45 * np.sin(np.pi / 5)  # five kites between outer radius 1 and inner 0.45
    expected = {"circle": np.pi, "square": 1.4**2, "triangle": 3 * np.sqrt(3) * 0.5**2, "star": star,
                "ring": np.pi * 0.7, "cross": 2 * 0.6 * 1.9 - 0.6**2}
    for name, inside in zip(THINGS, _SHAPES, strict=True):
        m = inside(u, v)
        assert not (m & (u * u + v * v > 1.0001)).any(), name
        assert m.sum() * px == pytest.approx(expected[name], rel=0.01), name


def test_deterministic_per_seed_and_index():
    a = make_scene(5, 3, (64, 96))
    b = make_scene(5, 3, (64, 96))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert a[0].shape == (64, 96, 3) and a[0].dtype == np.uint8 and a[1].shape == (64, 96)
    assert not np.array_equal(make_scene(6, 3, (64, 96))[0], a[0])  # other seed, other split
    assert not np.array_equal(make_scene(5, 4, (64, 96))[0], a[0])


@pytest.mark.parametrize("seed", [0, 1])
def test_segments_match_the_id_map(seed):
    """segments_info lists exactly the ids in the map, with correct area and bbox; the
    background is stuff everywhere things do not cover (void only for dropped slivers)."""
    seen_things, seen_stuff, repeated = set(), set(), False
    for index in range(25):
        img, id_map, segs = make_scene(seed, index, crowd_prob=0.3)
        ids = torch.tensor([s["id"] for s in segs])
        assert set(np.unique(id_map).tolist()) - {0} == set(ids.tolist())
        area, bbox = segment_stats(torch.from_numpy(id_map), ids)
        assert area.tolist() == [s["area"] for s in segs]
        assert bbox.tolist() == [s["bbox"] for s in segs]
        assert all(s["area"] >= 16 for s in segs)
        stuff = [s["category_id"] for s in segs if s["category_id"] in STUFF_IDS]
        things = [s for s in segs if s["category_id"] in THING_IDS and not s["iscrowd"]]
        assert len(stuff) >= 1 and len(stuff) == len(set(stuff))  # one segment per stuff class
        assert all(s["category_id"] in THING_IDS for s in segs if s["iscrowd"])  # crowds are things
        assert len(things) <= 10
        assert (id_map == 0).mean() < 0.005
        for s in things:  # 12-40 % of the short side (plus a pixel of rasterisation)
            assert max(s["bbox"][2:]) <= 0.40 * 256 + 2
        seen_things |= {s["category_id"] for s in things}
        seen_stuff |= set(stuff)
        counts = np.bincount([s["category_id"] for s in things], minlength=20)
        repeated |= bool((counts >= 2).any())
    assert seen_things == THING_IDS and seen_stuff == STUFF_IDS and repeated


def test_crowd_regions():
    crowds = [s for i in range(10) for s in make_scene(2, i, crowd_prob=1.0)[2] if s["iscrowd"]]
    assert len(crowds) >= 8 and all(s["category_id"] in THING_IDS for s in crowds)
    assert not any(s["iscrowd"] for i in range(10) for s in make_scene(2, i)[2])
    # the crowd is added on top of the same scene: every pixel outside it is unchanged
    plain, _, _ = make_scene(2, 0)
    img, id_map, segs = make_scene(2, 0, crowd_prob=1.0)
    crowd = id_map == next(s["id"] for s in segs if s["iscrowd"])
    assert crowd.sum() > 50 and np.array_equal(img[~crowd], plain[~crowd])


def _stuff_features(img, id_map, segs):
    """Per stuff segment: mean colour, grey-level spread and gradients along x and y."""
    g = img.astype(np.float64).mean(axis=2)
    dx, dy = np.abs(np.diff(g, axis=1))[:-1, :], np.abs(np.diff(g, axis=0))[:, :-1]
    feats, labels = [], []
    for s in segs:
        if s["category_id"] not in STUFF_IDS or s["area"] < 2000:
            continue
        m = id_map == s["id"]
        inner = m[:-1, :-1] & m[1:, :-1] & m[:-1, 1:]
        feats.append([*img[m].mean(0), g[m].std(), dx[inner].mean(), dy[inner].mean()])
        labels.append(s["category_id"])
    return feats, labels


def test_stuff_textures_are_distinguishable():
    """A nearest-centroid classifier on six texture statistics, fitted on one seed, names the
    stuff of another seed: the textures carry the class (a model can learn it)."""
    def collect(seed):
        out = [_stuff_features(*make_scene(seed, i, (128, 128))) for i in range(30)]
        return np.array([f for fs, _ in out for f in fs]), np.array([c for _, cs in out for c in cs])

    x_train, y_train = collect(0)
    x_test, y_test = collect(1)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-9
    classes = sorted(set(y_train.tolist()))
    centroids = np.stack([((x_train[y_train == c] - mu) / sd).mean(0) for c in classes])
    d = (((x_test - mu) / sd)[:, None] - centroids[None]) ** 2
    pred = np.array(classes)[d.sum(-1).argmin(1)]
    assert (pred == y_test).mean() >= 0.9


def test_make_dataset_files_and_refusal(tmp_path):
    out = tmp_path / "ds"
    path = make_dataset(out, 4, seed=7, size=(48, 80), crowd_prob=0.5, progress=False)
    data = json.loads(path.read_text())
    assert [im["id"] for im in data["images"]] == [0, 1, 2, 3]
    assert data["categories"] == synth_categories()
    for im, ann in zip(data["images"], data["annotations"], strict=True):
        img, id_map, segs = make_scene(7, im["id"], (48, 80), crowd_prob=0.5)
        assert (im["height"], im["width"]) == (48, 80)
        assert np.array_equal(read_panoptic_png(out / "panoptic" / ann["file_name"]), id_map)
        assert ann["segments_info"] == segs
        jpeg = load_image(out / "images" / im["file_name"])
        assert np.abs(jpeg.astype(int) - img).mean() < 7  # JPEG quality 90 (measured 5.5)
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries
    with pytest.raises(FileExistsError, match="not empty"):
        make_dataset(out, 2, seed=1, progress=False)
    make_dataset(out, 2, seed=1, size=(48, 80), overwrite=True, progress=False)
    assert len(json.loads(path.read_text())["images"]) == 2


def test_make_dataset_in_parallel_writes_the_same_files(tmp_path):
    """Scenes drawn by two processes (out of order, chunks of 16) give the serial run's files
    byte for byte and its JSON in index order."""
    options = dict(seed=4, size=(40, 56), crowd_prob=0.3, progress=False)
    serial = make_dataset(tmp_path / "one", 37, workers=1, **options)
    parallel = make_dataset(tmp_path / "two", 37, workers=2, **options)
    assert serial.read_bytes() == parallel.read_bytes()
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.*"))
    assert len(files) == 2 * 37 + 1
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_make_dataset_passes_the_scene_options(tmp_path):
    path = make_dataset(tmp_path / "ds", 6, seed=3, size=(64, 64), max_things=2, thing_size=(0.5, 0.6),
                        progress=False)
    for ann in json.loads(path.read_text())["annotations"]:
        things = [s for s in ann["segments_info"] if s["category_id"] <= len(THINGS)]
        assert len(things) <= 2
        scene = make_scene(3, ann["image_id"], (64, 64), max_things=2, thing_size=(0.5, 0.6))
        assert ann["segments_info"] == scene[2]


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", "--out", str(out), "--n", "3", "--seed", "1", "--size", "64x32"]) == 0
    data = json.loads((out / "panoptic.json").read_text())
    assert (data["images"][0]["height"], data["images"][0]["width"]) == (32, 64)
    assert main(["synth", "--out", str(out), "--n", "3"]) == 1
    assert "not empty" in capsys.readouterr().err
