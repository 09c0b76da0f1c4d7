"""`panoptic-detr check DATASET`: list every problem of a COCO-panoptic dataset (data/check.py)."""

from __future__ import annotations

import argparse
import sys

from . import add_quiet_flag, whole_number


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "check",
        help="validate a COCO-panoptic dataset and list every problem",
        description="Check images, panoptic PNGs and the JSON against each other; print one line "
        "per problem (file, segment, what is wrong) and a summary; exit 1 if any.",
    )
    p.add_argument("dataset", nargs="?", help="dataset folder or its JSON (layouts: see CocoPanoptic)")
    p.add_argument("--json", dest="json_path", help="panoptic JSON (overrides the layout)")
    p.add_argument("--png-dir", help="folder of panoptic PNGs (overrides the layout)")
    p.add_argument("--image-dir", help="folder of images (overrides the layout)")
    p.add_argument("--no-decode", action="store_true",
                   help="read image headers only (faster; misses corrupt image data)")
    p.add_argument("--workers", type=whole_number(1), default=1,
                   help="processes for the per-image checks (default 1)")
    add_quiet_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.check import check_dataset

    if args.dataset is None and args.json_path is None:
        print("error: give a DATASET or --json", file=sys.stderr)
        return 2
    problems, stats = check_dataset(args.dataset, json_path=args.json_path, png_dir=args.png_dir,
                                    image_dir=args.image_dir, decode_images=not args.no_decode,
                                    workers=args.workers, progress=not args.quiet)
    for p in problems:
        print(p)
    files = len({p.file for p in problems})
    where = args.dataset or args.json_path
    if problems:
        print(f"{where}: {len(problems)} problems in {files} files "
              f"({stats['images']} images, {stats['segments']} segments checked)")
        return 1
    print(f"{where}: ok ({stats['images']} images, {stats['segments']} segments)")
    return 0
