"""Predicting many images: the one loop every command that runs a model over files uses.

`run_images` decodes, batches, predicts and hands each result to a writer; an image that
cannot be read, predicted or written costs only itself (one line naming it), the others go
on. `predict_files` is `panoptic-detr predict` on top of it: files, folders and globs (or a
COCO-panoptic dataset's images) in; COCO panoptic PNGs, overlays, per-image records and one
predictions.json out. `eval.evaluate_model` writes a dataset's predictions with it.

A run into a folder is safe to kill and repeat: an image is done only when its record exists
and names the same source (the SHA-256 of the input file's bytes), every output name is
assigned from the whole input list and the records already there before any work starts, a
source never takes a name whose record names another, and predictions.json is rebuilt from
all the records in the folder.

Under torchrun the same calls share the work (`parallel`: process group, exact shards): rank 0
names every image, each process predicts its share and writes its images' files, rank 0
rebuilds predictions.json; see `predict_files` and docs/distributed_inference.md.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
from PIL import Image

from .data.files import json_bytes, png_bytes, write_bytes_inside, write_json, write_png
from .data.images import ImageError, load_image
from .data.layout import find_layout
from .data.panoptic_png import panoptic_png_bytes, write_panoptic_png
from .parallel import (
    DistInfo,
    Relay,
    all_gather_object,
    broadcast_object,
    process_group,
    rank_device,
    shard,
)
from .predictor import Predictor
from .settings import InferenceSettings
from .structures import Categories, PanopticResult
from .viz import overlay

T = TypeVar("T")
Writer = Callable[[T, np.ndarray, Any], None]
"""write(item, image [H, W, 3] uint8, result): store one image's result (raises OSError)."""


@runtime_checkable
class ItemModel(Protocol):
    """What `run_images` runs besides a `Predictor`: a model of many images that needs each
    image's item too (build-gt's sources: the boxes annotated in each image)."""

    batch_size: int

    def predict_items(self, items: Sequence[Any], images: Sequence[np.ndarray]) -> list[Any]:
        """The result of each (item, decoded [H, W, 3] uint8 image), in order; raises
        RuntimeError / ValueError / MemoryError for a batch it cannot run."""
        ...

OVERLAY_MAX_SIDE = 2048
"""Overlays of larger images are drawn on a copy scaled down to this longest side."""


def run_images(predictor: Predictor | ItemModel, items: Sequence[tuple[Path, T]], write: Writer[T], *,
               failed: list[str], batch_size: int | None = None, progress: bool = True,
               desc: str | None = None, loader_workers: int = 0) -> list[Path]:
    """Predict the image file of each (path, item) pair and `write(item, image, result)`, in
    order, `batch_size` images per network call (default: the predictor's). predictor: a
    `Predictor` (`predict_arrays(images)`), or an `ItemModel` (`predict_items(items, images)`).

    The network runs in this thread; `write` runs in a writer thread, one batch behind (PNG
    encoding overlaps the next batch's network); with `loader_workers` > 0 the files are
    decoded and preprocessed (resized, normalised: `Predictor.preprocessing`) by that many
    DataLoader processes, a few batches ahead, so this thread only runs the network. Both
    queues are bounded, so memory stays flat however many images there are.

    One line per image that could not be read, predicted or written is appended to `failed`;
    returns the paths written.
    """
    from tqdm import tqdm

    batch_size = batch_size or predictor.batch_size
    done: list[Path] = []
    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress or not items, file=sys.stderr)
    writer = ThreadPoolExecutor(1, thread_name_prefix="writer")
    pending: list[tuple[Path, Future]] = []  # the previous batch's writes
    try:
        prepare = getattr(predictor, "preprocessing", None)  # an ItemModel's images go as decoded
        for chunk, loaded in _decoded(items, batch_size, loader_workers, prepare, failed):
            pairs = _predict_isolating_failures(predictor, loaded, failed)
            _collect_writes(pending, done, failed)
            pending = [(path, writer.submit(write, item, image, result))
                       for (path, item, image, _), result in pairs]
            bar.update(len(chunk))
            bar.set_postfix(failed=len(failed), refresh=False)
        _collect_writes(pending, done, failed)
    finally:  # an interrupt leaves no write half-started behind it
        writer.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return done


