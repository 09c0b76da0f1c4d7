"""build_gt end to end on tiny synthetic panoptic datasets: exact rebuilds, overlaps, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panoptic_detr.data.check import check_dataset
from panoptic_detr.data.coco_panoptic import CocoPanoptic
from panoptic_detr.data.files import write_json
from panoptic_detr.data.panoptic_png import read_panoptic_png
from panoptic_detr.data.synth import make_dataset, make_scene, synth_categories
from panoptic_detr.gt import BuildError, build_gt
from panoptic_detr.gt import build as build_module
from panoptic_detr.gt.convert import panoptic_to_instances_file, panoptic_to_semantic_files

SIZE = (48, 64)  # (h, w)
SEED = 2
CATEGORIES = synth_categories()
NAMES = {c["id"]: c["name"] for c in CATEGORIES}
THING_NAMES = {c["name"] for c in CATEGORIES if c["isthing"]}


def _name(i: int) -> str:
    return f"{i:06d}"


def _export(tmp_path: Path, n: int = 3) -> tuple[Path, Path, Path]:
    """A synthetic panoptic dataset (with crowds); its things -> COCO instances JSON, its stuff
    -> semantic PNGs + label map."""
    pan = make_dataset(tmp_path / "orig", n, seed=SEED, size=SIZE, crowd_prob=0.7, progress=False)
    panoptic_to_instances_file(pan, tmp_path / "instances.json", progress=False)
    panoptic_to_semantic_files(pan, tmp_path / "semantic", things=False, progress=False)
    return pan, tmp_path / "instances.json", tmp_path / "semantic"


def _original(i: int) -> tuple[np.ndarray, list[dict]]:
    """id map and segments of scene i of the exported dataset."""
    _, id_map, segs = make_scene(SEED, i, SIZE, crowd_prob=0.7)
    return id_map, segs


def _segments(root: Path, json_name: str = "panoptic.json") -> dict[str, dict]:
    """file_name -> {frozenset-free canonical form}: category/crowd -> sorted pixel-set keys."""
    data = json.loads((root / json_name).read_text())
    cats = {c["id"]: c for c in data["categories"]}
    out = {}
    for ann in data["annotations"]:
        id_map = read_panoptic_png(root / "panoptic" / ann["file_name"])
        segs = {}
        for s in ann["segments_info"]:
            mask = id_map == s["id"]
            segs[(cats[s["category_id"]]["name"], s.get("iscrowd", 0), mask.tobytes())] = s
        out[ann["file_name"]] = (id_map > 0, segs)
    return out


def _assert_valid(root: Path) -> dict:
    """The dataset passes `data.check` and CocoPanoptic reads it; the COCO panoptic invariants
    (ids unique and listed, areas and boxes right, isthing as the category) checked here too."""
    problems, stats = check_dataset(root, progress=False)
    assert [str(p) for p in problems] == []
    data = json.loads((root / "panoptic.json").read_text())
    assert stats["images"] == len(data["images"])
    if data["images"]:
        _, target = CocoPanoptic(root)[0]
        assert len(target) == len(data["annotations"][0]["segments_info"])
    cats = {c["id"]: c for c in data["categories"]}
    assert len(cats) == len(data["categories"])
    images = {im["id"]: im for im in data["images"]}
    assert {a["image_id"] for a in data["annotations"]} == set(images)
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        assert (root / "images" / im["file_name"]).exists()
        id_map = read_panoptic_png(root / "panoptic" / ann["file_name"])
        assert id_map.shape == (im["height"], im["width"])
        ids = [s["id"] for s in ann["segments_info"]]
        assert len(set(ids)) == len(ids) and 0 not in ids
        assert set(np.unique(id_map).tolist()) - {0} == set(ids)
        for s in ann["segments_info"]:
            ys, xs = np.nonzero(id_map == s["id"])
            assert s["area"] == len(ys)
            assert s["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert s["isthing"] == cats[s["category_id"]]["isthing"]
    return data


def test_rebuild_from_instances_and_semantic_stuff_is_exact(tmp_path):
    pan, instances, semantic = _export(tmp_path)
    out = tmp_path / "built"
    report = build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=f"semantic:{semantic}",
                      progress=False, log=lambda line: pytest.fail(f"unexpected problem: {line}"))
    _assert_valid(out)
    original, rebuilt = _segments(tmp_path / "orig"), _segments(out)
    assert original.keys() == rebuilt.keys()
    crowds = 0
    for name, (labelled, segs) in original.items():
        assert (rebuilt[name][0] == labelled).all()  # same void
        assert rebuilt[name][1].keys() == segs.keys()  # same classes, crowd flags and pixels
        crowds += sum(key[1] for key in segs)
    assert crowds >= 1  # the scenes exercised crowd segments
    assert report["images"]["processed"] == 3 and report["problems"] == []
    assert report["overlaps"]["pixels"] == 0 and report["fragments_dropped"] == []
    assert report["pixels"]["void_share"] < 0.05
    assert abs(sum(c["share"] for c in report["classes"]) + report["pixels"]["void_share"] - 1) < 1e-5
    assert json.loads((out / "report.json").read_text()) == report
    assert sorted(p.name for p in (out / "previews").iterdir()) == [f"{_name(i)}.jpg" for i in range(3)]
    assert not list(tmp_path.glob(".built*"))  # the work folder was moved into place


def test_panoptic_source_and_parallel_workers_give_the_same_result(tmp_path):
    pan, instances, _ = _export(tmp_path)
    build_gt(instances, tmp_path / "orig" / "images", tmp_path / "a", stuff_from=f"panoptic:{pan}",
             progress=False, previews=False, workers=2)
    original, rebuilt = _segments(tmp_path / "orig"), _segments(tmp_path / "a")
    for name, (_, segs) in original.items():
        assert rebuilt[name][1].keys() == segs.keys()


def _box(x0: int, y0: int, x1: int, y1: int) -> tuple[list[float], np.ndarray]:
    """A rectangle polygon and its [H, W] mask (pixels x0..x1-1, y0..y1-1)."""
    mask = np.zeros(SIZE, bool)
    mask[y0:y1, x0:x1] = True
    return [x0, y0, x1, y0, x1, y1, x0, y1], mask


@pytest.mark.parametrize("order", ["area", "annotation"])
def test_overlapping_instances_give_a_valid_dataset_with_the_documented_winner(tmp_path, order):
    pan, instances, semantic = _export(tmp_path, n=1)
    big_poly, big = _box(4, 4, 34, 34)
    small_poly, small = _box(20, 20, 40, 40)
    data = json.loads(instances.read_text())
    data["annotations"] += [
        {"id": 900, "image_id": 0, "category_id": 2, "segmentation": [big_poly], "iscrowd": 0},
        {"id": 901, "image_id": 0, "category_id": 1, "segmentation": [small_poly], "iscrowd": 0},
    ]
    write_json(instances, data)
    out = tmp_path / "built"
    # min_area=0: no fragment dropped, so every covered pixel goes to the rule's winner
    report = build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=f"semantic:{semantic}",
                      order=order, min_area=0, progress=False, log=lambda line: None)
    _assert_valid(out)
    data = json.loads((out / "panoptic.json").read_text())
    id_map = read_panoptic_png(out / "panoptic" / f"{_name(0)}.png")
    cat_of = {s["id"]: s["category_id"] for s in data["annotations"][0]["segments_info"]}
    built = np.vectorize(lambda i: cat_of.get(i, 0))(id_map)
    # the documented rule, pixel by pixel: non-crowd over crowd, then the smallest (ties: the
    # later) or the latest annotation
    scene, segs = _original(0)
    things = [(scene == s["id"], s["category_id"], s["iscrowd"]) for s in segs if NAMES[s["category_id"]]
              in THING_NAMES]
    things += [(big, 2, 0), (small, 1, 0)]
    covered = np.any([m for m, _, _ in things], axis=0)
    expected = built.copy()
    for y, x in zip(*np.nonzero(covered), strict=True):
        cands = [(not crowd, -m.sum() if order == "area" else 0, k, c)
                 for k, (m, c, crowd) in enumerate(things) if m[y, x]]
        expected[y, x] = max(cands)[3]
    np.testing.assert_array_equal(built, expected)
    assert report["overlaps"]["pixels"] >= (big & small).sum() and report["overlaps"]["images"] == 1
    # stuff keeps the pixels no instance covers
    cat_lut = {0: 0, **{s["id"]: s["category_id"] for s in segs}}
    original = np.vectorize(cat_lut.get)(scene)
    np.testing.assert_array_equal(built[~covered], original[~covered])


def test_annotation_order_puts_the_later_instance_on_top(tmp_path):
    pan, instances, semantic = _export(tmp_path, n=1)
    big_poly, _ = _box(4, 4, 34, 34)
    small_poly, _ = _box(20, 20, 40, 40)
    data = json.loads(instances.read_text())
    data["annotations"] = [
        {"id": 1, "image_id": 0, "category_id": 2, "segmentation": [small_poly]},
        {"id": 2, "image_id": 0, "category_id": 1, "segmentation": [big_poly]},
    ]
    write_json(instances, data)
    for order, winner in (("area", 2), ("annotation", 1)):
        out = tmp_path / order
        build_gt(instances, tmp_path / "orig" / "images", out, order=order, progress=False, previews=False)
        segs = json.loads((out / "panoptic.json").read_text())["annotations"][0]["segments_info"]
        id_map = read_panoptic_png(out / "panoptic" / f"{_name(0)}.png")
        assert {s["id"]: s["category_id"] for s in segs}[id_map[25, 25]] == winner
        assert (id_map[:, 40:] == 0).all()  # no source: the rest is void


def test_bad_inputs_each_give_a_line_and_the_rest_is_built(tmp_path):
    pan, instances, semantic = _export(tmp_path, n=3)
    h, w = SIZE
    images = tmp_path / "orig" / "images"
    data = json.loads(instances.read_text())
    data["images"].append({"id": 7, "file_name": "missing.jpg", "height": h, "width": w})
    data["images"].append({"id": 8, "file_name": "extra.jpg", "height": h, "width": w})  # no annotations
    data["images"].append({"id": 9, "file_name": f"{_name(0)}.jpg", "height": h, "width": w})  # a duplicate
    data["images"].append({"id": 10, "file_name": "wrong.jpg", "height": h + 2, "width": w})  # wrong size
    (images / "wrong.jpg").write_bytes((images / f"{_name(0)}.jpg").read_bytes())
    (images / "extra.jpg").write_bytes((images / f"{_name(0)}.jpg").read_bytes())
    (semantic / "extra.png").write_bytes((semantic / f"{_name(0)}.png").read_bytes())
    data["annotations"] += [
        {"id": 500, "image_id": 99, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 501, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 1]]},
        {"id": 502, "image_id": 1, "category_id": 2, "segmentation": [[50, 30, 70, 30, 70, 50, 50, 50]]},
        {"id": 503, "image_id": 1, "category_id": 42, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 504, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},
    ]
    write_json(instances, data)
    (semantic / f"{_name(2)}.png").unlink()  # the source has no labels for one image
    lines: list[str] = []
    out = tmp_path / "built"
    report = build_gt(instances, images, out, stuff_from=f"semantic:{semantic}", order="annotation",
                      progress=False, log=lines.append)
    text = "\n".join(lines)
    n1 = f"{_name(1)}.jpg"
    assert f"{instances}: 1 annotation(s) for image id 99, which is not in the images list" in text
    assert f"{instances}: {n1}: annotation 501: polygon 0: degenerate" in text
    assert f"{instances}: {n1}: annotation 502: polygon 0: partly outside the 64x48 image, clipped" in text
    assert f"{instances}: annotation 503: category 42 is not in the categories list" in text
    assert f"{images / 'missing.jpg'}: image not found (1 annotation(s) skipped)" in text
    assert f"{semantic / _name(2)}.png: no semantic PNG for {_name(2)}.jpg" in text
    assert f"{instances}: image id 9: file name {_name(0)}.jpg already used by image id 0, skipped" in text
    assert f"{images / 'wrong.jpg'}: size 64x48 differs from the JSON's 64x50" in text
    assert len(lines) == 8 and report["problems"] == lines
    assert sorted(f["file_name"] for f in report["images"]["failed"]) == [f"{_name(2)}.jpg", "missing.jpg",
                                                                        "wrong.jpg"]
    data = _assert_valid(out)
    assert sorted(im["id"] for im in data["images"]) == [0, 1, 8]  # image 8 kept, source labels only
    seg8 = next(a for a in data["annotations"] if a["image_id"] == 8)["segments_info"]
    _, segs0 = _original(0)
    assert {s["category_id"] for s in seg8} == {s["category_id"] for s in segs0 if NAMES[s["category_id"]]
                                                not in THING_NAMES}
    # the clipped polygon kept its inside part (and is on top: order="annotation")
    ann1 = next(a for a in data["annotations"] if a["image_id"] == 1)
    id_map = read_panoptic_png(out / "panoptic" / ann1["file_name"])
    top = {s["id"]: s for s in ann1["segments_info"]}[id_map[40, 60]]
    assert top["category_id"] == 2 and top["bbox"] == [50, 30, 14, 18]

    report = build_gt(instances, images, tmp_path / "b", stuff_from=f"semantic:{semantic}",
                      skip_unannotated=True, progress=False, log=lambda line: None)
    skipped = {"file_name": "extra.jpg", "reason": "no annotations (--skip-unannotated)"}
    assert skipped in report["images"]["skipped"]


def test_unusable_sources_and_existing_output_stop_with_one_line(tmp_path):
    pan, instances, semantic = _export(tmp_path, n=1)
    images = tmp_path / "orig" / "images"
    with pytest.raises(BuildError, match=r"^model:nope\.pt: (cannot load the model|the predictor is not)"):
        build_gt(instances, images, tmp_path / "o", stuff_from="model:nope.pt", progress=False)
    with pytest.raises(BuildError, match=r"nowhere: semantic source folder not found$"):
        build_gt(instances, images, tmp_path / "o", stuff_from="semantic:nowhere", progress=False)
    with pytest.raises(BuildError, match=r"unknown source kind 'semnatic'"):
        build_gt(instances, images, tmp_path / "o", stuff_from=f"semnatic:{semantic}", progress=False)
    (tmp_path / "o").mkdir()
    with pytest.raises(BuildError, match=r"o: exists \(pass --overwrite"):
        build_gt(instances, images, tmp_path / "o", progress=False)
    build_gt(instances, images, tmp_path / "o", overwrite=True, progress=False, previews=False)
    assert (tmp_path / "o" / "panoptic.json").exists()


def test_taxonomy_merges_ignores_and_reports_missing_categories(tmp_path):
    pan, instances, semantic = _export(tmp_path, n=1)
    tax = tmp_path / "map.yaml"
    tax.write_text("targets:\n  background: {id: 50, isthing: false}\n  circle: {isthing: true}\n"
                   "stuff: {sky: background, grass: background, water: background}\nignore: [sand]\n")
    lines: list[str] = []
    out = tmp_path / "built"
    build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=f"semantic:{semantic}", taxonomy=tax,
             progress=False, log=lines.append)
    assert lines[0] == (f"{tax}: source category 'brick' (id 10) of semantic:{semantic} is not in the "
                        "taxonomy: its pixels become void")
    assert lines[1] == (f"{instances}: category 'square' (id 2) is not in the taxonomy: added as a thing "
                        "class (id 2)")
    assert len(lines) == 1 + 5  # brick; the five thing classes other than circle
    data = _assert_valid(out)
    assert [(c["id"], c["name"], c["isthing"]) for c in data["categories"][:3]] == [
        (50, "background", 0), (1, "circle", 1), (2, "square", 1)]
    scene, segs = _original(0)
    cat = np.vectorize({0: 0, **{s["id"]: s["category_id"] for s in segs}}.get)(scene)
    built = read_panoptic_png(out / "panoptic" / f"{_name(0)}.png")
    bsegs = {s["id"]: s for s in data["annotations"][0]["segments_info"]}
    background = [s for s in bsegs.values() if s["category_id"] == 50]
    assert len(background) == 1  # sky, grass and water merged into one segment
    np.testing.assert_array_equal(built == background[0]["id"], np.isin(cat, [7, 8, 9]))
    assert (built[np.isin(cat, [10, 11])] == 0).all()  # brick unmapped, sand ignored: void

    tax.write_text("targets:\n  circle: {isthing: false}\nstuff: {sky: circle}\n")
    with pytest.raises(BuildError, match="'circle' is stuff: target used as both thing and stuff"):
        build_gt(instances, tmp_path / "orig" / "images", tmp_path / "x", stuff_from=f"semantic:{semantic}",
                 taxonomy=tax, progress=False, log=lambda line: None)


def test_interrupted_build_leaves_no_output_and_resumes(tmp_path, monkeypatch):
    pan, instances, semantic = _export(tmp_path, n=3)
    out = tmp_path / "built"
    real, calls = build_module._build_one, []

    def flaky(job, img, anns):
        calls.append(img["id"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job, img, anns)

    monkeypatch.setattr(build_module, "_build_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=f"semantic:{semantic}",
                 progress=False, log=lambda line: None)
    assert not out.exists()
    monkeypatch.setattr(build_module, "_build_one", real)
    lines: list[str] = []
    report = build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=f"semantic:{semantic}",
                      progress=False, log=lines.append)
    assert report["images"]["reused"] == 2 and report["images"]["processed"] == 3
    assert lines == [f"{tmp_path / '.built.partial'}: resuming an unfinished build (2 image(s) done)"]
    original, rebuilt = _segments(tmp_path / "orig"), _segments(out)
    assert all(rebuilt[k][1].keys() == v[1].keys() for k, v in original.items())


def test_preview_shows_annotations_solid_and_source_translucent(tmp_path):
    import torch

    from panoptic_detr.structures import Categories, PanopticResult
    from panoptic_detr.viz import palette

    pan, instances, semantic = _export(tmp_path, n=1)
    out = tmp_path / "built"
    build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=f"semantic:{semantic}", progress=False)
    image = np.asarray(Image.open(tmp_path / "orig" / "images" / f"{_name(0)}.jpg")).astype(float)
    prev = np.asarray(Image.open(out / "previews" / f"{_name(0)}.jpg")).astype(float)
    assert prev.shape[1] > SIZE[1]  # a legend on the right names the segments
    prev = prev[:, : SIZE[1]]
    data = json.loads((out / "panoptic.json").read_text())
    segs = data["annotations"][0]["segments_info"]
    id_map = read_panoptic_png(out / "panoptic" / data["annotations"][0]["file_name"])
    pal = palette(PanopticResult(torch.from_numpy(id_map), segs), Categories(data["categories"]))
    h, w = SIZE
    inner = np.zeros(SIZE, bool)  # pixels whose 5x5 neighbourhood is one segment: no outline, no JPEG edge
    inner[2:-2, 2:-2] = np.all([id_map[2 + dy : h - 2 + dy, 2 + dx : w - 2 + dx] == id_map[2:-2, 2:-2]
                                for dy in range(-2, 3) for dx in range(-2, 3)], axis=0)
    checked = set()
    for s in segs:
        region = (id_map == s["id"]) & inner
        if region.sum() < 4:
            continue
        got, color = prev[region].mean(0), np.array(pal[s["id"]])
        if s["isthing"]:  # annotated: solid palette colour
            assert np.abs(got - color).max() < 12
        else:  # source: the colour over the photo
            assert np.abs(got - (0.55 * image[region].mean(0) + 0.45 * color)).max() < 12
        checked.add(s["isthing"])
    assert checked == {0, 1}
    edge = (id_map != np.roll(id_map, 1, axis=1)) & np.isin(id_map, [s["id"] for s in segs if s["isthing"]])
    assert prev[edge].mean() > 200  # white outlines around the annotated instances


def test_cli_build_gt_and_convert(tmp_path, capsys):
    from panoptic_detr.cli import main

    pan, instances, semantic = _export(tmp_path, n=2)
    images = tmp_path / "orig" / "images"
    out = tmp_path / "built"
    rc = main(["build-gt", "--instances", str(instances), "--images", str(images), "--out", str(out),
               "--stuff-from", f"semantic:{semantic}", "--min-area", "4", "--no-previews"])
    captured = capsys.readouterr()
    assert rc == 0 and "images: 2 built" in captured.out and "pixel share per class:" in captured.out
    assert not (out / "previews").exists()
    rc = main(["build-gt", "--instances", str(instances), "--images", str(images), "--out", str(out)])
    assert rc == 1 and f"{out}: exists (pass --overwrite" in capsys.readouterr().err

    # convert: instances -> panoptic (no source) keeps the things; -> semantic gives class ids
    rc = main(["convert", "instances-to-panoptic", "--instances", str(instances), "--images", str(images),
               "--out", str(tmp_path / "things")])
    assert rc == 0
    things = _segments(tmp_path / "things")
    for name, (_, segs) in _segments(tmp_path / "orig").items():
        assert things[name][1].keys() == {k for k in segs if k[0] in THING_NAMES}
    rc = main(["convert", "panoptic-to-semantic", "--panoptic", str(pan), "--out", str(tmp_path / "sem")])
    assert rc == 0
    scene, segs = _original(1)
    sem = np.asarray(Image.open(tmp_path / "sem" / f"{_name(1)}.png"))
    lut = {0: 255, **{s["id"]: s["category_id"] for s in segs}}
    np.testing.assert_array_equal(sem, np.vectorize(lut.get)(scene))
    rc = main(["convert", "panoptic-to-instances", "--panoptic", str(pan), "--out", str(tmp_path / "i.json"),
               "--with-stuff"])
    assert rc == 0
    n_segments = sum(len(_original(i)[1]) for i in range(2))
    assert len(json.loads((tmp_path / "i.json").read_text())["annotations"]) == n_segments


def test_model_source_labels_the_rest_and_load_errors_stop(tmp_path, monkeypatch):
    """A stand-in Predictor that 'predicts' the true scene: the rebuild is exact, the threshold
    reaches the predictor, and a model that cannot load is one line."""
    import sys
    import types

    import torch

    from panoptic_detr.structures import Categories, PanopticResult

    seen = {}

    class FakePredictor:
        def __init__(self, weights, threshold=0.85, device="cpu", **kwargs):
            if weights == "broken.pt":
                raise RuntimeError("broken.pt: not a checkpoint\n(details)")
            seen.update(weights=weights, threshold=threshold, device=device)
            self.categories = Categories(synth_categories())
            self.pretrained = types.SimpleNamespace(source=f"{weights} (a test double)")

        def predict_arrays(self, arrays):  # which scene: the nearest of the three (JPEG is lossy)
            scenes = [make_scene(SEED, i, SIZE, crowd_prob=0.7)[0].astype(float) for i in range(3)]
            found = [int(np.argmin([np.abs(a - s).mean() for s in scenes])) for a in arrays]
            if 2 in found:
                raise RuntimeError("out of memory\n(details)")
            return [PanopticResult(torch.from_numpy(_original(i)[0]), _original(i)[1]) for i in found]

    fake = types.SimpleNamespace(Predictor=FakePredictor)
    monkeypatch.setitem(sys.modules, "panoptic_detr.predictor", fake)
    pan, instances, _ = _export(tmp_path, n=3)
    images = tmp_path / "orig" / "images"
    lines: list[str] = []
    report = build_gt(instances, images, tmp_path / "m", stuff_from="model:some.pt@0.6", workers=2,
                      progress=False, log=lines.append)
    assert seen["weights"] == "some.pt" and seen["threshold"] == 0.6
    assert lines[0] == "model:some.pt@0.6: weights some.pt (a test double)"  # which weights run
    assert lines[1] == "model:some.pt@0.6: one model in memory on its device: --workers ignored"
    assert lines[2] == (f"{images / _name(2)}.jpg: prediction failed (RuntimeError: model:some.pt@0.6: "
                        "out of memory (details))")
    assert [f["file_name"] for f in report["images"]["failed"]] == [f"{_name(2)}.jpg"]
    original, rebuilt = _segments(tmp_path / "orig"), _segments(tmp_path / "m")
    for i in (0, 1):
        assert rebuilt[f"{_name(i)}.png"][1].keys() == original[f"{_name(i)}.png"][1].keys()
    with pytest.raises(BuildError, match=r"^model:broken\.pt: cannot load the model \(broken\.pt: not a "
                                         r"checkpoint \(details\)\)$"):
        build_gt(instances, images, tmp_path / "n", stuff_from="model:broken.pt", progress=False)
    assert not (tmp_path / "n").exists()


def test_semantic_source_things_split_into_components_and_label_map_forms(tmp_path):
    from panoptic_detr.gt.sources import SemanticSource, SourceError, semantic_to_panoptic

    sem = np.full((6, 8), 7, np.int64)
    sem[1:3, 1:3] = 1  # two separate blobs of thing class 1
    sem[4:6, 5:8] = 1
    sem[0, 7] = 255
    sem[5, 0] = 42  # not in the label map
    id_map, segs = semantic_to_panoptic(sem, {1: True, 7: False})
    by_id = {s["id"]: s["category_id"] for s in segs}
    assert sorted(by_id.values()) == [1, 1, 7]
    assert len({id_map[1, 1], id_map[4, 5]}) == 2 and {by_id[id_map[1, 1]], by_id[id_map[4, 5]]} == {1}
    assert id_map[0, 7] == 0 and id_map[5, 0] == 0 and by_id[id_map[0, 0]] == 7

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "labelmap.yaml").write_text("7: sky\n8: grass\n")
    src = SemanticSource(tmp_path / "a")
    assert src.categories == [{"id": 7, "name": "sky", "isthing": 0},
                              {"id": 8, "name": "grass", "isthing": 0}]
    (tmp_path / "b").mkdir()
    with pytest.raises(SourceError, match="no labelmap.json or labelmap.yaml"):
        SemanticSource(tmp_path / "b")
    (tmp_path / "b" / "map.json").write_text('{"categories": [{"id": 3}]}')
    with pytest.raises(SourceError, match=r"map\.json: a label map is a list of"):
        SemanticSource(tmp_path / "b", tmp_path / "b" / "map.json")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "a" / "x.png")
    with pytest.raises(SourceError, match=r"x\.png: size 5x5 differs from the image 8x6"):
        src.labels(tmp_path / "x.jpg", 6, 8)


def test_coco_reference_things_as_instances_stuff_made_coarse(tmp_path, reference):
    """Two real COCO images: their things exported as instances, everything else from their own
    panoptic ground truth through the bundled coco_coarse taxonomy."""
    from panoptic_detr.gt.instances import panoptic_to_semantic
    from panoptic_detr.gt.taxonomy import STUFF, Taxonomy
    from panoptic_detr.structures import Categories

    gt = reference / "pq" / "gt" / "panoptic_examples.json"
    panoptic_to_instances_file(gt, tmp_path / "instances.json", progress=False)
    lines: list[str] = []
    out = tmp_path / "built"
    report = build_gt(tmp_path / "instances.json", reference / "images", out, stuff_from=f"panoptic:{gt}",
                      taxonomy="coco_coarse", progress=False, log=lines.append)
    assert lines == [] and report["images"]["processed"] == 2
    data = _assert_valid(out)
    rules = Taxonomy.load("coco_coarse").rule_by_id(Categories.coco_panoptic().items)
    source = json.loads(gt.read_text())
    for ann in source["annotations"]:
        orig = read_panoptic_png(gt.with_suffix("") / ann["file_name"])
        # expected classes: things keep their COCO id, stuff its coarse class, ignored stuff void
        coarse = [{**s, "category_id": rules[s["category_id"]].target if rules[s["category_id"]].mode == STUFF
                   else s["category_id"]} for s in ann["segments_info"]
                  if rules[s["category_id"]].target is not None]
        built = next(a for a in data["annotations"] if a["file_name"] == ann["file_name"])
        id_map = read_panoptic_png(out / "panoptic" / built["file_name"])
        np.testing.assert_array_equal(panoptic_to_semantic(id_map, built["segments_info"]),
                                      panoptic_to_semantic(orig, coarse))
        # every thing instance (crowds included) is the same pixel set
        things = {(s["category_id"], s["iscrowd"], (orig == s["id"]).tobytes())
                  for s in ann["segments_info"] if s["category_id"] <= 90}
        assert things == {(s["category_id"], s["iscrowd"], (id_map == s["id"]).tobytes())
                          for s in built["segments_info"] if s["isthing"]}
        assert len({s["category_id"] for s in built["segments_info"] if not s["isthing"]}) == len(
            [s for s in built["segments_info"] if not s["isthing"]])  # stuff: one segment per class


def test_model_source_with_a_real_tiny_checkpoint(tmp_path):
    """The project's Predictor on a tiny checkpoint: annotated things exact, the model labels the
    rest with its own classes, annotated classes whose ids the model uses are renumbered."""
    from panoptic_detr.gt.sources import ModelSource, open_source
    from predict_fixtures import CATEGORIES as MODEL_CATEGORIES
    from predict_fixtures import save_checkpoint, tiny_pretrained

    ckpt = save_checkpoint(tmp_path / "tiny.pt", tiny_pretrained())
    assert [c["name"] for c in open_source(f"model:{ckpt}@0.5").categories] == [
        c["name"] for c in MODEL_CATEGORIES]
    pan, instances, _ = _export(tmp_path, n=2)
    lines: list[str] = []
    out = tmp_path / "built"
    source = ModelSource(str(ckpt), threshold=0.5, device="cpu", size=64, max_size=96)
    report = build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=source, progress=False,
                      log=lines.append)
    assert report["images"]["processed"] == 2
    assert f"{instances}: category 'circle': id 1 is taken by a source category, renumbered 5" in lines
    data = _assert_valid(out)
    names = {c["id"]: c["name"] for c in data["categories"]}
    assert sorted(names.values()) == sorted({c["name"] for c in MODEL_CATEGORIES} | THING_NAMES)
    model_names = {c["name"] for c in MODEL_CATEGORIES}
    for i in range(2):
        scene, segs = _original(i)
        ann = next(a for a in data["annotations"] if a["image_id"] == i)
        id_map = read_panoptic_png(out / "panoptic" / ann["file_name"])
        by_id = {s["id"]: names[s["category_id"]] for s in ann["segments_info"]}
        thing_px = np.zeros(SIZE, bool)
        for s in segs:
            if NAMES[s["category_id"]] in THING_NAMES:
                mask = scene == s["id"]
                thing_px |= mask
                assert len(np.unique(id_map[mask])) == 1 and by_id[id_map[mask][0]] == NAMES[s["category_id"]]
        rest = {by_id.get(v, "void") for v in np.unique(id_map[~thing_px]).tolist()}
        assert rest <= model_names | {"void"} and rest & model_names  # the model labelled something

    # the same from the command line: the model resizes to --model-size
    from panoptic_detr.cli import main

    rc = main(["build-gt", "--instances", str(instances), "--images", str(tmp_path / "orig" / "images"),
               "--out", str(tmp_path / "cli"), "--stuff-from", f"model:{ckpt}@0.5",
               "--model-size", "64", "96", "--no-previews"])
    assert rc == 0
    a, b = _segments(out), _segments(tmp_path / "cli")
    assert all(a[k][1].keys() == b[k][1].keys() for k in a)


def test_converters_report_a_png_that_is_not_rgb_and_go_on(tmp_path):
    """Every reader decodes with the one codec, which refuses non-RGB images (a grey PNG would
    otherwise read as ids v * 65793): the converters log the file and convert the rest."""
    pan = make_dataset(tmp_path / "orig", 2, seed=SEED, size=SIZE, progress=False)
    first = json.loads(pan.read_text())["annotations"][0]["file_name"]
    Image.fromarray(np.zeros(SIZE, np.uint8)).save(pan.with_suffix("") / first)
    lines: list[str] = []
    assert panoptic_to_semantic_files(pan, tmp_path / "sem", progress=False, log=lines.append) == (1, 1)
    _, failed = panoptic_to_instances_file(pan, tmp_path / "inst.json", progress=False, log=lines.append)
    assert failed == 1 and len(lines) == 2
    assert all(f"{first}: cannot read (expected an RGB panoptic PNG, got mode L)" in line for line in lines)
