"""Starting a run from existing weights: a project checkpoint, an original DETR checkpoint file
(`{"model": state_dict}`, original or Hugging Face names), or an original preset name.

Fine-tuning on a dataset with other categories re-initialises the class head (its rows index
category ids) and keeps every other tensor whose name and shape fit; `init_from` returns the
report of what was kept, re-initialised and left unused, which the loop writes to
OUT/init_report.json and prints.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .. import checkpoint as ckpt_io
from ..checkpoint import CheckpointError

CLASS_HEAD_PREFIX = "class_embed."


def read_weights(init: str) -> dict[str, Tensor]:
    """The state dict (this model's names) that `init` designates: a checkpoint file of any
    kind `checkpoint.interpret` takes, or the name of a published checkpoint."""
    path = Path(init)
    if path.is_file():
        return ckpt_io.read_weights(path).state_dict
    if path.suffix in (".pt", ".pth") or "/" in init:
        raise CheckpointError(f"{path}: checkpoint not found")
    from ..loading import load_pretrained  # a preset name: download + hash check + cache

    return load_pretrained(init).model.state_dict()


def transfer_weights(
    model: nn.Module, source: dict[str, Tensor], reinit_class_head: bool
) -> dict[str, list[str]]:
    """Copy into `model` every tensor of `source` with the same name and shape (the class head
    excepted when `reinit_class_head`). Returns {"kept", "reinitialised", "unused"} names."""
    own = model.state_dict()
    kept, reinit = [], []
    for name, tensor in own.items():
        src = source.get(name)
        fresh_head = reinit_class_head and name.startswith(CLASS_HEAD_PREFIX)
        if src is None or src.shape != tensor.shape or fresh_head:
            reinit.append(name)
            continue
        with torch.no_grad():
            tensor.copy_(src)
        kept.append(name)
    unused = sorted(set(source) - set(own))
    return {"kept": kept, "reinitialised": reinit, "unused": unused}


def init_from(model: nn.Module, init: str, reinit_class_head: bool) -> dict[str, list[str]]:
    """Load `init` into `model` (see `transfer_weights`); raises if nothing at all fits."""
    report = transfer_weights(model, read_weights(init), reinit_class_head)
    if not report["kept"]:
        raise CheckpointError(f"{init}: no tensor fits the model (checkpoint of another architecture)")
    return report


def summary(report: dict[str, list[str]]) -> str:
    """One line for the log."""
    shown = ", ".join(report["reinitialised"][:6]) + (" ..." if len(report["reinitialised"]) > 6 else "")
    return (f"kept {len(report['kept'])} tensors, re-initialised {len(report['reinitialised'])}"
            f"{' (' + shown + ')' if shown else ''}, unused {len(report['unused'])}")