def _collect_writes(pending: list[tuple[Path, Future]], done: list[Path], failed: list[str]) -> None:
    for path, future in pending:
        try:
            future.result()
            done.append(path)
        except OSError as e:
            failed.append(f"{path}: could not write its results ({e})")


Loaded = tuple[Path, T, np.ndarray, torch.Tensor | None]
"""(path, item, decoded image, its network input when a loader worker made it)."""


def _decoded(items: Sequence[tuple[Path, T]], batch_size: int, workers: int,
             prepare: Callable[[np.ndarray], torch.Tensor] | None, failed: list[str]
             ) -> Iterator[tuple[Sequence[tuple[Path, T]], list[Loaded]]]:
    """(chunk of items, its images loaded) per batch, in order; an image that cannot be read is
    a line in `failed`. With workers, each image is preprocessed (`prepare`) where it is decoded."""
    chunks = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    if workers > 0 and items:
        from torch.utils.data import DataLoader

        images = DataLoader(_Load([path for path, _ in items], prepare), batch_size=batch_size,
                            num_workers=workers, collate_fn=list, prefetch_factor=2)
    else:
        images = ([_Load.decode(path) for path, _ in chunk] for chunk in chunks)
    for chunk, decoded in zip(chunks, images, strict=True):
        loaded = []
        for (path, item), image in zip(chunk, decoded, strict=True):
            if isinstance(image, str):
                failed.append(image)
            else:
                loaded.append((path, item, *image))
        yield chunk, loaded


class _Load(torch.utils.data.Dataset):
    """Image files decoded, and preprocessed when given `prepare`, in DataLoader workers:
    (image, network input or None), or the line saying why the file cannot be read. A
    preprocessing error leaves the input to the predictor, which reports it as its own."""

    def __init__(self, paths: Sequence[Path], prepare: Callable[[np.ndarray], torch.Tensor] | None = None
                 ) -> None:
        self.paths, self.prepare = list(paths), prepare

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, torch.Tensor | None] | str:
        loaded = self.decode(self.paths[i])
        if isinstance(loaded, str) or self.prepare is None:
            return loaded
        try:
            return loaded[0], self.prepare(loaded[0])
        except (ValueError, RuntimeError, MemoryError):
            return loaded

    @staticmethod
    def decode(path: Path) -> tuple[np.ndarray, None] | str:
        try:
            return load_image(path), None
        except ImageError as e:
            return str(e)


def _predict_isolating_failures(predictor: Predictor | ItemModel, loaded: list[Loaded], failed: list[str]
                                ) -> list[tuple[Loaded, Any]]:
    """(loaded item, result) pairs; if the batch fails, image by image, so one bad image costs
    only itself."""
    if not loaded:
        return []
    images = [im for _, _, im, _ in loaded]
    try:
        if isinstance(predictor, ItemModel):
            results = predictor.predict_items([item for _, item, _, _ in loaded], images)
        else:
            results = predictor.predict_arrays(images, [x for *_, x in loaded])
        return list(zip(loaded, results, strict=True))
    except (RuntimeError, ValueError, MemoryError) as e:
        if len(loaded) == 1:
            why = (str(e).splitlines() or [""])[0][:200]
            failed.append(f"{loaded[0][0]}: prediction failed ({type(e).__name__}: {why})")
            return []
    pairs = []
    for one in loaded:
        pairs.extend(_predict_isolating_failures(predictor, [one], failed))
    return pairs


# -- `panoptic-detr predict`: many files in, files out ---------------------------------------

RECORDS = "records"
"""OUT/records/<stem>.json: one image's entry, written last; its presence marks the image done."""
OVERLAYS = "overlays"
"""OUT/overlays/<stem>.png: the pictures to look at, in a folder of their own so that no input
name can make an overlay's name another image's panoptic PNG."""


