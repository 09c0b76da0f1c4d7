"""runner: the many-images loop: batches, a failing image costs only itself, writes in order."""

from __future__ import annotations

from PIL import Image

from panoptic_detr import runner
from panoptic_detr.predictor import Predictor
from predict_fixtures import picture, tiny_pretrained

SMALL = {"size": 64, "max_size": 96, "threshold": 0.5}


class FailsOnSquares(Predictor):
    """The tiny predictor, failing on any batch with a square image (as a network running out
    of memory on one huge image fails its whole batch)."""

    calls: list[int]

    def predict_arrays(self, arrays):
        self.calls.append(len(arrays))
        if any(a.shape[0] == a.shape[1] for a in arrays):
            raise RuntimeError("out of memory\nsecond line")
        return super().predict_arrays(arrays)


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
