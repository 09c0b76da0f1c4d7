"""`panoptic-detr predict`: images, folders or globs in; COCO panoptic PNGs, overlays and
predictions.json out (see runner.predict_files); videos in, an overlay video, PNGs and a JSON
out (see video.predict_video)."""

from __future__ import annotations

import argparse
import sys

from . import whole_number
from .parallel_flags import add_parallel_flags
from .settings_flags import add_settings_flags, settings_kwargs
from .weights_flag import add_weights_flag, announce, resolve


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="panoptic segmentation of images or videos into COCO panoptic files and overlays",
        description="Writes OUT/<stem>.png (COCO panoptic ids), OUT/overlays/<stem>.png, "
        "OUT/records/<stem>.json and OUT/predictions.json (every record in OUT). Images whose "
        "record in OUT names the same file content are skipped (re-run an interrupted run as it "
        "was); --overwrite redoes them. Another image whose name is taken in OUT gets a name of "
        "its own. With --dataset the dataset's image ids and file names are used, so evaluate "
        "pairs the predictions with its ground truth. Under torchrun (torchrun --nproc-per-node N -m "
        "panoptic_detr predict ...) each process predicts its share of the images and rank 0 "
        "writes predictions.json; with --gather-outputs only rank 0 writes OUT "
        "(docs/distributed_inference.md). A video (.mp4, .mov, .avi, .mkv, "
        ".webm, ...; the 'video' extra, PyAV) gives OUT/<stem>.mp4 (overlays), "
        "OUT/<stem>/<stem>_<frame>.png and OUT/<stem>.json, whether named, in a folder or "
        "matched by a glob.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGES",
                   help="image or video files, folders (their image and video files) or glob "
                        "patterns (default with --dataset: all its images)")
    p.add_argument("--recursive", action="store_true",
                   help="folders: also the files in their subfolders (a folder gives its image files: "
                        ".jpg, .png, .tif, .webp, ..., and videos: .mp4, .mov, ...; a dataset folder "
                        "its images/)")
    p.add_argument("--dataset", metavar="DATASET", default=None,
                   help="COCO panoptic dataset root or its JSON: image ids and names from it")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_weights_flag(p)
    p.add_argument("--preset", default=None, help="architecture, when --weights is a file that does not say")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per batch (1); on a GPU one padded network batch, on a CPU run one by one")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    add_parallel_flags(p)
    add_settings_flags(p)
    p.add_argument("--every", type=whole_number(1), default=1, metavar="N",
                   help="videos: predict every N-th frame (default 1: all)")
    p.add_argument("--overwrite", action="store_true", help="redo images already done in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from ..parallel import dist_info
    from ..runner import expand_inputs, predict_files
    from ..video import VIDEO_EXTENSIONS, is_video

    if not args.images and args.dataset is None:
        args._parser.error("give IMAGES (files, folders or globs) or --dataset")
    # videos named, in folders or matched by globs are predicted as videos, the rest as images
    found, problems = expand_inputs(args.images, exclude=args.out, recursive=args.recursive,
                                    videos=VIDEO_EXTENSIONS)
    if not found and args.dataset is None:  # every input named nothing: say so before a model loads
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 1
    videos = [str(f) for f in found if is_video(f)]
    images = [f for f in found if not is_video(f)]
    announce(args)
    predictor, code = None, 0
    try:
        if videos:  # one model for the videos and the images
            from ..predictor import Predictor

            predictor = Predictor(resolve(args), preset=args.preset, device=args.device,
                                  batch_size=args.batch_size, **settings_kwargs(args))
            code = _videos(args, predictor, videos)
        # no images left: nothing more to run (with --dataset, no IMAGES means all its images)
        if not images and (args.images and args.dataset is not None or videos and not problems):
            for line in problems:
                print(f"error: {line}", file=sys.stderr)
            return 1 if problems or code else 0
        summary = predict_files(
            images, args.out, weights=resolve(args), preset=args.preset, device=args.device,
            batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.quiet,
            dataset=args.dataset, recursive=args.recursive, predictor=predictor,
            loader_workers=args.loader_workers or 0, gather_outputs=args.gather_outputs,
            **settings_kwargs(args),
        )
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # settings, weights, device, dataset
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary.failed[:0] = problems  # the inputs that named nothing, as predict_files reports them
    code = 1 if summary.failed or summary.error or code else 0
    rank = dist_info().rank
    if rank != 0:  # under torchrun rank 0 reports for every process; another only why it stopped
        if summary.error is not None:
            print(f"error: rank {rank}: {summary.error}", file=sys.stderr)
        return code
    for line in summary.failed:
        print(f"error: {line}", file=sys.stderr)
    if summary.error is not None:
        print(f"error: {summary.error}", file=sys.stderr)
    print(summary.line())
    return code


def _videos(args: argparse.Namespace, predictor, videos: list[str]) -> int:
    """Each video into OUT (see video.predict_video); one line per video that fails."""
    from ..video import VideoError, predict_video

    failed = 0
    for video in videos:
        try:
            done = predict_video(predictor, video, args.out, every=args.every, overwrite=args.overwrite,
                                 progress=not args.quiet)
        except (VideoError, FileExistsError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        if done.problem is not None:
            print(f"error: {done.problem}; the {len(done.frames)} frames before it are written",
                  file=sys.stderr)
            failed += 1
        print(f"{video}: {len(done.frames)} frames predicted; {done.video}, {done.json}, PNGs in "
              f"{done.video.with_suffix('')}")
    return 1 if failed else 0
