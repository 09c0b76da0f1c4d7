"""`panoptic-detr synth`: write a synthetic COCO-panoptic dataset (see data/synth.py)."""

from __future__ import annotations

import argparse

from . import add_quiet_flag, probability, whole_number


def _size(text: str) -> tuple[int, int]:
    """'WxH' -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 256x256, not {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"size {text} is too small (at least 16x16)")
    return h, w


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic COCO-panoptic dataset of textured stuff and shaped things",
        description="Write DIR/images/*.jpg, DIR/panoptic/*.png and DIR/panoptic.json. "
        "Scenes are deterministic for (seed, index): use different seeds for train and val.",
    )
    p.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    p.add_argument("--n", type=whole_number(1), required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--size", type=_size, default=(256, 256), metavar="WxH",
                   help="image size (default 256x256)")
    p.add_argument("--crowd-prob", type=probability, default=0.0, metavar="P",
                   help="probability that an image gets a crowd region (default 0)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    add_quiet_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.synth import make_dataset

    path = make_dataset(args.out, args.n, args.seed, args.size, crowd_prob=args.crowd_prob,
                        overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {args.n} images to {path.parent} ({path.name})")
    return 0
