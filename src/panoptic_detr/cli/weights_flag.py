"""--weights, worded once for every command that runs a model, and the line that says which
weights run: a photo segmented by the synthetic demo model without a word is the trap this
closes (`announce` prints before anything loads, so a failing load still shows what was tried).
"""

from __future__ import annotations

import argparse

DEFAULT = "demo"
COCO_HINT = ("for photos: --weights detr_r50_panoptic (COCO panoptic, downloaded once), "
             "detr_r101_panoptic, detr_r50_dc5_panoptic or a checkpoint path")


def add_weights_flag(group: argparse._ActionsContainer, default: str | None = None) -> None:
    """--weights WEIGHTS; default None means "not given": `resolve` then uses the demo model and
    `announce` says so."""
    group.add_argument(
        "--weights", default=default, metavar="WEIGHTS",
        help="'demo' (the bundled model for synthetic shapes, not photos), an original COCO checkpoint "
             "name (detr_r50_panoptic, detr_r50_dc5_panoptic, detr_r101_panoptic: downloaded once) or a "
             "checkpoint path (default: demo)")


def resolve(args: argparse.Namespace) -> str:
    """The weights to run: --weights, else the demo model."""
    return args.weights if args.weights is not None else DEFAULT


def describe(weights: str) -> str:
    """One line naming the weights: what they are and where they come from (nothing loads)."""
    from ..loading import demo_path
    from ..model.weights import WEIGHTS

    if weights == DEFAULT:
        return f"demo, the bundled synthetic demo model ({demo_path()})"
    record = WEIGHTS.get(weights)
    if record is not None:
        pq = f", PQ {record.pq:g} on COCO val2017" if record.pq else ""
        return f"{weights} (COCO panoptic{pq}, {record.url})"
    return weights


def announce(args: argparse.Namespace) -> None:
    """Print which weights the command runs, with the hint for photos when none were given; a
    bad setting is refused first (SettingsError), so a usage error is only its own line."""
    from ..settings import check_settings
    from .settings_flags import settings_kwargs

    check_settings(settings_kwargs(args))
    if args.weights is None:
        print(f"weights: demo, the bundled synthetic demo model, as no --weights was given; {COCO_HINT}")
    else:
        print(f"weights: {describe(args.weights)}")


def announce_training(init: str, resume: str | None, pretrained_backbone: bool) -> None:
    """Print the weights a training run starts from: resume: the checkpoint it continues (None
    when it starts afresh); init: the config's `init` ("" = none)."""
    if resume is not None:
        print(f"weights: resuming {resume} (its model, optimiser and step)")
    elif init:
        print(f"weights: {describe(init)}, as init= says")
    else:
        backbone = ("the backbone from torchvision's ImageNet weights" if pretrained_backbone
                    else "no pretrained part")
        print(f"weights: none, random initialisation ({backbone}); init=WEIGHTS starts from a checkpoint")
