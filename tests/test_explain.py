"""explain / explain_report / the explain command: invariants of the attention, every drop
reason on designed outputs, parity with predict, and the report in a real browser."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from panoptic_detr.cli import main
from panoptic_detr.data.images import preprocess
from panoptic_detr.explain import (
    BELOW_THRESHOLD,
    DUPLICATED_STUFF,
    KEPT,
    NO_OBJECT,
    SMALL_AREA,
    explain,
)
from panoptic_detr.explain.report import write_report
from panoptic_detr.model import PRESETS, build_model
from panoptic_detr.structures import Categories, PaddedBatch

CATS = Categories(
    [
        {"id": 1, "name": "disc", "isthing": 1, "color": [220, 40, 40]},
        {"id": 2, "name": "square", "isthing": 1, "color": [40, 40, 220]},
        {"id": 3, "name": "sky", "isthing": 0, "color": [120, 200, 250]},
        {"id": 4, "name": "grass", "isthing": 0, "color": [40, 180, 40]},
    ],
    num_classes=5,
)
SMALL = {"size": 64, "max_size": 96}  # network input sizes for the tests


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


@pytest.fixture
def tiny_model() -> torch.nn.Module:
    """A fresh model per test: explain, as every Predictor, prepares a model in place."""
    torch.manual_seed(0)
    model = build_model(PRESETS["tiny"]).eval()
    with torch.no_grad():  # spread the queries so that their scores differ
        model.query_embed.weight.mul_(20)
    return model


# ---- attention maps --------------------------------------------------------------------------


def test_attention_sums_to_one_over_heads_and_positions(tiny_model):
    e = explain(tiny_model, _image(50, 70), threshold=0.0, categories=CATS, **SMALL)
    n, m = PRESETS["tiny"].num_queries, PRESETS["tiny"].mask_heads
    assert e.attention_maps.shape[:2] == (n, m)
    assert e.attention_maps.shape[2:] == e.c5_norm.shape
    assert (e.attention_maps >= 0).all()
    torch.testing.assert_close(e.attention_maps.sum(dim=(1, 2, 3)), torch.ones(n))
    # joint, not per head: single heads do not each sum to one
    assert not torch.allclose(e.attention_maps.sum(dim=(2, 3)), torch.ones(n, m))


def test_padding_gets_zero_attention_and_valid_part_matches_single(tiny_model):
    small = preprocess(_image(64, 64, 1), short=64, max_size=64)  # 64 x 64: a 2 x 2 C5 grid
    large = preprocess(_image(96, 128, 2), short=96, max_size=128)  # 96 x 128: 3 x 4
    batch = PaddedBatch.from_images([small, large])
    with torch.no_grad():
        det = tiny_model.detect(batch, return_attention=True)
    att, pad = det.attention_maps, det.padding  # B x N x M x h x w, B x h x w
    assert pad[0].any() and not pad[1].any()
    assert att[0][:, :, pad[0]].abs().max() == 0
    torch.testing.assert_close(att.sum(dim=(2, 3, 4)), torch.ones(att.shape[:2]))
    # the unpadded image of the batch gets what explain gives for it alone (the padded one does
    # not: the backbone's activations in the padding reach its border cells, as in the original)
    e = explain(tiny_model, _image(96, 128, 2), threshold=0.0, categories=CATS, size=96, max_size=128)
    torch.testing.assert_close(e.attention_maps, att[1], atol=1e-5, rtol=1e-4)


# ---- designed outputs: every drop reason -----------------------------------------------------


class Designed(torch.nn.Module):
    """Stands in for DETRPanoptic with outputs designed to give every status once:
    q0 disc (left half), q1 sky (top right, second best bottom right), q2 sky again (most of
    the right half: a duplicate, merged into the first sky query q1), q3 no-object, q4 square
    at p ~ 0.5, q5 square winning one mask cell, q6 no-object. Input 64 x 64, so masks are
    16 x 16 and C5 2 x 2."""

    def __init__(self, no_segment: bool = False, dc5: bool = False):
        super().__init__()
        self.config = PRESETS["tiny"].with_overrides(backbone="resnet50", dilation=True) if dc5 else None
        g = 4 if dc5 else 2  # C5 cells per side: stride 16 or 32 over 64 pixels
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # explain asks for the device
        k = CATS.num_classes
        logits = torch.full((7, k + 1), -10.0)
        for q, c in enumerate([1, 3, 3, k, 2, 2, k]):
            logits[q, c] = 10.0
        logits[4, 2], logits[4, 1] = 0.0, 0.0  # square vs disc: p = 0.5 each, below 0.85
        if no_segment:
            logits[:, :k] = -10.0
            logits[:, k] = 10.0
        self.logits = logits
        m = torch.full((7, 16, 16), -5.0)
        m[0, :, :8] = 5
        m[1, :8, 8:] = 5
        m[1, 8:, 8:] = 3
        m[2, 6:, 8:] = 6  # the duplicate wins more of the sky than the first sky query
        m[5, 3, 3] = 10
        self.masks = m
        gen = torch.Generator().manual_seed(3)
        self.att = torch.rand(7, 2, g, g, generator=gen).flatten(1).softmax(-1).view(7, 2, g, g)

    def detect(self, batch, return_attention=False):
        assert batch.images.shape[-2:] == (64, 64)
        # the fields of a Detection that explain reads
        return SimpleNamespace(pred_logits=self.logits[None], pred_boxes=torch.full((1, 7, 4), 0.5),
                               layer4=torch.rand(1, 8, *self.att.shape[-2:]),
                               attention_maps=self.att[None] if return_attention else None)

    def predict_masks(self, det, queries, chunk=None):
        return [self.masks[q] for q in queries]


@pytest.mark.parametrize("stuff_merge", ["original", "union"])
def test_every_drop_reason_on_designed_outputs(stuff_merge):
    from panoptic_detr.loading import Pretrained
    from panoptic_detr.predictor import Predictor

    predictor = Predictor(Pretrained(Designed(), None, CATS, "designed"), threshold=0.85,
                                          size=64, max_size=64, stuff_merge=stuff_merge)
    e = explain(predictor, _image(16, 16))
    status = [q.status for q in e.queries]
    assert status == [KEPT, KEPT, DUPLICATED_STUFF, NO_OBJECT, BELOW_THRESHOLD, SMALL_AREA, NO_OBJECT]
    segs = {s["id"]: s for s in e.result.segments_info}
    q0, q1, q2 = e.queries[:3]
    assert segs[q0.segment_id]["category_id"] == 1 and segs[q1.segment_id]["category_id"] == 3
    assert q2.segment_id == q1.segment_id  # merged into the first sky segment
    # the sky covers the right half: the duplicate's quarter went to q1, by argmax or by union
    sky = e.result.id_map == q1.segment_id
    assert sky[:, 8:].all() and not sky[:, :8].any()
    assert e.queries[4].best_class in (1, 2) and abs(e.queries[4].best_score - 0.5) < 1e-3
    assert e.queries[3].label == CATS.num_classes and e.queries[3].best_score < 1e-3
    # the selected queries (and only they) have mask logits, in query order
    assert e.mask_queries.tolist() == [0, 1, 2, 5]
    torch.testing.assert_close(e.mask_logits_of(5), Designed().masks[5])
    assert e.mask_logits_of(3) is None


def test_extra_queries_get_masks_without_changing_the_result():
    base = explain(Designed(), _image(16, 16), threshold=0.85, categories=CATS, size=64, max_size=64)
    more = explain(Designed(), _image(16, 16), threshold=0.85, categories=CATS, size=64, max_size=64,
                   extra_queries=[4, 0])
    assert more.mask_queries.tolist() == [0, 1, 2, 5, 4]
    assert torch.equal(more.result.id_map, base.result.id_map)
    torch.testing.assert_close(more.mask_logits_of(4), Designed().masks[4])
    # the near miss: the unselected query with the best real-class score is q4 (p = 0.5)
    near = explain(Designed(), _image(16, 16), threshold=0.85, categories=CATS, size=64, max_size=64,
                   top_dropped=2)
    assert near.mask_queries.tolist()[:5] == [0, 1, 2, 5, 4] and len(near.mask_queries) == 6


# ---- parity with predict ---------------------------------------------------------------------


def _save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    torch.save({"format": "panoptic-detr/1", "config": dataclasses.asdict(PRESETS["tiny"]),
                "categories": CATS.to_json(), "model": model.state_dict()}, path)
    return path


def _spread_threshold(source, image) -> float:
    """A threshold between the query scores, so that some queries are kept and some dropped."""
    probe = explain(source, image, threshold=0.0, categories=CATS, **SMALL)
    scores = sorted(q.score for q in probe.queries if q.label != CATS.num_classes)
    assert len(scores) >= 2, "the tiny model should predict some real classes"
    return (scores[0] + scores[-1]) / 2


def test_explained_segments_equal_full_forward_postprocess(tiny_model):
    """explain (detect + masks of the selected queries) == the whole network's masks for all
    queries through the same post-processing."""
    from panoptic_detr.model.postprocess import panoptic_postprocess

    image = _image(60, 90, 4)
    threshold = _spread_threshold(tiny_model, image)
    x = preprocess(image, SMALL["size"], SMALL["max_size"])
    batch = PaddedBatch.from_images([x])
    with torch.no_grad():
        out = tiny_model(batch)
    expected = panoptic_postprocess(out.pred_logits[0], out.pred_masks[0], tuple(x.shape[1:]),
                                    tuple(batch.images.shape[-2:]), image.shape[:2], CATS.thing_mask(),
                                    threshold=threshold, pred_boxes=out.pred_boxes[0])
    got = explain(tiny_model, image, threshold=threshold, categories=CATS, **SMALL)
    assert expected.segments_info and any(not q.kept for q in got.queries)
    assert torch.equal(got.result.id_map, expected.id_map)
    assert [(s["id"], s["category_id"], s["area"]) for s in got.result.segments_info] == \
        [(s["id"], s["category_id"], s["area"]) for s in expected.segments_info]
    kept = got.kept()
    assert [q.segment_id for q in kept] == [s["id"] for s in expected.segments_info]
    assert [q.label for q in kept] == [s["category_id"] for s in expected.segments_info]
    assert [q.index for q in kept] == sorted(q.index for q in kept)  # ids follow query order
    for q in kept:  # its mask logits are the full forward's
        torch.testing.assert_close(got.mask_logits_of(q.index), out.pred_masks[0, q.index],
                                   atol=1e-4, rtol=1e-4)


def test_explained_segments_equal_predict(tiny_model, tmp_path):
    """Same checkpoint file, same image: explain's segments are predict's, whichever way the
    model is handed over (a Predictor loading the file, or loaded weights plus settings)."""
    from panoptic_detr.loading import load_pretrained
    from panoptic_detr.predictor import Predictor

    ckpt = _save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    image = _image(60, 90, 4)
    pre = load_pretrained(ckpt)
    threshold = _spread_threshold(pre, image)
    from_file = Predictor(ckpt, threshold=threshold, size=64, max_size=96)
    from_loaded = Predictor(pre, threshold=threshold, size=64, max_size=96)
    for predictor, got in [(from_file, explain(from_file, image)),
                           (from_loaded, explain(pre, image, threshold=threshold, **SMALL))]:
        expected = predictor.predict(image)
        assert expected.segments_info, "the threshold should keep some queries"
        assert torch.equal(got.result.id_map, expected.id_map)
        assert got.result.segments_info == expected.segments_info
        assert any(not q.kept for q in got.queries) and got.threshold == threshold


# ---- report ---------------------------------------------------------------------------------


def _embedded_images(html: str) -> list[Image.Image]:
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert srcs and all(re.match(r"data:image/(png|jpeg);base64,", s) for s in srcs)
    return [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in srcs]


def test_dilated_c5_is_drawn_at_stride_16(tmp_path):
    e = explain(Designed(dc5=True), _image(16, 16), threshold=0.85, categories=CATS, size=64, max_size=64)
    assert e.c5_stride == 16 and e.attention_maps.shape[-2:] == (4, 4) == e.c5_norm.shape
    html = write_report(e, tmp_path).html.read_text()
    assert "W/16 x H/16" in html


def test_report_files_are_self_contained(tmp_path):
    e = explain(Designed(), _image(16, 16), threshold=0.85, categories=CATS, size=64, max_size=64)
    files = write_report(e, tmp_path / "r")
    html = files.html.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", html)  # nothing to fetch
    images = _embedded_images(html)
    # overview, path, one per segment, one per dropped query with masks (the duplicate, the small)
    assert len(images) == 2 + len(e.result.segments_info) + 2
    assert sorted(files.dropped) == [2, 5]
    for name in ["duplicated stuff", "below threshold", "no-object", "&lt;= 4 pixels"]:
        assert name in html
    assert files.sheet.is_file() and files.path.is_file() and len(files.segments) == 2
    with pytest.raises(FileExistsError, match="exists"):
        write_report(e, tmp_path / "r")
    write_report(e, tmp_path / "r", segments=[1], overwrite=True)
    with pytest.raises(ValueError, match="segment"):
        write_report(e, tmp_path / "r2", segments=[7])


def test_report_without_segments_says_so_and_lists_dropped(tmp_path):
    e = explain(Designed(no_segment=True), _image(16, 16), threshold=0.85, categories=CATS,
                size=64, max_size=64)
    assert not e.result.segments_info and all(q.status == NO_OBJECT for q in e.queries)
    files = write_report(e, tmp_path)
    html = files.html.read_text()
    assert "No segment was kept" in html
    assert len(re.findall(r"<tr><td>\d+</td><td>no-object", html)) == 7
    assert files.path is None and files.sheet.is_file()


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _screenshot(page: Path, tmp: Path) -> tuple[Image.Image, str]:
    shot = tmp / f"{page.stem}.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0",
           f"--screenshot={shot}", "--window-size=1200,2000", page.resolve().as_uri()]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert shot.is_file(), f"no screenshot; chromium said: {run.stderr[-2000:]}"
    return Image.open(shot).convert("RGB"), run.stderr


def _console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_opens_in_headless_chromium(tmp_path):
    e = explain(Designed(), _image(16, 16), threshold=0.85, categories=CATS, size=64, max_size=64)
    files = write_report(e, tmp_path / "r")
    shot, log = _screenshot(files.html, tmp_path)
    assert _console_errors(log) == []
    a = np.asarray(shot)
    assert a.shape[:2] == (2000, 1200)
    assert a.std() > 10 and (a < 200).any(axis=2).mean() > 0.02  # not blank: text and figures
    # the check does see page errors (a control page with a script error)
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>undefined_function();</script>")
    _, log = _screenshot(bad, tmp_path)
    assert _console_errors(log), "console errors were not captured"


# ---- command line ---------------------------------------------------------------------------


def test_cli_writes_report_and_rejects_bad_input(tiny_model, tmp_path, capsys):
    ckpt = _save_checkpoint(tiny_model, tmp_path / "tiny.pt")
    img = tmp_path / "scene.png"
    Image.fromarray(_image(48, 64, 5)).save(img)
    out = tmp_path / "report"
    argv = ["explain", str(img), "--weights", str(ckpt), "--threshold", "0", "--size", "64",
            "--out", str(out)]
    assert main(argv) == 0
    assert (out / "report.html").is_file() and (out / "queries.json").is_file()
    assert "wrote" in capsys.readouterr().out
    # again without --overwrite: one line naming the file, non-zero
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "report.html" in err and "--overwrite" in err
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert main(["explain", str(bad), "--weights", str(ckpt), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.jpg" in err
    missing = tmp_path / "nope.pt"
    assert main(["explain", str(img), "--weights", str(missing), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pt" in err
    assert main([*argv, "--overwrite", "--segments", "99"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "99" in err


def test_heat_colours_match_matplotlib():
    from matplotlib import colormaps

    from panoptic_detr.explain.figures import heat

    v = np.random.default_rng(0).random((40, 40))
    for name in ("inferno", "viridis"):
        ref = colormaps[name](v, bytes=True)[..., :3].astype(int)
        assert np.abs(heat(v, 0.0, 1.0, name).astype(int) - ref).max() <= 7


def test_colour_bars_and_boxes_that_show_on_their_own_colour():
    from panoptic_detr.explain.figures import INK, colorbar, draw_box, heat, with_colorbar

    bar = np.asarray(colorbar(100, -2.0, 3.5, "viridis"))
    ends = heat(np.array([[0.0, 1.0]]), 0.0, 1.0, "viridis")[0]
    assert bar.shape[1] == 100 and (bar[0, 0] == ends[0]).all() and (bar[0, -1] == ends[1]).all()
    panel = np.zeros((30, 100, 3), np.uint8)
    assert np.asarray(with_colorbar(panel, 0, 1)).shape[0] > 30  # the bar under the heat map
    color = (60, 180, 75)
    im = Image.new("RGB", (40, 40), color)  # a box on a segment of its own colour
    draw_box(im, (10, 10, 30, 30), color)
    a = np.asarray(im)
    assert tuple(a[20, 8]) == (255, 255, 255) and tuple(a[20, 9]) == INK and tuple(a[20, 10]) == color
