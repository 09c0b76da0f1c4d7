"""`panoptic-detr convert`: panoptic <-> semantic PNGs / COCO instances."""

from __future__ import annotations

import argparse
import sys

from . import add_quiet_flag, whole_number


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert between panoptic, semantic and instance datasets")
    sub = p.add_subparsers(dest="conversion", metavar="CONVERSION", required=True)

    s = sub.add_parser("panoptic-to-semantic", help="one class id per pixel (void 255) + labelmap.json")
    s.add_argument("--panoptic", required=True, metavar="JSON", help="COCO panoptic JSON")
    s.add_argument("--png-dir", metavar="DIR", help="its PNG folder (default: JSON path without .json)")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--stuff-only", action="store_true", help="leave thing pixels void")
    s.add_argument("--overwrite", action="store_true")
    add_quiet_flag(s)
    s.set_defaults(func=_semantic)

    s = sub.add_parser("panoptic-to-instances", help="COCO instances (RLE) of the things")
    s.add_argument("--panoptic", required=True, metavar="JSON")
    s.add_argument("--png-dir", metavar="DIR")
    s.add_argument("--out", required=True, metavar="FILE.json")
    s.add_argument("--with-stuff", action="store_true", help="export stuff segments too")
    s.add_argument("--overwrite", action="store_true")
    add_quiet_flag(s)
    s.set_defaults(func=_instances)

    s = sub.add_parser("instances-to-panoptic", help="resolve overlapping instances into panoptic PNGs")
    s.add_argument("--instances", required=True, metavar="ANN.json")
    s.add_argument("--images", required=True, metavar="DIR")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--order", choices=["area", "annotation"], default="area")
    s.add_argument("--min-area", type=whole_number(0), default=None, metavar="N", help="(default 16)")
    s.add_argument("--overwrite", action="store_true")
    add_quiet_flag(s)
    s.add_argument("--workers", type=whole_number(1), default=1, metavar="N")
    s.set_defaults(func=_to_panoptic)


def _semantic(args: argparse.Namespace) -> int:
    from ..gt.convert import panoptic_to_semantic_files

    try:
        done, failed = panoptic_to_semantic_files(args.panoptic, args.out, args.png_dir,
                                                  things=not args.stuff_only, overwrite=args.overwrite,
                                                  progress=not args.quiet)
    except (OSError, ValueError, KeyError) as e:
        print(f"{args.panoptic}: {e}", file=sys.stderr)
        return 1
    print(f"{done} semantic PNG(s) written to {args.out}, {failed} failed")
    return 1 if failed else 0


def _instances(args: argparse.Namespace) -> int:
    from ..gt.convert import panoptic_to_instances_file

    try:
        n, failed = panoptic_to_instances_file(args.panoptic, args.out, args.png_dir,
                                               things_only=not args.with_stuff, overwrite=args.overwrite,
                                               progress=not args.quiet)
    except (OSError, ValueError, KeyError) as e:
        print(f"{args.panoptic}: {e}", file=sys.stderr)
        return 1
    print(f"{n} annotation(s) written to {args.out}, {failed} image(s) failed")
    return 1 if failed else 0


def _to_panoptic(args: argparse.Namespace) -> int:
    from ..gt import DEFAULT_MIN_AREA, BuildError, build_gt, format_summary

    if args.min_area is None:
        args.min_area = DEFAULT_MIN_AREA
    try:
        report = build_gt(args.instances, args.images, args.out, order=args.order, min_area=args.min_area,
                          overwrite=args.overwrite, workers=args.workers, previews=False,
                          progress=not args.quiet)
    except BuildError as e:
        print(e, file=sys.stderr)
        return 1
    print(format_summary(report))
    return 1 if report["images"]["failed"] else 0