@dataclass
class RunSummary:
    """What `predict_files` did."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    """One line per problem: "PATH: what is wrong"."""
    out_dir: Path = Path(".")
    error: str | None = None
    """The problem that stopped the run or its predictions.json (an output folder that cannot
    be written), one line; None when there was none."""
    not_run: list[str] = field(default_factory=list)
    """The inputs a stopped run did not get to."""

    def line(self) -> str:
        n = len(self.done) + len(self.skipped) + len(self.failed) + len(self.not_run)
        stopped = f", {len(self.not_run)} not run" if self.not_run else ""
        return (f"{n} inputs: {len(self.done)} predicted, {len(self.skipped)} already done (skipped), "
                f"{len(self.failed)} failed{stopped}; results in {self.out_dir}")


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff",
                              ".webp", ".ppm", ".pgm", ".pbm", ".pnm"})
"""The files a folder gives as inputs (any case); a file named on its own is tried whatever its name."""


def expand_inputs(inputs: Iterable[str | os.PathLike[str]], exclude: str | os.PathLike[str] | None = None,
                  recursive: bool = False, videos: frozenset[str] = frozenset()
                  ) -> tuple[list[Path], list[str]]:
    """Files, folders and globs -> (files in order without repeats, one problem line per input
    that names nothing).

    A folder gives its image files (`IMAGE_EXTENSIONS`, hidden ones left out) and those whose
    suffix is in `videos` (`predict` passes `video.VIDEO_EXTENSIONS`), with `recursive` those of
    its subfolders too; a COCO-panoptic dataset folder (panoptic.json or
    annotations/panoptic_*.json) gives its image folder's, never its annotation PNGs. Files
    inside the folder `exclude` (the output folder) are left out, so that a run writing into its
    own input folder never predicts its outputs.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    suffixes = IMAGE_EXTENSIONS | videos

    def kept(found: list[Path]) -> list[Path]:
        return [p for p in found if skip is None or not p.resolve().is_relative_to(skip)]

    files: list[Path] = []
    problems: list[str] = []
    for item in map(str, inputs):
        path = Path(item)
        if path.is_dir():
            found = _folder_images(path, recursive, suffixes)
            if not found:
                problems.append(f"{path}: {_no_images(path, recursive, bool(videos))}")
            elif not kept(found):
                problems.append(f"{path}: is inside the output folder {skip}, its files are not inputs")
            files.extend(kept(found))
        elif path.is_file():
            if not kept([path]):
                problems.append(f"{path}: is inside the output folder {skip}, not an input")
            files.extend(kept([path]))
        elif glob.has_magic(item):
            found = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not found:
                problems.append(f"{item}: no file matches this pattern")
            elif not kept(found):
                problems.append(f"{item}: matches only files inside the output folder {skip}")
            files.extend(kept(found))
        else:
            problems.append(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(p.resolve() for p in files))
    return unique, problems


