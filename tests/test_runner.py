"""runner: the many-images loop: batches, a failing image costs only itself, writes in order."""

from __future__ import annotations

import torch
from PIL import Image

from panoptic_detr import runner
from panoptic_detr.predictor import Predictor
from predict_fixtures import picture, tiny_pretrained

SMALL = {"size": 64, "max_size": 96, "threshold": 0.5}


class FailsOnSquares(Predictor):
    """The tiny predictor, failing on any batch with a square image (as a network running out
    of memory on one huge image fails its whole batch)."""

    calls: list[int]

    def predict_arrays(self, arrays, inputs=None):
        self.calls.append(len(arrays))
        if any(a.shape[0] == a.shape[1] for a in arrays):
            raise RuntimeError("out of memory\nsecond line")
        return super().predict_arrays(arrays, inputs)


def _files(tmp_path, shapes):
    paths = []
    for i, (h, w) in enumerate(shapes):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(picture(h, w, seed=i)).save(paths[-1])
    return paths


def test_a_failing_image_costs_only_itself(tmp_path):
    predictor = FailsOnSquares(tiny_pretrained(), **SMALL)
    predictor.calls = []
    paths = _files(tmp_path, [(40, 60), (50, 50), (40, 70), (30, 50)])
    (tmp_path / "im4.png").write_bytes(b"not an image")
    paths.append(tmp_path / "im4.png")
    written, failed = [], []
    done = runner.run_images(predictor, [(p, i) for i, p in enumerate(paths)],
                             lambda i, image, result: written.append((i, image.shape, result.size)),
                             failed=failed, batch_size=3, progress=False)
    assert done == [paths[0], paths[2], paths[3]]
    assert [(i, shape[:2], size) for i, shape, size in written] == [
        (0, (40, 60), (40, 60)), (2, (40, 70), (40, 70)), (3, (30, 50), (30, 50))]
    assert failed == [f"{paths[1]}: prediction failed (RuntimeError: out of memory)",
                      f"{paths[4]}: not an image (or a format Pillow cannot read)"]
    assert predictor.calls == [3, 1, 1, 1, 1]  # the failed batch, then its images one by one


def test_a_write_that_fails_costs_only_its_image(tmp_path):
    predictor = Predictor(tiny_pretrained(), **SMALL)
    paths = _files(tmp_path, [(40, 60), (40, 70)])

    def write(i, image, result):
        if i == 0:
            raise OSError("disk full")

    failed: list[str] = []
    done = runner.run_images(predictor, [(p, i) for i, p in enumerate(paths)], write, failed=failed,
                             progress=False)
    assert done == [paths[1]] and failed == [f"{paths[0]}: could not write its results (disk full)"]


def test_predict_files_writes_the_record_last(tmp_path, monkeypatch):
    """The record marks an image done (a re-run skips it): it is written after the PNG and the
    overlay, so an interrupted write never leaves a finished-looking image."""
    predictor = Predictor(tiny_pretrained(), **SMALL)
    (path,) = _files(tmp_path, [(40, 60)])
    seen = []
    write_json = runner.write_json

    def spy(target, doc, **kwargs):
        seen.append((target.name, sorted(str(p.relative_to(tmp_path / "out"))
                                         for p in (tmp_path / "out").rglob("*.png"))))
        return write_json(target, doc, **kwargs)

    monkeypatch.setattr(runner, "write_json", spy)
    summary = runner.predict_files([path], tmp_path / "out", predictor=predictor, progress=False)
    assert summary.done == [str(path.resolve())] and not summary.failed
    assert seen[0] == ("im0.json", ["im0.png", "overlays/im0.png"])
    assert seen[1][0] == "predictions.json"
    again = runner.predict_files([path], tmp_path / "out", predictor=predictor, progress=False)
    assert again.skipped == [str(path.resolve())] and not again.done
    assert Image.open(tmp_path / "out" / "im0.png").size == (60, 40)


class RecordsInputs(Predictor):
    """The tiny predictor, noting the network inputs it was given ready-made."""

    given: list

    def predict_arrays(self, arrays, inputs=None):
        self.given.extend(zip(arrays, inputs or [None] * len(arrays), strict=True))
        return super().predict_arrays(arrays, inputs)


def test_loader_workers_preprocess_and_change_nothing(tmp_path):
    """With loader workers the images reach the network resized and normalised by the workers
    (`Predictor.preprocessing`, the same function as in this process), and every result, a
    broken file's line and the order are those of decoding here."""
    predictor = RecordsInputs(tiny_pretrained(), **SMALL)
    paths = _files(tmp_path, [(40, 60), (70, 50), (40, 70), (30, 50), (60, 60)])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths.insert(2, tmp_path / "bad.png")
    runs = {}
    for workers in (0, 2):
        predictor.given, written, failed = [], [], []
        done = runner.run_images(predictor, [(p, i) for i, p in enumerate(paths)],
                                 lambda i, image, r, out=written: out.append((i, r.id_map, r.segments_info)),
                                 failed=failed, batch_size=2, progress=False, loader_workers=workers)
        runs[workers] = (done, written, failed, predictor.given)
    (done, written, failed, given), (done2, written2, failed2, given2) = runs[0], runs[2]
    assert done2 == done == [p for p in paths if p.name != "bad.png"]
    assert failed2 == failed and len(failed) == 1
    assert [i for i, _, _ in written2] == [i for i, _, _ in written] == [0, 1, 3, 4, 5]
    for (_, ids, segments), (_, ids2, segments2) in zip(written, written2, strict=True):
        assert torch.equal(ids2, ids) and segments2 == segments
    assert sum(len(s) for _, _, s in written) > 0
    assert all(x is None for _, x in given)  # no workers: made by the predictor
    assert len(given2) == 5 and all(x is not None for _, x in given2)
    for image, x in given2:
        assert torch.equal(x, predictor.preprocessing(image)) and x.shape[1:] != image.shape[:2]
