"""runner.predict_files into a folder that already holds results: kills between files, other
sources with the same names, outputs inside the inputs, an output folder that cannot be written.
Kills are simulated by failing the record write, never by timing."""

from __future__ import annotations

import errno
import json

import pytest
from PIL import Image

from panoptic_detr import runner
from panoptic_detr.cli import main
from panoptic_detr.predictor import Predictor
from predict_fixtures import picture, save_checkpoint, tiny_pretrained

SMALL = {"size": 64, "max_size": 96, "threshold": 0.5}


@pytest.fixture(scope="module")
def predictor():
    return Predictor(tiny_pretrained(), **SMALL)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", tiny_pretrained())


def save(path, seed, shape=(40, 60)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture(*shape, seed=seed)).save(path)
    return path


def run(inputs, out, predictor, **kwargs):
    return runner.predict_files(inputs, out, predictor=predictor, progress=False, **kwargs)


def records(out):
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))}


def fail_record_writes(monkeypatch, error):
    """The record write raises `error` (a kill or a full disk between the PNG and the record)."""
    write_json = runner.write_json

    def write(target, doc, **kwargs):
        if target.parent.name == "records":
            raise error
        return write_json(target, doc, **kwargs)

    monkeypatch.setattr(runner, "write_json", write)


@pytest.mark.parametrize("kill", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_an_image_killed_before_its_record_is_redone_without_overwrite(tmp_path, predictor, monkeypatch,
                                                                       kill):
    a, b = save(tmp_path / "in" / "a.png", 0), save(tmp_path / "in" / "b.png", 1)
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        fail_record_writes(m, kill)
        try:
            summary = run([a, b], out, predictor)
            assert len(summary.failed) == 2 and not summary.done
        except KeyboardInterrupt:
            pass
    assert (out / "a.png").is_file() and not records(out)  # outputs, but not done
    summary = run([a, b], out, predictor)
    assert summary.done == [str(a.resolve()), str(b.resolve())] and not summary.failed
    assert set(records(out)) == {"a", "b"}
    again = run([a, b], out, predictor)
    assert len(again.skipped) == 2 and not again.done


def test_a_different_source_with_a_taken_name_gets_its_own(tmp_path, predictor):
    first, other = save(tmp_path / "A" / "photo.png", 0), save(tmp_path / "B" / "photo.png", 1)
    out = tmp_path / "out"
    run([first], out, predictor)
    kept = (out / "photo.png").read_bytes()
    summary = run([other], out, predictor)  # same name, another picture: not "already done"
    assert summary.done == [str(other.resolve())] and not summary.skipped
    assert (out / "photo.png").read_bytes() == kept  # the first image's outputs untouched
    recs = records(out)
    assert set(recs) == {"photo", "photo_png"}
    assert recs["photo"]["image"]["sha256"] == runner.file_digest(first)
    assert recs["photo_png"]["image"]["sha256"] == runner.file_digest(other)
    # names are stable: both again, in either order, are done under the names they have
    assert len(run([other, first], out, predictor).skipped) == 2
    # the same bytes elsewhere (another machine, another folder) are the same source
    copy = tmp_path / "C" / "photo.png"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    assert run([copy], out, predictor).skipped == [str(copy.resolve())]
    # a.png then a.jpg, other pictures: the second is predicted under a name of its own
    run([save(tmp_path / "D" / "a.png", 2)], out, predictor)
    jpg = tmp_path / "D" / "a.jpg"
    Image.fromarray(picture(40, 60, seed=3)).save(jpg, quality=95)
    assert run([jpg], out, predictor).done == [str(jpg.resolve())]
    assert {"a", "a_jpg"} <= set(records(out))


def test_output_names_cannot_collide(tmp_path, predictor):
    x, x_overlay = save(tmp_path / "in" / "x.png", 0), save(tmp_path / "in" / "x_overlay.png", 1)
    out = tmp_path / "out"
    run([x, x_overlay], out, predictor, overwrite=True)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["overlays/x.png", "overlays/x_overlay.png", "x.png", "x_overlay.png"]
    assert {r["image"]["file_name"] for r in records(out).values()} == {"x.png", "x_overlay.png"}


def test_predictions_json_lists_every_record_in_the_folder(tmp_path, predictor):
    images = [save(tmp_path / "in" / f"00000{i}.png", i) for i in (1, 2, 3)]
    out = tmp_path / "out"
    run(images[:2], out, predictor)
    run(images[2:], out, predictor)
    doc = json.loads((out / "predictions.json").read_text())
    assert [im["file_name"] for im in doc["images"]] == ["000001.png", "000002.png", "000003.png"]
    assert [a["file_name"] for a in doc["annotations"]] == ["000001.png", "000002.png", "000003.png"]
    assert len({im["id"] for im in doc["images"]}) == 3


def test_the_output_folder_is_not_an_input(tmp_path, predictor):
    photos = tmp_path / "photos"
    images = [save(photos / f"p{i}.png", i) for i in range(2)]
    out = photos / "out"
    pattern = str(photos / "**" / "*.png")
    assert len(run([pattern], out, predictor).done) == 2
    again = run([pattern, out / "p0.png"], out, predictor)
    assert again.skipped == [str(p.resolve()) for p in images] and not again.done
    assert again.failed == [f"{out / 'p0.png'}: is inside the output folder {out.resolve()}, not an input"]


def test_temporary_files_of_a_killed_run_are_removed(tmp_path, predictor):
    out = tmp_path / "out"
    (out / "records").mkdir(parents=True)
    (out / "overlays").mkdir()
    left = [out / ".p0.png.k2j4h5g6.tmp", out / "records" / ".p0.json.a1b2c3d4.tmp",
            out / "overlays" / ".p0.png.zzzzzzzz.tmp"]
    for tmp in left:
        tmp.write_bytes(b"half a file")
    (out / "notes.tmp").write_text("not ours")
    run([save(tmp_path / "p0.png", 0)], out, predictor)
    assert not any(p.exists() for p in left) and (out / "notes.tmp").exists()


def test_a_damaged_record_is_named_and_the_run_goes_on(tmp_path, predictor):
    a, b = save(tmp_path / "in" / "a.png", 0), save(tmp_path / "in" / "b.png", 1)
    out = tmp_path / "out"
    run([a, b], out, predictor)
    (out / "records" / "a.json").write_text("{ truncated")
    (out / "records" / "zzz.json").write_text("[]")
    summary = run([a, b], out, predictor)
    assert summary.done == [str(a.resolve())] and summary.skipped == [str(b.resolve())]
    (line,) = summary.failed
    assert line.startswith(f"{out / 'records' / 'zzz.json'}: damaged")
    assert len(json.loads((out / "predictions.json").read_text())["images"]) == 2


def cli(args, checkpoint):
    return main(["predict", *map(str, args), "--weights", str(checkpoint), "--size", "64", "--max-size", "96",
                 "--quiet"])


def test_an_out_that_is_a_file_is_one_line(tmp_path, checkpoint, capsys):
    image = save(tmp_path / "a.png", 0)
    (tmp_path / "out").write_text("a file")
    assert cli([image, tmp_path / "missing.png", "--out", tmp_path / "out"], checkpoint) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"error: {tmp_path / 'missing.png'}: no such file or folder",
        f"error: {tmp_path / 'out'}: is a file, not a folder; give --out a folder"]
    assert "2 inputs: 0 predicted, 0 already done (skipped), 1 failed, 1 not run" in captured.out


