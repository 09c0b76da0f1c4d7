"""Videos: a synthetic 3-second clip round-trips through `predict_video` to N frames whose
segments equal predicting the decoded frames one by one; --every; a corrupt video is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

av = pytest.importorskip("av")

from panoptic_detr import Predictor  # noqa: E402
from panoptic_detr.cli import main  # noqa: E402
from panoptic_detr.data.panoptic_png import read_panoptic_png  # noqa: E402
from panoptic_detr.data.synth import make_scene  # noqa: E402
from panoptic_detr.video import VideoError, predict_video, read_frames, video_info  # noqa: E402

FPS, SECONDS, H, W = 4, 3, 96, 128  # 12 frames: the network is the cost


def write_clip(path, n=FPS * SECONDS):
    """A synthetic scene panning sideways, H.264 at FPS frames per second."""
    scene = make_scene(0, 3, (H, W + 4 * n))[0]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for i in range(n):
            picture = np.ascontiguousarray(scene[:, 4 * i : 4 * i + W])
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture(scope="module")
def predictor():
    return Predictor(batch_size=4)  # the demo model; frames go 4 per call


def test_round_trip_equals_frames_one_by_one(clip, predictor, tmp_path):
    info = video_info(clip)
    assert (info.width, info.height, round(info.fps)) == (W, H, FPS)
    done = predict_video(predictor, clip, tmp_path, progress=False)
    n = FPS * SECONDS
    assert done.frames == list(range(n)) and done.problem is None
    doc = json.loads((tmp_path / "clip.json").read_text())
    assert [im["frame"] for im in doc["images"]] == list(range(n)) and len(doc["annotations"]) == n
    assert doc["video"]["fps"] == pytest.approx(FPS)
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == [f"clip_{i:06d}.png" for i in range(n)]
    one = Predictor()
    segments = 0
    for (index, t, frame), ann in zip(read_frames(clip), doc["annotations"], strict=True):
        assert t == pytest.approx(index / FPS)
        alone = one(frame)
        assert np.array_equal(read_panoptic_png(tmp_path / "clip" / ann["file_name"]), alone.id_map.numpy())
        ids = [(s["id"], s["category_id"], s["area"]) for s in ann["segments_info"]]
        assert ids == [(s["id"], s["category_id"], s["area"]) for s in alone.segments_info]
        segments += len(ids)
    assert segments >= 2 * n  # real segments were compared
    frames = list(read_frames(done.video))  # the overlay video: one picture per frame, the clip's size
    assert len(frames) == n and frames[0][2].shape == (H, W, 3)
    with pytest.raises(FileExistsError, match="overwrite"):
        predict_video(predictor, clip, tmp_path, progress=False)
    assert not list(tmp_path.glob(".*.tmp"))


def test_every_nth_frame_from_the_command_line(clip, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["predict", str(clip), "--out", str(out), "--every", "5", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("weights: demo") and "3 frames predicted" in lines[1]
    doc = json.loads((out / "clip.json").read_text())
    assert [im["frame"] for im in doc["images"]] == [0, 5, 10]
    assert [im["id"] for im in doc["images"]] == [a["image_id"] for a in doc["annotations"]]
    assert len(list(read_frames(out / "clip.mp4"))) == 3


def test_a_corrupt_video_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    with pytest.raises(VideoError, match="bad.mp4: "):
        list(read_frames(bad))
    assert main(["predict", str(bad), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: ") and "\n" not in err[0]
    assert not (tmp_path / "out" / "bad.mp4").exists() and not (tmp_path / "out" / "bad.json").exists()


def test_a_truncated_video_keeps_the_frames_before_the_cut(predictor, tmp_path):
    whole = write_clip(tmp_path / "whole.ts")  # MPEG-TS: readable up to where it stops
    cut = tmp_path / "cut.ts"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    done = predict_video(predictor, cut, tmp_path / "out", progress=False)
    assert 0 < len(done.frames) < FPS * SECONDS and done.frames == list(range(len(done.frames)))
    doc = json.loads(done.json.read_text())
    assert [im["frame"] for im in doc["images"]] == done.frames
    assert len(list(read_frames(done.video))) == len(done.frames)


def test_videos_in_folders_and_globs_are_predicted_as_videos(clip, tmp_path, capsys):
    # a folder of photos and clips: the clips as videos, the photos as images, one run; a glob
    # likewise; a folder with neither says both kinds it looks for
    import shutil
    from pathlib import Path

    from PIL import Image

    media = tmp_path / "media"
    (media / "more").mkdir(parents=True)
    shutil.copy(clip, media / "clip.mp4")
    shutil.copy(clip, media / "more" / "pan.MOV")
    Image.fromarray(make_scene(1, 3, (H, W))[0]).save(media / "photo.png")
    (media / "notes.txt").write_text("neither")
    out = tmp_path / "out"
    assert main(["predict", str(media), "--out", str(out), "--every", "4", "--quiet", "--recursive"]) == 0
    lines = capsys.readouterr().out.splitlines()
    videos = [line.split(": ")[:2] for line in lines if "frames predicted" in line]
    assert [(Path(v).name, n.split(";")[0]) for v, n in videos] == [("clip.mp4", "3 frames predicted"),
                                                                    ("pan.MOV", "3 frames predicted")]
    assert "1 inputs: 1 predicted" in lines[-1]
    for stem in ("clip", "pan"):
        doc = json.loads((out / f"{stem}.json").read_text())
        assert [im["frame"] for im in doc["images"]] == [0, 4, 8] and (out / f"{stem}.mp4").is_file()
    assert [im["file_name"] for im in json.loads((out / "predictions.json").read_text())["images"]] == [
        "photo.png"]

    glob_out = tmp_path / "glob"
    assert main(["predict", str(media / "*.mp4"), "--out", str(glob_out), "--every", "6", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "2 frames predicted" in lines[1] and len(lines) == 2  # a video only: no image summary
    assert json.loads((glob_out / "clip.json").read_text())["images"][1]["frame"] == 6

    assert main(["predict", str(media / "more"), "--out", str(tmp_path / "o2"), "--every", "12",
                 "--quiet"]) == 0  # a folder holding only a video is no problem
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "notes.txt").write_text("neither")
    assert main(["predict", str(tmp_path / "none"), "--out", str(tmp_path / "o3"), "--quiet"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {tmp_path / 'none'}: no image or video files in it (.jpg, .png, .tif, .webp, "
                   ".mp4, .mov, ...)"]
    assert not (tmp_path / "o3").exists()  # said before any model loaded or any output was made
