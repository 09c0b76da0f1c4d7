"""build_gt end to end on tiny synthetic panoptic datasets: exact rebuilds, overlaps, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from panoptic_detr.data.files import read_panoptic_png, write_json, write_panoptic_png
from panoptic_detr.gt import BuildError, build_gt
from panoptic_detr.gt import build as build_module
from panoptic_detr.gt.convert import panoptic_to_instances_file, panoptic_to_semantic_files

CATEGORIES = [
    {"id": 1, "name": "box", "isthing": 1, "color": [200, 30, 30]},
    {"id": 2, "name": "ball", "isthing": 1, "color": [30, 200, 30]},
    {"id": 101, "name": "sky", "isthing": 0, "color": [70, 130, 180]},
    {"id": 102, "name": "ground", "isthing": 0, "color": [150, 110, 80]},
    {"id": 103, "name": "wall", "isthing": 0, "color": [128, 128, 128]},
]


def _scene(seed: int, h: int = 40, w: int = 56):
    """A tiny panoptic scene: stuff bands, a void strip, three disjoint things (one crowd)."""
    rng = np.random.default_rng(seed)
    id_map = np.zeros((h, w), np.int64)
    horizon = int(rng.integers(10, 20))
    id_map[:horizon] = 1
    id_map[horizon:] = 2
    id_map[horizon:, -8:] = 3
    id_map[:, 20:22] = 0  # void
    segs = [{"id": 1, "category_id": 101}, {"id": 2, "category_id": 102}, {"id": 3, "category_id": 103}]
    yy, xx = np.mgrid[0:h, 0:w]
    for k, x0 in enumerate((2, 24, 38)):
        y0 = int(rng.integers(2, h - 14))
        if k == 1:  # an ellipse
            mask = ((yy - y0 - 6) / 6.5) ** 2 + ((xx - x0 - 5) / 5.5) ** 2 <= 1
        else:
            mask = (yy >= y0) & (yy < y0 + int(rng.integers(5, 12))) & (xx >= x0) & (xx < x0 + 9)
        id_map[mask] = 10 + k
        segs.append({"id": 10 + k, "category_id": 1 + k % 2, "iscrowd": int(k == 2)})
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return image, id_map, segs


def _dataset(root: Path, n: int = 3) -> Path:
    """Write a COCO panoptic dataset (images/, panoptic/, panoptic.json) of `_scene`s."""
    images, anns = [], []
    (root / "images").mkdir(parents=True)
    for i in range(n):
        image, id_map, segs = _scene(i)
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        write_panoptic_png(root / "panoptic" / f"s{i}.png", id_map)
        h, w = id_map.shape
        images.append({"id": i, "file_name": f"s{i}.png", "height": h, "width": w})
        for s in segs:
            s["area"] = int((id_map == s["id"]).sum())
            s.setdefault("iscrowd", 0)
        anns.append({"image_id": i, "file_name": f"s{i}.png", "segments_info": segs})
    write_json(root / "panoptic.json", {"images": images, "annotations": anns, "categories": CATEGORIES})
    return root / "panoptic.json"


def _export(tmp_path: Path, n: int = 3) -> tuple[Path, Path, Path]:
    """Things -> COCO instances JSON, stuff -> semantic PNGs + label map."""
    pan = _dataset(tmp_path / "orig", n)
    panoptic_to_instances_file(pan, tmp_path / "instances.json", progress=False)
    panoptic_to_semantic_files(pan, tmp_path / "semantic", things=False, progress=False)
    return pan, tmp_path / "instances.json", tmp_path / "semantic"


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
    """The COCO panoptic invariants: ids unique and listed, areas and boxes right, categories known."""
    data = json.loads((root / "panoptic.json").read_text())
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
    for name, (labelled, segs) in original.items():
        assert (rebuilt[name][0] == labelled).all()  # same void
        assert rebuilt[name][1].keys() == segs.keys()  # same classes, crowd flags and pixels
    assert report["images"]["processed"] == 3 and report["problems"] == []
    assert report["overlaps"]["pixels"] == 0 and report["fragments_dropped"] == []
    assert 0 < report["pixels"]["void_share"] < 0.1
    assert abs(sum(c["share"] for c in report["classes"]) + report["pixels"]["void_share"] - 1) < 1e-5
    assert json.loads((out / "report.json").read_text()) == report
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["s0.jpg", "s1.jpg", "s2.jpg"]
    assert not list(tmp_path.glob(".built*"))  # the work folder was moved into place


def test_panoptic_source_and_parallel_workers_give_the_same_result(tmp_path):
    pan, instances, _ = _export(tmp_path)
    build_gt(instances, tmp_path / "orig" / "images", tmp_path / "a", stuff_from=f"panoptic:{pan}",
             progress=False, previews=False, workers=2)
    original, rebuilt = _segments(tmp_path / "orig"), _segments(tmp_path / "a")
    for name, (_, segs) in original.items():
        assert rebuilt[name][1].keys() == segs.keys()


def _add_overlaps(instances: Path) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping boxes on image 0: a large 'box' then a small 'ball' over it."""
    data = json.loads(instances.read_text())
    big = [4, 4, 30, 4, 30, 30, 4, 30]  # 26 x 26
    small = [20, 20, 36, 20, 36, 36, 20, 36]  # 16 x 16
    data["annotations"] += [
        {"id": 900, "image_id": 0, "category_id": 1, "segmentation": [big], "iscrowd": 0},
        {"id": 901, "image_id": 0, "category_id": 2, "segmentation": [small], "iscrowd": 0},
    ]
    write_json(instances, data)
    bm = np.zeros((40, 56), bool)
    bm[4:30, 4:30] = True
    sm = np.zeros((40, 56), bool)
    sm[20:36, 20:36] = True
    return bm, sm