def _folder_images(folder: Path, recursive: bool, suffixes: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """The files of `folder` with one of `suffixes` (of its subfolders too when `recursive`),
    sorted; a dataset folder's are those of its image folder."""
    if (folder / "panoptic.json").is_file() or any((folder / "annotations").glob("panoptic_*.json")):
        try:
            _, png_dir, image_dir = find_layout(folder)
        except (FileNotFoundError, ValueError):
            png_dir = image_dir = None
        if image_dir is not None:
            return _folder_images(image_dir, recursive, suffixes)
        if png_dir is not None:  # no image folder: anything but the annotation PNGs
            return [p for p in _folder_images_plain(folder, recursive, suffixes)
                    if not p.is_relative_to(png_dir)]
    return _folder_images_plain(folder, recursive, suffixes)


def _folder_images_plain(folder: Path, recursive: bool, suffixes: frozenset[str]) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found += [Path(root) / n for n in names
                  if not n.startswith(".") and Path(n).suffix.lower() in suffixes]
    return sorted(f for f in found if f.is_file())


def _no_images(folder: Path, recursive: bool, videos: bool) -> str:
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        return "empty folder, no images in it"
    sub = "" if recursive or not any(p.is_dir() for p in entries) else "; --recursive looks in its subfolders"
    if videos:
        return f"no image or video files in it (.jpg, .png, .tif, .webp, .mp4, .mov, ...){sub}"
    return f"no image files in it (.jpg, .png, .tif, .webp, ...){sub}"


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes: what a record names as its source."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _candidates(stem: str, suffix: str) -> Iterator[str]:
    yield stem
    yield f"{stem}_{suffix.lstrip('.').lower() or 'file'}"
    n = 2
    while True:
        yield f"{stem}_{n}"
        n += 1


def output_stems(files: Sequence[Path], digests: Sequence[str | None] | None = None,
                 owners: Mapping[str, str | None] | None = None, bases: Sequence[str] | None = None
                 ) -> list[str]:
    """<stem> per file, unique and deterministic: the first of <base>, <base>_<ext>, <base>_2,
    <base>_3, ... that no earlier file took and that no existing record (`owners`: stem ->
    the digest its record names, None when it names none) gives to another source.

    bases: the names to start from (default: each file's stem); digests: each file's.
    """
    owners = owners or {}
    stems: list[str] = []
    used: set[str] = set()
    for i, f in enumerate(files):
        digest = digests[i] if digests is not None else None
        for stem in _candidates(bases[i] if bases is not None else f.stem, f.suffix):
            if stem in used:
                continue
            if stem in owners and (owners[stem] is None or owners[stem] != digest):
                continue
            break
        used.add(stem)
        stems.append(stem)
    return stems


@dataclass(frozen=True)
class _Job:
    """One input's place in a run: its file, output name, source digest and dataset id."""

    file: Path
    stem: str
    digest: str
    image_id: int | None = None


def predict_files(
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    weights: str | os.PathLike[str] = "demo",
    settings: InferenceSettings | None = None,
    *,
    preset: str | None = None,
    device: str = "cpu",
    batch_size: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    predictor: Predictor | None = None,
    dataset: str | os.PathLike[str] | None = None,
    loader_workers: int = 0,
    recursive: bool = False,
    gather_outputs: bool = False,
    **given: Any,
) -> RunSummary:
    """Predict every image named by `inputs` into `out_dir`:
    <stem>.png (COCO panoptic), overlays/<stem>.png, records/<stem>.json (the image's entry
    with its source's SHA-256, written last: it marks the image done) and predictions.json
    (COCO panoptic, every record in the folder).

    An image whose record names the same source is skipped unless `overwrite`; one with
    outputs but no record (a killed run) is redone; a source whose name is taken by another
    source's record gets a name of its own (see `output_stems`). Files inside `out_dir` are
    not inputs; temporary files a killed run left there are removed.

    dataset: a COCO-panoptic dataset (root or JSON, see `data.coco_panoptic.find_layout`):
    its image ids and annotation file names are used, so the predictions pair with its
    ground truth; with no `inputs`, all its annotated images are predicted. recursive: folders
    give the images of their subfolders too (see `expand_inputs`).

    Problems are collected, one line each, in the summary; an output folder that cannot be
    written is `summary.error`. A weights problem raises `WeightsError`, a bad setting
    `SettingsError` and a bad dataset ValueError / FileNotFoundError before any image is read.

    settings / **given (threshold=, size=, ...): as `Predictor` takes them; or a ready
    `predictor` (its settings and batch size are used). loader_workers: processes decoding
    the images (0: this one; see `run_images`).

    Under torchrun (or in a process group set up by the caller, see `parallel`) every process
    calls this with the same arguments: the names are assigned from the whole input list by
    rank 0, each process predicts every world_size-th image still to do (on its own GPU, or
    its share of the CPU's cores), and rank 0 writes predictions.json from all the records.
    Every process returns the summary of the whole run. If a process dies, the others say so
    in `summary.error`; what was done is recorded, and a rerun (any number of processes) does
    the rest. gather_outputs (machines that share no file system; the inputs at the same
    paths on each): the other processes send their images' files to rank 0 as they are made
    (`parallel.Relay`, one image at a time) and only rank 0 touches `out_dir`.
    """
    dev = torch.device(device)  # a malformed name raises ValueError/RuntimeError here
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA device is available here; use --device cpu")
    out = Path(out_dir)
    summary = RunSummary(out_dir=out)
    entries = _dataset_entries(dataset) if dataset is not None else None
    if entries is not None and not inputs:
        files = [path for path, _, _ in entries.values()]
    else:
        files, summary.failed = expand_inputs(inputs, exclude=out, recursive=recursive)
    with process_group(dev) as group:
        dev = rank_device(dev, group)  # one device per process, the CPU's cores shared out
        if predictor is None:  # bad settings or weights fail before the output folder is made
            predictor = Predictor(weights, settings, preset=preset, device=dev, batch_size=batch_size,
                                  **given)
        files, summary.failed = broadcast_object((files, summary.failed), group)  # rank 0's list
        digests = _digests([f for f in files if entries is None or f.name in entries], group)
        plan = None
        if group.is_main:  # names from the whole list, before any process writes
            summary.error = _prepare_out_dir(out)
            if summary.error is None:
                plan = _todo(_plan(files, out, entries, summary.failed, digests), out, overwrite)
        summary.error, summary.failed, plan = broadcast_object((summary.error, summary.failed, plan), group)
        if plan is None:
            summary.not_run = [str(f) for f in files]
            return summary
        summary.skipped, todo = plan

        failed: list[str] = []
        received: list[str] = []  # rank 0, gather_outputs: the images of the others it wrote
        relay = None
        if gather_outputs and group.enabled:
            relay = Relay(group, lambda rank, files: _write_received(out, *files, received, failed))

        def write(job: _Job, image: np.ndarray, result: PanopticResult) -> None:
            if relay is None or group.is_main:
                save_result(result, image, job.file, job.stem, out, predictor.categories, digest=job.digest,
                            image_id=job.image_id)
            else:  # a ConnectionError (an OSError) when rank 0 is gone: this image fails, one line
                files = result_files(result, image, job.file, job.stem, predictor.categories,
                                     digest=job.digest, image_id=job.image_id)
                relay.send((str(job.file), files))

        desc = f"rank 0 of {group.world_size}" if group.enabled else None
        done = run_images(predictor, shard(todo, group), write, failed=failed,
                          progress=progress and group.is_main, desc=desc, loader_workers=loader_workers)
        if relay is not None:
            problem = relay.close()  # rank 0: every image sent is written
            if problem is not None and group.is_main:
                failed.append(f"{out}: {problem}")
            if not group.is_main:  # sent is not done: rank 0 says what it wrote
                done = []
        try:
            shares = all_gather_object(([str(f) for f in done] + received, failed), group)
        except RuntimeError as e:  # another process of the run died: what is done stays done
            summary.done, summary.failed = [str(f) for f in done], summary.failed + failed
            why = (str(e).splitlines() or [""])[0][:120]
            summary.error = (f"another process of this run stopped ({why}); "
                             f"the images finished are recorded in {out / RECORDS}: run the command again "
                             "(with any number of processes) to do the rest")
            return summary
        order = {str(f): i for i, (f, _) in enumerate(todo)}
        summary.done = sorted((d for share, _ in shares for d in share), key=order.__getitem__)
        summary.failed += [line for _, lines in shares for line in lines]
        if group.is_main:
            summary.error = _write_predictions(out, predictor.categories, summary.failed)
        summary.error, summary.failed = broadcast_object((summary.error, summary.failed), group)
    return summary


def _write_received(out: Path, file: str, files: list[tuple[str, bytes]], received: list[str],
                    failed: list[str]) -> None:
    """Rank 0 of a gather_outputs run: write another process's `files` of input `file` into
    `out` (as `save_result` would have there), or one line in `failed`."""
    try:
        for name, data in files:
            write_bytes_inside(out, name, data)
    except OSError as e:
        failed.append(f"{file}: could not write its results ({e})")
    else:
        received.append(file)


def _write_predictions(out: Path, categories: Categories, failed: list[str]) -> str | None:
    """out/predictions.json from every record in out; the problem as one line, or None."""
    target = out / "predictions.json"
    try:
        write_json(target, _predictions(out, categories, failed), indent=None)
    except OSError as e:
        return (f"{target}: could not write it ({_why(e)}); the records of every image done are "
                f"in {out / RECORDS}, a re-run writes it")
    return None


def _digests(files: Sequence[Path], group: DistInfo) -> dict[str, str | OSError]:
    """{path: its SHA-256, or the error reading it}; each process hashes its share."""
    mine: dict[str, str | OSError] = {}
    for f in shard(files, group):
        try:
            mine[str(f)] = file_digest(f)
        except OSError as e:
            mine[str(f)] = e
    return {k: v for share in all_gather_object(mine, group) for k, v in share.items()}


def _todo(jobs: list[_Job], out: Path, overwrite: bool) -> tuple[list[str], list[tuple[Path, _Job]]]:
    """(the inputs already done, skipped; the (file, job) pairs to run): an image is done when
    its record names the same source."""
    skipped, todo = [], []
    for job in jobs:
        record = _read_record(out / RECORDS / f"{job.stem}.json")
        if not overwrite and record is not None and _source(record) == job.digest:
            skipped.append(str(job.file))
        else:
            todo.append((job.file, job))
    return skipped, todo


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def _prepare_out_dir(out: Path) -> str | None:
    """Make `out` and check that files can be written in it; remove the temporary files a
    killed run left. Returns the problem as one line, or None."""
    if out.exists() and not out.is_dir():
        return f"{out}: is a file, not a folder; give --out a folder"
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"{out}: cannot write the results there ({_why(e)})"
    # atomic_write's .NAME.XXXXXXXX.tmp files: only a killed writer leaves one behind
    for folder in (out, out / RECORDS, out / OVERLAYS):
        for tmp in folder.glob(".*.tmp"):
            try:
                if tmp.is_file():
                    tmp.unlink()
            except OSError:
                pass
    return None


def _dataset_entries(dataset: str | os.PathLike[str]) -> dict[str, tuple[Path, int, str]]:
    """{image file name: (its path, image id, the stem of its annotation's PNG)} of the
    annotated images of a COCO-panoptic dataset."""
    json_path, _, image_dir = find_layout(dataset)
    if image_dir is None:
        raise FileNotFoundError(f"{dataset}: no image folder found (images/ or the split's folder)")
    try:
        doc = json.loads(json_path.read_text())
        images = {im["id"]: im["file_name"] for im in doc["images"]}
        anns = [(a["image_id"], a["file_name"]) for a in doc["annotations"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{json_path}: not a COCO panoptic JSON with images and annotations ({e})") from None
    entries = {}
    for image_id, png in anns:
        if image_id in images:
            name = Path(images[image_id]).name
            entries[name] = (image_dir / images[image_id], image_id, Path(png).stem)
    return entries


def _plan(files: list[Path], out: Path, entries: Mapping[str, tuple[Path, int, str]] | None,
          failed: list[str], hashed: Mapping[str, str | OSError]) -> list[_Job]:
    """The output name of every input, from the whole list and the records already in `out`
    (hashed: each file's SHA-256 or the error reading it, see `_digests`)."""
    kept, digests, bases, ids = [], [], [], []
    for f in files:
        entry = entries.get(f.name) if entries is not None else None
        if entries is not None and entry is None:
            failed.append(f"{f}: not an image of the dataset (no annotated image has this file name)")
            continue
        digest = hashed[str(f)]
        if isinstance(digest, FileNotFoundError):
            failed.append(f"{f}: no such file")
            continue
        if isinstance(digest, OSError):
            failed.append(f"{f}: cannot read: {_why(digest)}")
            continue
        kept.append(f)
        digests.append(digest)
        bases.append(entry[2] if entry is not None else f.stem)
        ids.append(entry[1] if entry is not None else None)
    by_path = {str(f): digest for f, digest in zip(kept, digests, strict=True)}
    owners = {}
    for path in sorted((out / RECORDS).glob("*.json")):
        record = _read_record(path)
        if record is not None:  # an unreadable record is as good as none: its image is redone
            # a record naming no source keeps its name for the file at its path (which redoes it)
            owners[path.stem] = _source(record) or by_path.get(str(record["image"].get("path")))
    stems = output_stems(kept, digests, owners, bases)
    return [_Job(f, stem, digest, image_id)
            for f, stem, digest, image_id in zip(kept, stems, digests, ids, strict=True)]


def _read_record(path: Path) -> dict[str, Any] | None:
    """A record, or None when it is missing or damaged."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("image"), dict)
            and isinstance(record.get("annotation"), dict)):
        return None
    return record


def _source(record: Mapping[str, Any]) -> str | None:
    source = record["image"].get("sha256")
    return source if isinstance(source, str) else None


def save_result(result: PanopticResult, image: np.ndarray, file: Path, stem: str, out: Path,
                categories: Categories, *, digest: str, image_id: int | None = None) -> None:
    """out/<stem>.png and out/overlays/<stem>.png, then out/records/<stem>.json, the image's
    COCO entry naming its source (`digest`, the file's SHA-256), whose presence marks the
    image as finished. Replaces what is there: the caller gave this source this name."""
    png, overlay_png, record = _result_names(stem)
    write_panoptic_png(out / png, result.id_map)
    write_png(out / overlay_png, _overlay_image(image, result, categories))
    write_json(out / record, _record(result, categories, file, stem, digest, image_id))


def result_files(result: PanopticResult, image: np.ndarray, file: Path, stem: str, categories: Categories,
                 *, digest: str, image_id: int | None = None) -> list[tuple[str, bytes]]:
    """The files `save_result` writes, as (path inside the output folder, bytes), the record
    last: what a process without the output folder sends to rank 0."""
    png, overlay_png, record = _result_names(stem)
    return [(png, panoptic_png_bytes(result.id_map)),
            (overlay_png, png_bytes(_overlay_image(image, result, categories))),
            (record, json_bytes(_record(result, categories, file, stem, digest, image_id)))]


def _result_names(stem: str) -> tuple[str, str, str]:
    """An image's panoptic PNG, overlay and record, inside the output folder."""
    return f"{stem}.png", f"{OVERLAYS}/{stem}.png", f"{RECORDS}/{stem}.json"


def _overlay_image(image: np.ndarray, result: PanopticResult, categories: Categories) -> np.ndarray:
    h, w = image.shape[:2]
    scale = OVERLAY_MAX_SIDE / max(h, w)
    if scale < 1:  # a picture to look at: no need for 100 megapixels of it
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        image = np.asarray(Image.fromarray(image).resize((sw, sh), Image.Resampling.BILINEAR))
        ys = torch.div(torch.arange(sh) * h, sh, rounding_mode="floor")
        xs = torch.div(torch.arange(sw) * w, sw, rounding_mode="floor")
        result = PanopticResult(result.id_map[ys[:, None], xs[None, :]], result.segments_info)
    return overlay(image, result, categories)


def segments_json(result: PanopticResult, categories: Categories) -> list[dict[str, Any]]:
    """The result's `segments_info` as predict writes them (records, predictions.json, serve),
    named by `categories`: `PanopticResult.coco_segments`."""
    return dataclasses.replace(result, categories=categories).coco_segments()


def _record(result: PanopticResult, categories: Categories, file: Path, stem: str, digest: str,
            image_id: int | None) -> dict[str, Any]:
    h, w = result.size
    segments = segments_json(result, categories)
    image = {"file_name": file.name, "path": str(file), "height": h, "width": w, "sha256": digest}
    if image_id is not None:
        image = {"id": image_id, **image}
    return {"image": image, "annotation": {"file_name": f"{stem}.png", "segments_info": segments}}


def _predictions(out: Path, categories: Categories, failed: list[str]) -> dict[str, Any]:
    """predictions.json of every record in out/records (sorted by name): a record's dataset
    image id where it has one not used by another, the others numbered after the largest.
    A damaged record gets a line in `failed` and is left out."""
    records = []
    for path in sorted((out / RECORDS).glob("*.json")):
        record = _read_record(path)
        if record is None:
            failed.append(f"{path}: damaged record (not a JSON record of this tool), left out of "
                          "predictions.json; delete it to predict its image again")
        else:
            records.append(record)
    given = [r["image"].get("id") for r in records]
    taken = {i for i in given if isinstance(i, int) and not isinstance(i, bool)}
    next_id = max(taken, default=0) + 1
    images, annotations, seen = [], [], set()
    for record, image_id in zip(records, given, strict=True):
        if image_id not in taken or image_id in seen:
            image_id, next_id = next_id, next_id + 1
        seen.add(image_id)
        images.append({**record["image"], "id": image_id})
        annotations.append({**record["annotation"], "image_id": image_id})
    return {"images": images, "annotations": annotations, "categories": categories.to_json()}


__all__ = ["IMAGE_EXTENSIONS", "ItemModel", "OVERLAYS", "OVERLAY_MAX_SIDE", "RECORDS", "RunSummary",
           "expand_inputs", "file_digest", "output_stems", "predict_files", "result_files", "run_images",
           "save_result", "segments_json"]
