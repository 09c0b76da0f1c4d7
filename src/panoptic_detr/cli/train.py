"""`panoptic-detr train --config FILE.yaml [key=value ...] [--resume]` (see train/loop.py).

Many processes: `torchrun --nproc-per-node N -m panoptic_detr.train --config FILE.yaml ...`
(the same flags; see train/distributed.py for many machines).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import add_quiet_flag, check_device
from .weights_flag import announce_training


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a model as a YAML config says (from scratch, two stages, or fine-tuning)",
        description="Train as FILE.yaml says; KEY=VALUE pairs override it (dotted keys reach into "
        "sections, e.g. optim.lr=2e-4 model.preset=detr_r18_small). Writes checkpoints, "
        "metrics.jsonl and curves.png to out_dir.",
    )
    p.add_argument("--config", metavar="FILE.yaml", help="YAML training config (see configs/); required")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint_last.pt")
    p.add_argument("--resume-from", metavar="CHECKPOINT", help="continue from this checkpoint instead")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an out_dir that holds a run")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (overrides the config's device)")
    add_quiet_flag(p, "--no-progress")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config is None:
        print("error: train needs --config FILE.yaml (examples in configs/; KEY=VALUE pairs then "
              "override it)", file=sys.stderr)
        return 2
    from ..checkpoint import LAST
    from ..train.config import load_config, model_config  # errors: one line each, from cli.main
    from ..train.loop import train

    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    cfg = load_config(args.config, overrides)
    if not args.device:
        check_device(cfg.device)
    resume = args.resume_from or (os.path.join(cfg.out_dir, LAST) if args.resume else None)
    if int(os.environ.get("RANK", "0")) == 0:
        announce_training(cfg.init, resume, model_config(cfg).pretrained_backbone)
    metrics = train(cfg, resume=args.resume_from or args.resume, overwrite=args.overwrite,
                    progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun: one summary, not one per process
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, str)}))
    return 0