def test_a_full_disk_at_predictions_json_keeps_the_lines_and_summary(tmp_path, checkpoint, capsys,
                                                                     monkeypatch):
    write_json = runner.write_json

    def full(target, doc, **kwargs):
        if target.name == "predictions.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_json(target, doc, **kwargs)

    monkeypatch.setattr(runner, "write_json", full)
    image = save(tmp_path / "a.png", 0)
    (tmp_path / "bad.png").write_text("not an image")
    out = tmp_path / "out"
    assert cli([image, tmp_path / "bad.png", "--out", out], checkpoint) == 1
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 2 and str(tmp_path / "bad.png") in err[0]
    assert err[1].startswith(f"error: {out / 'predictions.json'}: could not write it (No space left")
    assert "1 predicted" in captured.out and "1 failed" in captured.out
    assert (out / "records" / "a.json").is_file()


def test_a_dataset_gives_ids_and_names(tmp_path, predictor, capsys):
    from panoptic_detr.data.synth import make_dataset

    root = tmp_path / "data"
    make_dataset(root, 3, seed=1, size=(40, 56), progress=False)
    gt = json.loads((root / "panoptic.json").read_text())
    ann = next(a for a in gt["annotations"] if a["image_id"] == gt["images"][1]["id"])
    (root / "panoptic" / ann["file_name"]).rename(root / "panoptic" / "seventy.png")
    gt["images"][1]["id"], ann["image_id"], ann["file_name"] = 70, 70, "seventy.png"
    (root / "panoptic.json").write_text(json.dumps(gt))
    outsider = save(tmp_path / "outsider.png", 5)
    second = root / "images" / gt["images"][1]["file_name"]
    summary = run([second, outsider], tmp_path / "out", predictor, dataset=root)
    assert summary.done == [str(second.resolve())]
    assert summary.failed == [f"{outsider.resolve()}: not an image of the dataset (no annotated image has "
                              "this file name)"]
    doc = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [(a["image_id"], a["file_name"]) for a in doc["annotations"]] == [(70, "seventy.png")]
    assert (tmp_path / "out" / "seventy.png").is_file()
    # no IMAGES: all of the dataset's annotated images
    assert len(run([], tmp_path / "all", predictor, dataset=root).done) == 3
    doc = json.loads((tmp_path / "all" / "predictions.json").read_text())
    ids = [a["image_id"] for a in doc["annotations"]]
    assert sorted(ids) == sorted(im["id"] for im in gt["images"])
    with pytest.raises(SystemExit):
        main(["predict", "--out", str(tmp_path / "o")])
    assert "give IMAGES" in capsys.readouterr().err


def test_a_record_naming_no_source_is_redone_under_its_name(tmp_path, predictor):
    """A record written before records named their source: the file at its path is redone
    under the same name, not skipped and not given a second name."""
    image = save(tmp_path / "a.png", 0)
    out = tmp_path / "out"
    run([image], out, predictor)
    record = json.loads((out / "records" / "a.json").read_text())
    del record["image"]["sha256"]
    (out / "records" / "a.json").write_text(json.dumps(record))
    assert run([image], out, predictor).done == [str(image.resolve())]
    assert set(records(out)) == {"a"} and "sha256" in records(out)["a"]["image"]
    other = save(tmp_path / "b" / "a.png", 1)  # a name held by an unknown source is not free
    (out / "records" / "a.json").write_text(json.dumps(record))
    run([other], out, predictor)
    assert set(records(out)) == {"a", "a_png"}


def test_a_read_only_out_is_one_line_before_any_image(tmp_path, checkpoint, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(runner.tempfile, "mkstemp", read_only)
    out = tmp_path / "out"
    assert cli([save(tmp_path / "a.png", 0), "--out", out], checkpoint) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"error: {out}: cannot write the results there (Read-only file system)"]
    assert "1 inputs: 0 predicted, 0 already done (skipped), 0 failed, 1 not run" in captured.out
