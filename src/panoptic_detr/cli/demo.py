"""`panoptic-detr demo [IMAGES...] [--out DIR] [--train]` (see demo.py)."""

from __future__ import annotations

import argparse
import sys

from .settings_flags import add_settings_flags, settings_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="segment bundled scenes (and IMAGES) with the bundled checkpoint and print PQ",
        description="No download needed: segments the bundled synthetic scenes and any IMAGES with "
        "the bundled checkpoint, writes overlays and COCO-panoptic files to --out, and prints PQ "
        "on a bundled validation set. --train first reproduces the checkpoint live.",
    )
    p.add_argument("images", nargs="*", help="more images, folders or globs to segment")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--weights", default="demo", help="checkpoint to use instead of the bundled one")
    p.add_argument("--train", action="store_true", help="train the demo checkpoint first (minutes)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    add_settings_flags(p.add_argument_group("inference settings"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..loading import WeightsError
    from ..settings import SettingsError

    try:
        result = run_demo(args.images, args.out, weights=args.weights, train=args.train,
                          device=args.device, progress=not args.no_progress, **settings_kwargs(args))
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 1 if result.failed else 0
