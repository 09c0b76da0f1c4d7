"""`panoptic-detr demo [IMAGES...] [--out DIR] [--train]` (see demo.py)."""

from __future__ import annotations

import argparse

from . import add_quiet_flag
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
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    add_quiet_flag(p, "--no-progress")
    add_settings_flags(p.add_argument_group("inference settings"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    result = run_demo(args.images, args.out, weights=args.weights, train=args.train, device=args.device,
                      progress=not args.quiet, **settings_kwargs(args))
    return 1 if result.failed else 0
