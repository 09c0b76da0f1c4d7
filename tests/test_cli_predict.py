"""`panoptic-detr predict` on good and bad inputs: one line per problem, the rest processed,
COCO panoptic outputs, atomic re-runs that skip finished images."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from panoptic_detr.cli import main
from panoptic_detr.data.panoptic_png import read_panoptic_png
from predict_fixtures import picture, save_checkpoint, tiny_pretrained


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", tiny_pretrained())


def make_inputs(root):
    """Every kind of input the brief names; returns (good files, {bad path: words expected})."""
    photos = root / "photos"
    photos.mkdir()
    rgb = picture(48, 72)
    Image.fromarray(rgb).save(photos / "good.jpg", quality=95)
    Image.fromarray(rgb).convert("L").save(photos / "gray.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(photos / "alpha.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(photos / "deep16.png")
    Image.fromarray(rgb).convert("CMYK").save(photos / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(rgb).save(photos / "rotated.jpg", exif=exif)
    Image.new("RGB", (1, 1), (200, 10, 10)).save(photos / "one.png")
    Image.new("RGB", (10000, 10000), (90, 140, 200)).save(photos / "huge.jpg", quality=50)
    data = (photos / "good.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    (photos / "notes.txt").write_text("not an image\n")
    (root / "empty").mkdir()
    good = ["good", "gray", "alpha", "deep16", "cmyk", "rotated", "one", "huge"]
    bad = {
        photos / "truncated.jpg": "truncated",
        photos / "corrupt.jpg": "corrupt",
        photos / "notes.txt": "not an image",
        root / "empty": "empty folder",
        root / "missing.jpg": "no such file",
    }
    return good, bad


def test_predict_good_and_bad_inputs(tmp_path, checkpoint, capsys):
    good, bad = make_inputs(tmp_path)
    out = tmp_path / "out"
    args = [str(tmp_path / "photos"), str(tmp_path / "empty"), str(tmp_path / "missing.jpg"),
            "--out", str(out), "--weights", str(checkpoint), "--size", "64", "--max-size", "96",
            "--threshold", "0.5", "--batch-size", "3", "--quiet"]
    # a folder gives its image files only: notes.txt, named on its own, is tried
    assert main(["predict", str(tmp_path / "photos" / "notes.txt"), *args]) == 1
    err = capsys.readouterr()
    lines = [x for x in err.err.splitlines() if x.startswith("error:")]
    assert len(lines) == len(bad)  # one line per bad input, nothing for the good ones
    for path, words in bad.items():
        (line,) = [x for x in lines if str(path) in x]
        assert words in line.lower()
    assert f"{len(good)} predicted" in err.out and f"{len(bad)} failed" in err.out

    for stem in good:
        assert (out / f"{stem}.png").is_file() and (out / "overlays" / f"{stem}.png").is_file()
    assert read_panoptic_png(out / "rotated.png").shape == (72, 48)  # EXIF orientation honoured
    assert read_panoptic_png(out / "one.png").shape == (1, 1)
    with warnings.catch_warnings():  # 10^8 pixels is over Pillow's decompression-bomb warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        huge = Image.open(out / "huge.png")
    with huge as im:  # (decoding 10^8 ids would take gigabytes)
        assert im.size == (10000, 10000) and im.mode == "RGB"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave nothing behind

    doc = json.loads((out / "predictions.json").read_text())
    assert len(doc["images"]) == len(good) and len(doc["annotations"]) == len(good)
    assert {c["id"] for c in doc["categories"]} == {1, 2, 3, 4}
    by_id = {im["id"]: im for im in doc["images"]}
    n_segments = 0
    for ann in doc["annotations"]:
        image = by_id[ann["image_id"]]
        if ann["file_name"] == "huge.png":
            assert sum(s["area"] for s in ann["segments_info"]) == 10000 * 10000
            continue
        ids = read_panoptic_png(out / ann["file_name"])
        assert ids.shape == (image["height"], image["width"])
        for s in ann["segments_info"]:
            assert {"id", "category_id", "name", "isthing", "area", "bbox", "score"} <= set(s)
            assert s["area"] == int((ids == s["id"]).sum()) > 0
            n_segments += 1
        assert set(np.unique(ids)) <= {s["id"] for s in ann["segments_info"]} | {0}
    assert n_segments >= len(good)

    # a re-run skips what is done and overwrites nothing; --overwrite redoes it
    stamp = (out / "good.png").stat().st_mtime_ns
    assert main(["predict", str(tmp_path / "photos" / "good.jpg"), *args[3:]]) == 0
    assert "1 already done" in capsys.readouterr().out
    assert (out / "good.png").stat().st_mtime_ns == stamp
    assert main(["predict", str(tmp_path / "photos" / "good.jpg"), *args[3:], "--overwrite"]) == 0
    assert "1 predicted" in capsys.readouterr().out
    assert (out / "good.png").stat().st_mtime_ns != stamp
    # predictions.json lists every image done in the folder, not only this run's
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == len(good)


def test_weights_that_are_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "bogus.pth"
    bogus.write_bytes(b"this is not a torch file")
    Image.fromarray(picture(20, 20)).save(tmp_path / "a.png")
    rc = main(["predict", str(tmp_path / "a.png"), "--out", str(tmp_path / "o"), "--weights", str(bogus),
               "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bogus) in err[0] and "checkpoint" in err[0]


def test_glob_inputs(tmp_path, checkpoint, capsys):
    for i in range(2):
        Image.fromarray(picture(30, 40, seed=i)).save(tmp_path / f"p{i}.png")
    rc = main(["predict", str(tmp_path / "p*.png"), str(tmp_path / "nothing*.jpg"), "--out",
               str(tmp_path / "o"), "--weights", str(checkpoint), "--size", "32", "--max-size", "48",
               "--stuff-merge", "union", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1 and "2 predicted" in captured.out
    assert "nothing*.jpg: no file matches" in captured.err


def test_same_stem_gets_distinct_outputs(tmp_path):
    from panoptic_detr.runner import expand_inputs, output_stems

    for name in ("a.jpg", "a.png", ".hidden.png"):
        Image.fromarray(picture(8, 8)).save(tmp_path / name)
    files, problems = expand_inputs([tmp_path, tmp_path / "a.jpg"])  # a.jpg named twice
    assert problems == [] and [f.name for f in files] == ["a.jpg", "a.png"]
    assert output_stems(files) == ["a", "a_png"]
