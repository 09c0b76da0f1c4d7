"""`panoptic-detr evaluate`: Panoptic Quality of prediction files, or of a model on a dataset
(see eval/evaluate.py and eval/evaluate_model.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="PQ / SQ / RQ of COCO-panoptic predictions, or of a model on a dataset",
        description="Files: --gt GT_JSON --pred PRED_JSON [--gt-dir DIR --pred-dir DIR] scores "
        "predictions with the COCO panoptic API's rules. Model: --weights W --data DATASET runs "
        "the model over the dataset, writes its predictions in COCO panoptic format to --out and "
        "scores them. Prints the PQ table; --output writes everything (per class too) as JSON.",
    )
    files = p.add_argument_group("prediction files")
    files.add_argument("--gt", metavar="GT_JSON", help="ground-truth COCO panoptic JSON")
    files.add_argument("--gt-dir", metavar="DIR", help="ground-truth PNGs (default: GT_JSON without .json)")
    files.add_argument("--pred", metavar="PRED_JSON", help="predictions COCO panoptic JSON")
    files.add_argument("--pred-dir", metavar="DIR", help="prediction PNGs (default: PRED_JSON without .json)")
    model = p.add_argument_group("a model on a dataset")
    model.add_argument("--weights", help="'demo', an original checkpoint name or a checkpoint path")
    model.add_argument("--preset", default=None, help="architecture, when --weights does not say")
    model.add_argument("--data", metavar="DATASET", help="COCO panoptic dataset root or its JSON")
    model.add_argument("--out", metavar="DIR", help="predictions and pq.json go here (runs/evaluate)")
    model.add_argument("--batch-size", type=int, default=1, help="images per network batch (1)")
    model.add_argument("--threshold", type=float, default=0.85, help="confidence to keep a query (0.85)")
    model.add_argument("--device", default="cpu", help="torch device (cpu)")
    model.add_argument("--size", type=int, default=800, help="shortest side fed to the network (800)")
    model.add_argument("--max-size", type=int, default=1333, help="longest side cap (1333)")
    p.add_argument("--output", metavar="FILE.json", help="write the results as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output / predictions")
    p.add_argument("--workers", type=int, default=2, help="processes decoding and scoring PNGs (2)")
    p.add_argument("--per-class", action="store_true", help="also print a row per class")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from ..eval.evaluate import EvaluationError, evaluate_files, format_table

    model_mode = args.weights is not None or args.data is not None
    if model_mode and (args.gt or args.pred):
        args._parser.error("give either --gt/--pred (prediction files) or --weights/--data (a model)")
    if model_mode and not (args.weights and args.data):
        args._parser.error("a model evaluation needs both --weights and --data")
    if not model_mode and not (args.gt and args.pred):
        args._parser.error("give --gt and --pred (prediction files), or --weights and --data (a model)")
    output = Path(args.output) if args.output else None
    if model_mode and output is None:
        output = Path(args.out or "runs/evaluate") / "pq.json"
    if output is not None and output.exists() and not args.overwrite:
        print(f"error: {output}: exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    try:
        if model_mode:
            results = _evaluate_model(args)
        else:
            results = evaluate_files(args.gt, args.gt_dir, args.pred, args.pred_dir, workers=args.workers,
                                     progress=not args.quiet)
    except EvaluationError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        print(f"{len(e.problems)} problem(s); no score", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(results, results.get("categories"), per_class=args.per_class))
    if output is not None:
        from ..data.files import write_json

        write_json(output, results, overwrite=True, indent=1)
        print(f"results written to {output}")
    return 0


def _evaluate_model(args: argparse.Namespace) -> dict:
    from ..data.coco_panoptic import find_layout
    from ..eval.evaluate_model import evaluate_model
    from ..predictor import Predictor, WeightsError

    find_layout(args.data)  # a wrong dataset path fails before the model loads
    try:
        predictor = Predictor(args.weights, preset=args.preset, threshold=args.threshold, device=args.device,
                              size=args.size, max_size=args.max_size, batch_size=args.batch_size)
    except WeightsError as e:
        raise ValueError(str(e)) from None
    return evaluate_model(predictor, args.data, args.out or "runs/evaluate", workers=args.workers,
                          overwrite=args.overwrite, progress=not args.quiet)
