"""`panoptic-detr train --config FILE.yaml [key=value ...] [--resume]` (see train/loop.py).

Many processes: `torchrun --nproc-per-node N -m panoptic_detr.train --config FILE.yaml ...`
(the same flags; see train/distributed.py for many machines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model as a YAML config says (from scratch, two stages, or fine-tuning)",
        description="Train as FILE.yaml says; KEY=VALUE pairs override it (dotted keys reach into "
        "sections, e.g. optim.lr=2e-4 model.preset=detr_r18_small). Writes checkpoints, "
        "metrics.jsonl and curves.png to out_dir.",
    )
    p.add_argument("--config", help="YAML training config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint_last.pt")
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint instead")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an out_dir that holds a run")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (overrides the config's device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import CheckpointError
    from ..data.images import ImageError
    from ..train.config import ConfigError, load_config
    from ..train.loop import TrainError, train

    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    try:
        cfg = load_config(args.config, overrides)
        resume = args.resume_from or args.resume
        metrics = train(cfg, resume=resume, overwrite=args.overwrite, progress=not args.no_progress)
    except (ConfigError, CheckpointError, TrainError, ImageError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: one summary, not one per process
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, str)}))
    return 0
