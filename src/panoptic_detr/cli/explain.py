"""`panoptic-detr explain`: an HTML report and PNG sheets of how the model segmented one image."""

from __future__ import annotations

import argparse
import sys

from . import whole_number
from .settings_flags import add_settings_flags, settings_kwargs
from .weights_flag import add_weights_flag, announce, resolve


def _segments(text: str) -> str | list[int]:
    """'all' or comma-separated segment ids."""
    if text.strip().lower() == "all":
        return "all"
    try:
        ids = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--segments takes 'all' or ids like 1,3,4, not {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("--segments needs at least one id (or 'all')")
    return ids


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="explain a prediction: attention maps, mask logits, kept and dropped queries",
        description="Run the model once on IMAGE and write DIR/report.html (self-contained, opens "
        "offline), DIR/sheet.png, DIR/overview.png, DIR/path.png, DIR/segments/segment_<id>.png "
        "and DIR/queries.json: each segment's box, per-head attention maps, mask logits and "
        "final pixels, and why every other query was dropped.",
    )
    p.add_argument("image", help="image file (any format Pillow reads)")
    add_weights_flag(p)
    p.add_argument("--preset", default=None, help="architecture for checkpoints that do not record one")
    p.add_argument("--segments", type=_segments, default="all", metavar="all|IDS",
                   help="segments to explain: 'all' (default) or ids like 1,3")
    p.add_argument("--path-segment", type=int, default=None, metavar="ID",
                   help="segment of the path figure (default: the most confident one)")
    p.add_argument("--near-misses", type=whole_number(0), default=3, metavar="N",
                   help="also show the masks of the N dropped queries with the best class scores (default 3)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_settings_flags(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.images import ImageError
    from ..explain import explain
    from ..explain.report import check_out_dir, write_report
    from ..predictor import Predictor

    if args.runtime not in (None, "torch"):  # the attention maps are the torch model's
        print(f"error: explain runs the torch model only (--runtime torch), not {args.runtime}",
              file=sys.stderr)
        return 2
    try:
        check_out_dir(args.out, args.overwrite)
        announce(args)
        predictor = Predictor(resolve(args), preset=args.preset, device=args.device, **settings_kwargs(args))
    except (FileExistsError, ValueError) as e:  # settings, weights or the output folder: nothing ran
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        expl = explain(predictor, args.image, top_dropped=args.near_misses)
        files = write_report(expl, args.out, segments=args.segments, path_segment=args.path_segment,
                             overwrite=args.overwrite)
    except (ImageError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    kept, dropped = len(expl.result.segments_info), len(expl.dropped())
    print(f"wrote {files.html}: {kept} segment{'s' * (kept != 1)}, {dropped} dropped queries")
    return 0
