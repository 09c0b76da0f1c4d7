"""`panoptic-detr evaluate`: Panoptic Quality of prediction files, or of a model on a dataset
(see eval/evaluate_model.py:run_evaluation)."""

from __future__ import annotations

import argparse
import sys

from . import whole_number
from .parallel_flags import add_parallel_flags
from .settings_flags import add_settings_flags, settings_kwargs
from .weights_flag import add_weights_flag, announce, resolve


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="PQ / SQ / RQ of COCO-panoptic predictions, or of a model on a dataset",
        description="Files: --gt GT_JSON --pred PRED_JSON [--gt-dir DIR --pred-dir DIR] scores "
        "predictions with the COCO panoptic API's rules; a prediction is paired with the ground-truth "
        "image of its id when their file names agree, else with the image of its file name. "
        "Model: --data DATASET [--weights W, default demo] runs the model over the dataset as "
        "predict runs it, writes its predictions in COCO panoptic format to --out and scores them. "
        "Prints the PQ table; --output writes everything (per class too) as JSON. A model evaluation "
        "runs under torchrun too: each process predicts and scores its share of the images, rank 0 "
        "reports; with --gather-outputs only rank 0 writes --out (docs/distributed_inference.md).",
    )
    files = p.add_argument_group("prediction files")
    files.add_argument("--gt", metavar="GT_JSON", help="ground-truth COCO panoptic JSON")
    files.add_argument("--gt-dir", metavar="DIR",
                       help="ground-truth PNGs (default: GT_JSON without .json, else its folder)")
    files.add_argument("--pred", metavar="PRED_JSON", help="predictions COCO panoptic JSON")
    files.add_argument("--pred-dir", metavar="DIR",
                       help="prediction PNGs (default: PRED_JSON without .json, else its folder)")
    model = p.add_argument_group("a model on a dataset")
    add_weights_flag(model)
    model.add_argument("--preset", default=None, help="architecture, when --weights does not say")
    model.add_argument("--data", metavar="DATASET", help="COCO panoptic dataset root or its JSON")
    model.add_argument("--out", metavar="DIR", help="predictions and pq.json go here (runs/evaluate)")
    model.add_argument("--batch-size", type=int, default=1, help="images per network batch (1)")
    model.add_argument("--device", default="cpu", help="torch device (cpu)")
    add_parallel_flags(model)
    add_settings_flags(model)
    p.add_argument("--output", metavar="FILE.json",
                   help="write the results as JSON (a model's: default OUT/pq.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output / predictions")
    p.add_argument("--workers", type=whole_number(0), default=2,
                   help="processes decoding and scoring PNGs (default 2; 0: in this process)")
    p.add_argument("--per-class", action="store_true", help="also print a row per class")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, _parser=p)


def run(args: argparse.Namespace) -> int:
    from ..eval.evaluate import EvaluationError, format_table
    from ..eval.evaluate_model import UsageError, run_evaluation
    from ..parallel import dist_info

    main_process = dist_info().is_main  # under torchrun rank 0 reports for every process

    weights = args.weights
    if args.data is not None:  # a model evaluation: --weights, else the demo model
        announce(args)
        weights = resolve(args)
    try:
        results, output = run_evaluation(
            gt=args.gt, gt_dir=args.gt_dir, pred=args.pred, pred_dir=args.pred_dir, weights=weights,
            data=args.data, out=args.out, output=args.output, preset=args.preset, device=args.device,
            batch_size=args.batch_size, workers=args.workers, loader_workers=args.loader_workers,
            gather_outputs=args.gather_outputs,
            overwrite=args.overwrite, progress=not args.quiet, **settings_kwargs(args))
    except UsageError as e:
        args._parser.error(str(e))
    except EvaluationError as e:
        if not main_process:
            return 1
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        print(f"{len(e.problems)} problem(s); no score", file=sys.stderr)
        return 1
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not main_process:
        return 0
    if results.get("repaired"):
        print(f"note: {results['repaired']} prediction(s) paired with their ground-truth image by file name: "
              "their image ids are not the ground truth's", file=sys.stderr)
    print(format_table(results, results.get("categories"), per_class=args.per_class))
    if output is not None:
        print(f"results written to {output}")
    return 0