@pytest.mark.parametrize("order", ["area", "annotation"])
def test_overlapping_instances_give_a_valid_dataset_with_the_documented_winner(tmp_path, order):
    pan, instances, semantic = _export(tmp_path, n=1)
    big, small = _add_overlaps(instances)
    out = tmp_path / "built"
    report = build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=f"semantic:{semantic}",
                      order=order, progress=False, log=lambda line: None)
    _assert_valid(out)
    data = json.loads((out / "panoptic.json").read_text())
    id_map = read_panoptic_png(out / "panoptic" / "s0.png")
    cat_of = {s["id"]: s["category_id"] for s in data["annotations"][0]["segments_info"]}
    built = np.vectorize(lambda i: cat_of.get(i, 0))(id_map)
    # the documented rule, pixel by pixel: non-crowd over crowd, then the smallest (ties: the
    # later) or the latest annotation
    _, scene, segs = _scene(0)
    things = [(scene == s["id"], s["category_id"], s["iscrowd"]) for s in segs if s["id"] >= 10]
    things += [(big, 1, 0), (small, 2, 0)]
    expected = built.copy()
    for y, x in zip(*np.nonzero(np.any([m for m, _, _ in things], axis=0)), strict=True):
        cands = [(not crowd, -m.sum() if order == "area" else 0, k, c)
                 for k, (m, c, crowd) in enumerate(things) if m[y, x]]
        expected[y, x] = max(cands)[3]
    np.testing.assert_array_equal(built, expected)
    assert (built[big & small] == 2).all()  # the small ball wins both ways
    assert report["overlaps"]["pixels"] >= (big & small).sum() and report["overlaps"]["images"] == 1
    # stuff keeps the pixels no instance covers
    stuff = ~np.any([m for m, _, _ in things], axis=0) & (scene > 0)
    np.testing.assert_array_equal(built[stuff], np.array([0, 101, 102, 103])[scene[stuff]])


def test_annotation_order_puts_the_later_instance_on_top(tmp_path):
    pan, instances, semantic = _export(tmp_path, n=1)
    data = json.loads(instances.read_text())
    data["annotations"] = [
        {"id": 1, "image_id": 0, "category_id": 2, "segmentation": [[20, 20, 36, 20, 36, 36, 20, 36]]},
        {"id": 2, "image_id": 0, "category_id": 1, "segmentation": [[4, 4, 30, 4, 30, 30, 4, 30]]},
    ]
    write_json(instances, data)
    for order, winner in (("area", 2), ("annotation", 1)):
        out = tmp_path / order
        build_gt(instances, tmp_path / "orig" / "images", out, order=order, progress=False, previews=False)
        segs = json.loads((out / "panoptic.json").read_text())["annotations"][0]["segments_info"]
        id_map = read_panoptic_png(out / "panoptic" / "s0.png")
        assert {s["id"]: s["category_id"] for s in segs}[id_map[25, 25]] == winner
        assert (id_map[:, 40:] == 0).all()  # no source: the rest is void


