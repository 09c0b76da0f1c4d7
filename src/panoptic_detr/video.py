"""Videos: frames in, an overlay video, COCO panoptic PNGs and one JSON out.

Decoding and encoding use PyAV (FFmpeg), the `video` extra, imported only here and only when
a video is read or written. `read_frames` is the Python API over frames (each one goes to
`Predictor` like any image); `predict_video` is `panoptic-detr predict VIDEO --out DIR`:

    DIR/<stem>.mp4                 the overlay video (H.264; the predicted frames, at fps / every)
    DIR/<stem>/<stem>_<frame>.png  COCO panoptic PNG of each predicted frame (frame: 6 digits)
    DIR/<stem>.json                COCO panoptic: one image per predicted frame (with its frame
                                   index and time), annotations with named segments, categories

Every file is written atomically; the video and the JSON, which name the frames done, come
last. A file that cannot be read as a video is one `VideoError` line; damage found after some
frames ends the video there: what was decoded is written and the problem is reported.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data.files import write_json
from .data.panoptic_png import write_panoptic_png
from .predictor import Predictor
from .structures import PanopticResult
from .viz import overlay

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv",
                              ".flv", ".ts", ".3gp"})
"""Inputs `predict` treats as videos (any case)."""


class VideoError(Exception):
    """A video that cannot be used; `str()` is one line: "PATH: problem"."""

    def __init__(self, path: str | os.PathLike[str], problem: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {' '.join(str(problem).split())}")


def is_video(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise VideoError("PyAV", "videos need PyAV: pip install 'panoptic-detr[video]'") from None
    return av


@dataclass
class VideoInfo:
    """What the container says of its first video stream."""

    frames: int
    """Frame count (0 when the container does not say)."""
    fps: float
    width: int
    height: int


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    av = _av()
    with _open(av, path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        frames = int(stream.frames or 0)
        if frames == 0 and stream.duration is not None and stream.time_base is not None:
            frames = round(float(stream.duration * stream.time_base) * fps)
        return VideoInfo(frames, fps, int(stream.codec_context.width), int(stream.codec_context.height))


def _open(av: Any, path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if path.is_dir():
        raise VideoError(path, "is a directory, not a video")
    if not path.exists():
        raise VideoError(path, "no such file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise VideoError(path, f"not a video PyAV can read ({e.strerror or e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(path, "has no video stream")
    return container


def read_frames(path: str | os.PathLike[str], every: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in seconds, [H, W, 3] uint8 RGB) of every `every`-th frame, in order
    (0, every, 2 every, ...). Raises `VideoError` when the file cannot be opened, or when
    decoding fails (naming the frame reached)."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    av = _av()
    with _open(av, path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                if index % every == 0:
                    t = frame.time if frame.time is not None else index / float(stream.average_rate or 25)
                    yield index, float(t), frame.to_ndarray(format="rgb24")
                index += 1
        except av.error.FFmpegError as e:
            raise VideoError(path, f"corrupt after frame {index} ({e.strerror or e})") from None
    if index == 0:
        raise VideoError(path, "no frame could be decoded (empty or corrupt video)")


@dataclass
class VideoSummary:
    """What `predict_video` did."""

    video: Path
    json: Path
    frames: list[int] = field(default_factory=list)
    """Indices of the frames predicted."""
    problem: str | None = None
    """Damage that ended the video early, one line; None when it was read to the end."""


def predict_video(predictor: Predictor, path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                  every: int = 1, overwrite: bool = False, progress: bool = True,
                  labels: bool = True) -> VideoSummary:
    """Predict every `every`-th frame of the video at `path` into `out_dir` (layout in the module
    docstring), `predictor.batch_size` frames per network call. An existing output is
    FileExistsError unless `overwrite`; a video that cannot be read is `VideoError`."""
    from tqdm import tqdm

    av = _av()
    src, out = Path(path), Path(out_dir)
    stem = src.stem
    video_out, json_out, png_dir = out / f"{stem}.mp4", out / f"{stem}.json", out / stem
    for target in (video_out, json_out):
        if not overwrite and target.exists():
            raise FileExistsError(f"{target}: exists (pass --overwrite to replace it)")
    info = video_info(src)  # a file that is no video fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    summary = VideoSummary(video_out, json_out)
    total = -(-info.frames // every) if info.frames else None
    bar = tqdm(total=total, desc=src.name, unit="frame", disable=not progress, file=sys.stderr)
    images, annotations = [], []
    fd, tmp = tempfile.mkstemp(prefix=f".{video_out.name}.", suffix=".tmp", dir=out)
    os.close(fd)
    try:
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4",
                                          rate=max(1, round(info.fps / every)))
            stream.width, stream.height = info.width + info.width % 2, info.height + info.height % 2
            stream.pix_fmt = "yuv420p"
            chunk: list[tuple[int, float, np.ndarray]] = []
            frames = read_frames(src, every)
            while True:
                try:
                    item = next(frames, None)
                except VideoError as e:
                    summary.problem, item = str(e), None
                if item is not None:
                    chunk.append(item)
                if chunk and (item is None or len(chunk) == predictor.batch_size):
                    results = predictor.predict_arrays([a for _, _, a in chunk])
                    for (index, t, image), result in zip(chunk, results, strict=True):
                        name = f"{stem}_{index:06d}.png"
                        write_panoptic_png(png_dir / name, result.id_map, fsync=False)
                        doc = result.to_coco(name, image_id=index + 1)
                        images.append({**doc["images"][0], "frame": index, "time": round(t, 4)})
                        annotations.append(doc["annotations"][0])
                        _encode(container, stream, av, _frame_picture(image, result, predictor, labels))
                        summary.frames.append(index)
                    bar.update(len(chunk))
                    chunk = []
                if item is None:
                    break
            if not summary.frames:
                raise VideoError(src, (summary.problem or "no frame could be decoded").split(": ", 1)[-1])
            for packet in stream.encode():  # flush
                container.mux(packet)
        os.replace(tmp, video_out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    write_json(json_out, {"video": {"file_name": src.name, "path": str(src), "fps": info.fps, "every": every},
                          "images": images, "annotations": annotations,
                          "categories": predictor.categories.to_json()})
    return summary


def _frame_picture(image: np.ndarray, result: PanopticResult, predictor: Predictor,
                   labels: bool) -> np.ndarray:
    """The overlay of one frame: no legend, so every frame has the video's size."""
    return overlay(image, result, predictor.categories, legend=False, labels=labels)


def _encode(container: Any, stream: Any, av: Any, picture: np.ndarray) -> None:
    h, w = picture.shape[:2]
    if (h, w) != (stream.height, stream.width):  # H.264 wants even sides: pad with black
        padded = np.zeros((stream.height, stream.width, 3), np.uint8)
        padded[:h, :w] = picture
        picture = padded
    for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
        container.mux(packet)


__all__ = ["VIDEO_EXTENSIONS", "VideoError", "VideoInfo", "VideoSummary", "is_video", "predict_video",
           "read_frames", "video_info"]
