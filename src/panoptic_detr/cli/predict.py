"""`panoptic-detr predict`: images, folders or globs in; COCO panoptic PNGs, overlays and
predictions.json out (see predictor.predict_files)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="panoptic segmentation of images into COCO panoptic files and overlays",
        description="Writes OUT/<stem>.png (COCO panoptic ids), OUT/<stem>_overlay.png, "
        "OUT/records/<stem>.json and OUT/predictions.json. Images already done in OUT are "
        "skipped (re-run an interrupted run as it was); --overwrite redoes them.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--weights", default="demo",
                   help="'demo', an original checkpoint name (detr_r50_panoptic, ...) or a .pth path")
    p.add_argument("--preset", default=None, help="architecture, when --weights is a file that does not say")
    p.add_argument("--threshold", type=float, default=None,
                   help="class confidence to keep a query (the checkpoint's advice, else 0.85)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per batch (1); on a GPU one padded network batch, on a CPU run one by one")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    p.add_argument("--size", type=int, default=None,
                   help="shortest side fed to the network (the checkpoint's advice, else 800)")
    p.add_argument("--max-size", type=int, default=None, help="longest side cap (advice, else 1333)")
    p.add_argument("--stuff-merge", choices=("original", "union"), default="original",
                   help="duplicated stuff: 'original' reproduces DETR (extra queries of a stuff class "
                        "dropped, their pixels to the next best query); 'union' merges them")
    p.add_argument("--overwrite", action="store_true", help="redo images whose outputs exist")
    p.add_argument("--no-prepare", action="store_true",
                   help="run the model as loaded: no BN folding or channels-last (slower; scores "
                        "equal to the Python API's default to the last digit)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="network precision: bfloat16 is ~2x faster on CPUs with AVX512-BF16/AMX, "
                        "with bfloat16-rounded scores and masks (float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..predictor import WeightsError, predict_files

    try:
        summary = predict_files(
            args.images, args.out, weights=args.weights, preset=args.preset, threshold=args.threshold,
            batch_size=args.batch_size, device=args.device, size=args.size, max_size=args.max_size,
            overwrite=args.overwrite, progress=not args.quiet, prepare=not args.no_prepare,
            stuff_merge=args.stuff_merge, dtype=args.dtype,
        )
    except (WeightsError, ValueError, RuntimeError) as e:  # weights or device: nothing ran yet
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summary.failed:
        print(f"error: {line}", file=sys.stderr)
    print(summary.line())
    return 1 if summary.failed else 0