def test_bad_inputs_each_give_a_line_and_the_rest_is_built(tmp_path):
    pan, instances, semantic = _export(tmp_path, n=3)
    data = json.loads(instances.read_text())
    data["images"].append({"id": 7, "file_name": "missing.png", "height": 40, "width": 56})
    data["images"].append({"id": 8, "file_name": "s9.png", "height": 40, "width": 56})  # no annotations
    data["images"].append({"id": 9, "file_name": "s0.png", "height": 40, "width": 56})  # a duplicate
    images = tmp_path / "orig" / "images"
    (images / "s9.png").write_bytes((images / "s0.png").read_bytes())
    (semantic / "s9.png").write_bytes((semantic / "s0.png").read_bytes())
    data["annotations"] += [
        {"id": 500, "image_id": 99, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 501, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 1]]},
        {"id": 502, "image_id": 1, "category_id": 2, "segmentation": [[50, 30, 70, 30, 70, 50, 50, 50]]},
        {"id": 503, "image_id": 1, "category_id": 42, "segmentation": [[1, 1, 5, 1, 5, 5]]},
        {"id": 504, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]},
    ]
    write_json(instances, data)
    (semantic / "s2.png").unlink()  # the source has no labels for one image
    lines: list[str] = []
    out = tmp_path / "built"
    report = build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=f"semantic:{semantic}",
                      progress=False, log=lines.append)
    text = "\n".join(lines)
    assert f"{instances}: 1 annotation(s) for image id 99, which is not in the images list" in text
    assert f"{instances}: s1.png: annotation 501: polygon 0: degenerate" in text
    assert f"{instances}: s1.png: annotation 502: polygon 0: partly outside the 56x40 image, clipped" in text
    assert f"{instances}: annotation 503: category 42 is not in the categories list" in text
    assert "missing.png: image not found (1 annotation(s) skipped)" in text
    assert f"{semantic / 's2.png'}: no semantic PNG for s2.png" in text
    assert f"{instances}: image id 9: file name s0.png already used by image id 0, skipped" in text
    assert report["problems"] == lines
    assert sorted(f["file_name"] for f in report["images"]["failed"]) == ["missing.png", "s2.png"]
    data = _assert_valid(out)
    assert sorted(im["id"] for im in data["images"]) == [0, 1, 8]  # image 8 kept, source labels only
    seg8 = next(a for a in data["annotations"] if a["image_id"] == 8)["segments_info"]
    assert {s["category_id"] for s in seg8} == {101, 102, 103}
    # the clipped polygon kept its inside part
    s1 = next(a for a in data["annotations"] if a["image_id"] == 1)
    id_map = read_panoptic_png(out / "panoptic" / s1["file_name"])
    assert {s["category_id"] for s in s1["segments_info"] if s["id"] == id_map[35, 52]} == {2}

    report = build_gt(instances, tmp_path / "orig" / "images", tmp_path / "b",
                      stuff_from=f"semantic:{semantic}", skip_unannotated=True, progress=False,
                      log=lambda line: None)
    skipped = {"file_name": "s9.png", "reason": "no annotations (--skip-unannotated)"}
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
    tax.write_text("targets:\n  background: {id: 50, isthing: false}\n  box: {isthing: true}\n"
                   "stuff: {sky: background, ground: background}\n")
    lines: list[str] = []
    out = tmp_path / "built"
    build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=f"semantic:{semantic}", taxonomy=tax,
             progress=False, log=lines.append)
    assert lines == [
        f"{tax}: source category 'wall' (id 103) of semantic:{semantic} is not in the taxonomy: "
        "its pixels become void",
        f"{instances}: category 'ball' (id 2) is not in the taxonomy: added as a thing class (id 2)",
    ]
    data = _assert_valid(out)
    assert [(c["id"], c["name"], c["isthing"]) for c in data["categories"]] == [
        (50, "background", 0), (1, "box", 1), (2, "ball", 1)]
    _, id_map, _ = _scene(0)
    built = read_panoptic_png(out / "panoptic" / "s0.png")
    segs = {s["id"]: s for s in data["annotations"][0]["segments_info"]}
    background = [s for s in segs.values() if s["category_id"] == 50]
    assert len(background) == 1  # sky and ground merged into one segment
    np.testing.assert_array_equal(built == background[0]["id"], np.isin(id_map, [1, 2]))
    assert (built[id_map == 3] == 0).all()  # wall: unmapped -> void

    tax.write_text("targets:\n  box: {isthing: false}\nstuff: {sky: box}\n")
    with pytest.raises(BuildError, match="'box' is stuff: target used as both thing and stuff"):
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
    pan, instances, semantic = _export(tmp_path, n=1)
    out = tmp_path / "built"
    build_gt(instances, tmp_path / "orig" / "images", out, stuff_from=f"semantic:{semantic}", progress=False)
    image, id_map, segs = _scene(0)
    prev = np.asarray(Image.open(out / "previews" / "s0.jpg")).astype(int)
    colors = {c["id"]: np.array(c["color"]) for c in CATEGORIES}
    cat = {s["id"]: s["category_id"] for s in segs}
    ys, xs = np.nonzero(id_map == 10)
    y, x = int(ys.mean()), int(xs.mean())  # inside the first thing, away from its outline
    assert np.abs(prev[y, x] - colors[cat[10]]).max() < 30  # solid (JPEG noise aside)
    ys, xs = np.nonzero(id_map == 1)
    blend = 0.55 * image[ys, xs] + 0.45 * colors[101]  # JPEG blurs the noise photo: compare means
    assert np.abs(prev[ys, xs].mean(0) - blend.mean(0)).max() < 6  # translucent over the photo
    assert np.abs(prev[ys, xs].mean(0) - colors[101]).max() > 30


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
        assert things[name][1].keys() == {k for k in segs if k[0] in ("box", "ball")}
    rc = main(["convert", "panoptic-to-semantic", "--panoptic", str(pan), "--out", str(tmp_path / "sem")])
    assert rc == 0
    _, id_map, segs = _scene(1)
    sem = np.asarray(Image.open(tmp_path / "sem" / "s1.png"))
    lut = {0: 255, **{s["id"]: s["category_id"] for s in segs}}
    np.testing.assert_array_equal(sem, np.vectorize(lut.get)(id_map))
    rc = main(["convert", "panoptic-to-instances", "--panoptic", str(pan), "--out", str(tmp_path / "i.json"),
               "--with-stuff"])
    assert rc == 0
    assert len(json.loads((tmp_path / "i.json").read_text())["annotations"]) == 12
