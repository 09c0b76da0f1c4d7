"""Project checkpoint files: one self-describing dict, written atomically.

Format ("panoptic-detr/1", read back by `loading.py`), loadable with
`torch.load(weights_only=True)`:
    {"format": "panoptic-detr/1", "config": DETRConfig as a dict, "categories": [COCO category
     dicts], "model": state_dict, "train_state": optional dict (optimizer, scheduler, step,
     epoch, position in the epoch, RNG states, best_pq, ...)}

A run keeps two files in its output folder: `checkpoint_last.pt` (resume from here) and
`checkpoint_best.pt` (best validation PQ so far). A failed write (disk full, ...) leaves the
previous file untouched: the new one goes to a temporary file that is renamed only once complete.
"""

from __future__ import annotations

import errno
import io
from pathlib import Path
from typing import Any

import torch

from ..data.files import atomic_write

FORMAT = "panoptic-detr/1"
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written, read, or used (one line naming the file)."""


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
            "model": {k: v.detach().cpu() for k, v in model_state.items()}}
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
    """Read and check a project checkpoint (CheckpointError if missing, truncated or foreign)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... on damage
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
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
