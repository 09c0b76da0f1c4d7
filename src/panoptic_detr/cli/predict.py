"""`panoptic-detr predict`: images, folders or globs in; COCO panoptic PNGs, overlays and
predictions.json out (see runner.predict_files)."""

from __future__ import annotations

import argparse
import sys

from .settings_flags import add_settings_flags, settings_kwargs
from .weights_flag import add_weights_flag, announce, resolve


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="panoptic segmentation of images into COCO panoptic files and overlays",
        description="Writes OUT/<stem>.png (COCO panoptic ids), OUT/overlays/<stem>.png, "
        "OUT/records/<stem>.json and OUT/predictions.json (every record in OUT). Images whose "
        "record in OUT names the same file content are skipped (re-run an interrupted run as it "
        "was); --overwrite redoes them. Another image whose name is taken in OUT gets a name of "
        "its own. With --dataset the dataset's image ids and file names are used, so evaluate "
        "pairs the predictions with its ground truth.",
    )
    p.add_argument("images", nargs="*", metavar="IMAGES",
                   help="image files, folders (their image files) or glob patterns (default with "
                        "--dataset: all its images)")
    p.add_argument("--recursive", action="store_true",
                   help="folders: also the images in their subfolders (a folder gives its image files: "
                        ".jpg, .png, .tif, .webp, ...; a dataset folder its images/)")
    p.add_argument("--dataset", metavar="DATASET", default=None,
                   help="COCO panoptic dataset root or its JSON: image ids and names from it")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_weights_flag(p)
    p.add_argument("--preset", default=None, help="architecture, when --weights is a file that does not say")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per batch (1); on a GPU one padded network batch, on a CPU run one by one")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    add_settings_flags(p)
    p.add_argument("--overwrite", action="store_true", help="redo images already done in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from ..runner import predict_files

    if not args.images and args.dataset is None:
        args._parser.error("give IMAGES (files, folders or globs) or --dataset")
    announce(args)
    try:
        summary = predict_files(
            args.images, args.out, weights=resolve(args), preset=args.preset, device=args.device,
            batch_size=args.batch_size, overwrite=args.overwrite, progress=not args.quiet,
            dataset=args.dataset, recursive=args.recursive, **settings_kwargs(args),
        )
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # settings, weights, device, dataset
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary.failed:
        print(f"error: {line}", file=sys.stderr)
    if summary.error is not None:
        print(f"error: {summary.error}", file=sys.stderr)
    print(summary.line())
    return 1 if summary.failed or summary.error else 0
