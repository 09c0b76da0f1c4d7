"""`check` finds every kind of problem injected into a copy of a synthetic dataset, and none in
a clean one."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from panoptic_detr.cli import main
from panoptic_detr.data.check import Problem, check_dataset, check_json, check_segments
from panoptic_detr.data.synth import make_dataset

SIZE = (40, 56)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("check") / "clean"
    make_dataset(root, 14, seed=3, size=SIZE, crowd_prob=0.0, progress=False)
    return root


def test_clean_dataset_has_no_problems(clean, reference, capsys):
    anns = json.loads((clean / "panoptic.json").read_text())["annotations"]
    n_segments = sum(len(a["segments_info"]) for a in anns)
    assert check_dataset(clean, progress=False) == ([], {"images": 14, "segments": n_segments})
    gt = reference / "pq" / "gt"
    assert check_dataset(gt, image_dir=reference / "images", progress=False)[0] == []
    assert main(["check", str(clean)]) == 0
    assert "ok (14 images" in capsys.readouterr().out


def _break(clean, root):
    """Copy `clean` to `root` and inject one problem per image; return what check must say:
    (file name, segment id or None, message fragment)."""
    shutil.copytree(clean, root)
    data = json.loads((root / "panoptic.json").read_text())
    anns = data["annotations"]
    segs = [a["segments_info"] for a in anns]
    cats = {c["id"]: c for c in data["categories"]}
    stuff = [next(s for s in ss if not cats[s["category_id"]]["isthing"]) for ss in segs]
    expect = []

    (root / "images" / "000000.jpg").unlink()
    expect.append(("000000.jpg", None, "missing image"))
    (root / "panoptic" / "000001.png").unlink()
    expect.append(("000001.png", None, "missing panoptic PNG"))
    Image.new("RGB", (SIZE[1] + 4, SIZE[0]), (9, 9, 9)).save(root / "images" / "000002.jpg")
    expect.append(("000002.png", None, "but its image 000002.jpg is 60x40"))
    expect.append(("000002.jpg", None, "image is 60x40 but the JSON says 56x40"))
    data["images"][3]["height"] = SIZE[0] + 1
    expect.append(("000003.jpg", None, "JSON says 56x41"))
    gone = segs[4].pop(0)
    expect.append(("000004.png", gone["id"], "in the PNG"))
    segs[5].append({"id": 4242, "category_id": 1, "iscrowd": 0, "area": 3, "bbox": [0, 0, 1, 3]})
    expect.append(("000005.png", 4242, "not in the PNG"))
    segs[6][0]["category_id"] = 99
    expect.append(("000006.png", segs[6][0]["id"], "unknown category id 99"))
    segs[7].append(dict(segs[7][0]))
    expect.append(("000007.png", segs[7][0]["id"], "duplicate segment id"))
    unexpected = [("000007.png", segs[7][0]["id"], "not in the PNG")]  # it is, once
    data["images"].append(dict(data["images"][8]))
    expect.append(("panoptic.json", None, "duplicate image id 8"))
    segs[9][0]["area"] += 5
    expect.append(("000009.png", segs[9][0]["id"], "area is"))
    segs[9][1]["bbox"][0] += 1
    expect.append(("000009.png", segs[9][1]["id"], "bbox is"))
    stuff[10]["iscrowd"] = 1
    expect.append(("000010.png", stuff[10]["id"], "iscrowd on stuff"))
    segs[11].append({"id": 77, "category_id": 1, "iscrowd": 0, "area": 0, "bbox": [0, 0, 0, 0]})
    expect.append(("000011.png", 77, "empty segment"))
    (root / "images" / "000012.jpg").write_bytes(b"not a jpeg at all")
    expect.append(("000012.jpg", None, "unreadable image"))
    png = (root / "panoptic" / "000013.png").read_bytes()
    (root / "panoptic" / "000013.png").write_bytes(png[: len(png) // 2])
    expect.append(("000013.png", None, "unreadable panoptic PNG"))
    (root / "panoptic.json").write_text(json.dumps(data))
    return expect, unexpected


def test_broken_copy_every_problem_found(clean, tmp_path, capsys):
    root = tmp_path / "broken"
    expect, unexpected = _break(clean, root)
    problems, _ = check_dataset(root, progress=False)

    def reported(name, segment, fragment):
        return any(p.file.endswith(name) and p.segment == segment and fragment in p.message for p in problems)

    for name, segment, fragment in expect:
        assert reported(name, segment, fragment), f"not reported: {name} {segment}: {fragment}"
    for name, segment, fragment in unexpected:
        assert not reported(name, segment, fragment)
    assert check_dataset(root, progress=False, workers=2)[0] == problems  # same list, same order
    # nothing reported for the images left intact
    assert not [p for p in problems if any(f"0000{i:02d}" in p.file for i in range(14, 20))]
    assert main(["check", str(root)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == len(problems) + 1 and "problems in" in out[-1]
    assert all("\n" not in str(p) for p in problems)


def test_pure_checks():
    id_map = np.array([[0, 1, 1], [2, 2, 5]], np.int64)
    cats = {1: {"id": 1, "isthing": 1}, 2: {"id": 2, "isthing": 0, "name": "sky"}}
    segs = [{"id": 1, "category_id": 1, "iscrowd": 0, "area": 2, "bbox": [1, 0, 2, 1]},
            {"id": 2, "category_id": 2, "iscrowd": 0, "area": 2, "bbox": [0, 1, 2, 1]}]
    cropped = id_map[:, :2].copy()  # segment 1 loses a pixel, segment 2 stays as listed
    assert check_segments(cropped, segs, cats, "f") == [
        Problem("f", 1, "area is 2 in the JSON but 1 pixels in the PNG"),
        Problem("f", 1, "bbox is [1, 0, 2, 1] in the JSON but [1, 0, 1, 1] in the PNG")]
    assert [p.segment for p in check_segments(id_map, segs, cats, "f")] == [5]
    assert str(Problem("a.png", 3, "x")) == "a.png: segment 3: x" and str(Problem("a", None, "y")) == "a: y"
    assert check_json([], "j")[0].message == "not a COCO-panoptic JSON object"
    bad = {"images": [{"id": 1}, {"id": 2}], "annotations": [{"image_id": 1}, {"image_id": 3}],
           "categories": [{"id": 1, "isthing": 1}, {"id": 1, "isthing": 0}]}
    messages = [p.message for p in check_json(bad, "j")]
    assert messages == ["duplicate category id 1 (2 times)",
                        "annotation for image id 3, which is not in images", "image id 2 has no annotation"]


def test_unreadable_json_and_missing_dataset(tmp_path):
    (tmp_path / "panoptic.json").write_text("{not json")
    (tmp_path / "panoptic").mkdir()
    problems, _ = check_dataset(tmp_path, progress=False)
    assert len(problems) == 1 and "unreadable JSON" in problems[0].message
    (tmp_path / "panoptic.json").write_text("[1, 2]")
    problems, _ = check_dataset(tmp_path, progress=False)
    assert [p.message for p in problems] == ["not a COCO-panoptic JSON object"]
    problems, _ = check_dataset(tmp_path / "nope", progress=False)
    assert len(problems) == 1 and "no such dataset" in problems[0].message
