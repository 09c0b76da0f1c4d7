"""Checkpoint files: the project's format, the one set of rules for reading any checkpoint, and
atomic saving. Weights for prediction (`loading`), resuming a run and fine-tuning from a file
(`train/`) are all read through `read` and told apart by `interpret`.

Project format ("panoptic-detr/1"), loadable with `torch.load(weights_only=True)`:
    {"format": "panoptic-detr/1", "config": DETRConfig as a dict, "categories": [COCO category
     dicts], "model": state_dict, "inference": optional dict (settings the weights were validated
     with), "train_state": optional dict (optimizer, scheduler, step, epoch, position in the
     epoch, RNG states, best_pq, ...)}
Read as weights too: an original DETR checkpoint (`{"model": state_dict, "args": Namespace,
"optimizer": ..., "epoch": ...}`, as DETR's main.py writes) and a bare state dict, each in the
original or the Hugging Face names.

A run keeps two files in its output folder: `checkpoint_last.pt` (resume from here) and
`checkpoint_best.pt` (best validation PQ so far). A failed write (disk full, ...) leaves the
previous file untouched: the new one goes to a temporary file that is renamed only once complete.
"""

from __future__ import annotations

import argparse
import errno
import io
import pickle
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .data.files import atomic_write
from .model.weights import to_model_layout

FORMAT = "panoptic-detr/1"
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"

SAFE_GLOBALS = (argparse.Namespace,)
"""What a checkpoint may hold beyond tensors and plain containers: the argparse options DETR's
training script stores next to its weights (plain values, rebuilt without running code)."""

KINDS = "a panoptic-detr checkpoint, an original DETR checkpoint ({'model': state_dict}) or a state dict"
"""The kinds of file `interpret` takes, for messages."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, read, or used (one line naming the file)."""


@dataclass
class Contents:
    """What a checkpoint file holds, whatever its format."""

    kind: str
    """"project", "detr" (a dict with the state dict under "model") or "state_dict"."""
    state_dict: dict[str, Tensor]
    """The weights, in this model's names."""
    layout: str
    """The names the file used: "project", "original" or "huggingface"."""
    config: dict[str, Any] | None = None
    """The architecture a project checkpoint records (DETRConfig as a dict); None otherwise."""
    categories: list[dict[str, Any]] | None = None
    """The categories a project checkpoint records; None otherwise."""
    inference: dict[str, Any] = field(default_factory=dict)
    """Inference settings the checkpoint recommends; empty when it has none."""


def read(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """`torch.load` under the project's rules: `weights_only=True`, plus `SAFE_GLOBALS`.

    A missing, truncated, foreign or unsafe file raises one CheckpointError line; nothing in the
    file runs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load fails in many ways on foreign bytes (even KeyError)
        raise CheckpointError(f"{path}: not a readable checkpoint ({_reason(e)})") from None


def _reason(e: Exception) -> str:
    text = str(e).strip()
    if isinstance(e, pickle.UnpicklingError) and text.startswith("Weights only load failed"):
        # torch's message suggests weights_only=False, which would run the file's code: say why not
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = found.group(1) if found else "a Python object"
        return (f"it holds {what}, which is neither a tensor nor a plain value; refused unread, "
                "so that no code in the file runs")
    first = text.splitlines()[0] if text else ""
    # at most 200 characters, cut between words
    return textwrap.shorten(f"{type(e).__name__}: {first}" if first else type(e).__name__, 200,
                            placeholder=" ...")


def is_project(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def interpret(obj: Any, path: str | Path) -> Contents:
    """Tell which kind of checkpoint `obj` (what `read` returned) is, and take it apart."""
    inference = dict(obj.get("inference") or {}) if isinstance(obj, dict) else {}
    if is_project(obj):
        missing = [k for k in ("config", "categories", "model") if k not in obj]
        if missing:
            raise CheckpointError(f"{path}: damaged {FORMAT} checkpoint (it lacks {', '.join(missing)})")
        if not (isinstance(obj["config"], dict) and isinstance(obj["categories"], list)
                and _is_state_dict(obj["model"])):
            raise CheckpointError(f"{path}: damaged {FORMAT} checkpoint (config, categories or model "
                                  "of the wrong type)")
        return Contents("project", obj["model"], "project", obj["config"], obj["categories"], inference)
    if isinstance(obj, dict) and _is_state_dict(obj.get("model")):
        kind, sd = "detr", obj["model"]
    elif _is_state_dict(obj):
        kind, sd = "state_dict", obj
    else:
        found = (f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict)
                 else type(obj).__name__)
        raise CheckpointError(f"{path}: not a checkpoint of this model (found {found}); expected {KINDS}")
    sd, layout = to_model_layout(sd)
    return Contents(kind, sd, layout, inference=inference)


def read_weights(path: str | Path) -> Contents:
    """`interpret(read(path))`: the weights of any checkpoint kind (CheckpointError otherwise)."""
    return interpret(read(path), path)


def save_checkpoint(
    path: str | Path,
    config: dict[str, Any],
    categories: list[dict[str, Any]],
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically; on failure the previous file at `path` is intact.

    inference: the settings predict should use with these weights by default (`size`,
    `max_size`, `threshold`): the ones the model was validated with."""
    path = Path(path)
    ckpt = {"format": FORMAT, "config": dict(config), "categories": list(categories),
            "model": {k: v.detach().cpu().contiguous() for k, v in model_state.items()}}
    if inference:
        ckpt["inference"] = dict(inference)
    if train_state is not None:
        ckpt["train_state"] = train_state
    # serialise first, so a failure to pickle never touches the disk
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    try:
        return atomic_write(path, lambda f: f.write(buffer.getbuffer()))
    except OSError as e:
        why = "disk full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CheckpointError(
            f"{path}: cannot write checkpoint ({why}); the previous checkpoint, if any, is unchanged"
        ) from e


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a project checkpoint, as a dict (CheckpointError if missing, truncated,
    foreign or of another format)."""
    ckpt = read(path, map_location)
    if not is_project(ckpt):
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    missing = [k for k in ("config", "categories", "model") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def check_architecture(ckpt: dict[str, Any], config: dict[str, Any], path: str | Path) -> None:
    """CheckpointError naming the first differing field when `ckpt` is of another architecture."""
    for key in sorted(set(config) | set(ckpt["config"])):
        a, b = ckpt["config"].get(key), config.get(key)
        if a != b:
            raise CheckpointError(
                f"{path}: checkpoint of another architecture ({key} is {a!r} in the checkpoint, {b!r} here)"
            )


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """`model.load_state_dict(state)` with a one-line error on mismatched names or shapes."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{path}: weights do not fit the model ({detail})") from None


def export_checkpoint(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """A copy of checkpoint `src` for shipping: no training state, floating-point weights cast to
    `dtype` (half the size; loading casts them back to the model's dtype)."""
    ckpt = load_checkpoint(src)
    ckpt.pop("train_state", None)
    ckpt["model"] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    return save_checkpoint(dst, ckpt["config"], ckpt["categories"], ckpt["model"],
                           inference=ckpt.get("inference"))
