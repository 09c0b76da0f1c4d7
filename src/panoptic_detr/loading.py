"""Weights from files, at the edge: the bundled demo model, the original COCO checkpoints by
name (downloaded once, hash-checked, cached where torch hub caches), or a checkpoint path.

Every way of failing ends in one `WeightsError` whose message names the file, says what was
expected and what to do.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt_io
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .model import PRESETS, DETRConfig, DETRPanoptic, build_model
from .model.weights import (
    WEIGHTS,
    PretrainedWeights,
    WeightsError,
    infer_config,
    load_state_dict_strict,
    preset_name,
)
from .structures import Categories

__all__ = ["CHECKPOINT_FORMAT", "Pretrained", "WeightsError", "cached_path", "demo_path", "load_pretrained"]


class Pretrained:
    """A ready model (eval mode, on its device) and what it predicts.

    One read from a file (`load_pretrained`) can `release` its model: a Predictor of an exported
    runtime (onnxruntime, openvino) runs graphs of its own and needs the torch weights only to
    find its export, and they are a large part of its memory (R50: 172 MB). `model` reads them
    again from the file when asked for (a torch Predictor or `explain` made from this one).
    """

    def __init__(self, model: DETRPanoptic | None, config: DETRConfig, categories: Categories, source: str,
                 inference: dict[str, Any] | None = None, *,
                 reload: Callable[[], DETRPanoptic] | None = None, file: Path | None = None,
                 device: str | torch.device | None = None):
        if model is None and reload is None:
            raise ValueError("a Pretrained without a model needs `reload` to build it")
        self._model: DETRPanoptic | None = model
        self.config, self.categories = config, categories
        self.source = source
        """Where the weights came from, for messages and logs."""
        self.inference: dict[str, Any] = dict(inference or {})
        """Inference settings the checkpoint recommends (`size`, `max_size`, `threshold`): a model
        trained on small images should see small images. Empty for the original checkpoints."""
        self._reload = reload
        self.file = file
        """The checkpoint file the weights were read from (None for a model made in memory)."""
        self._file_stamp = _stamp(file) if file is not None else None
        if device is None:  # where the model's parameters are (a test double may have none)
            param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
            device = param.device if param is not None else "cpu"
        self.device = torch.device(device)
        """Where the model was loaded (a model not built yet: where it will be; a released one:
        where it was when released)."""

    def __repr__(self) -> str:
        return f"Pretrained({self.source!r}{', released' if self.released else ''})"

    @property
    def model(self) -> DETRPanoptic:
        if self._model is None:
            assert self._reload is not None  # only a model that can be read again is released
            # from its file as first read (a file replaced since, e.g. a training run's
            # checkpoint.pt, would give other weights than those the holder ran)
            if self.file is not None and not self.file_unchanged():
                raise WeightsError(f"{self.file} changed or went away since its weights were read; "
                                   "load it again")
            self._model = self._reload()
        return self._model

    @property
    def released(self) -> bool:
        """Whether the model is dropped (and read again when next asked for)."""
        return self._model is None

    def file_unchanged(self) -> bool:
        """Whether `file` is still the file the weights were read from (size and mtime)."""
        return self.file is not None and self.file.is_file() and _stamp(self.file) == self._file_stamp

    def release(self) -> bool:
        """Drop the model if it can be read again from its file; whether it was dropped. Only
        for a model not changed since it was read (the one read again would not have the changes).
        `device` keeps where it was."""
        if self._reload is None:
            return False
        if self._model is not None:
            param = next(iter(self._model.parameters()), None)
            self.device = param.device if param is not None else self.device
        self._model = None
        return True


def load_pretrained(
    weights: str | os.PathLike[str],
    preset: str | None = None,
    device: str | torch.device = "cpu",
    *,
    build: bool = True,
) -> Pretrained:
    """weights: "demo", a name of `model.weights.WEIGHTS` (e.g. "detr_r50_panoptic") or a path
    to a project checkpoint or an original DETR / Hugging Face state dict.

    preset: the architecture, for files that do not carry one (original checkpoints); by
    default it is inferred from the tensors (and "dc5" in the file name for dilation).
    build: False reads the file and checks what it holds (architecture, categories) but builds
    no torch model: it is built from the file when `model` is first asked for. For a caller
    that may not need it (an exported runtime whose export is cached: export/cache.py).
    """
    if preset is not None and preset not in PRESETS:
        raise WeightsError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    name = os.fspath(weights)
    record = None
    if name == "demo":
        path = demo_path()
        if not path.is_file():
            raise WeightsError(
                f"the demo weights are not bundled in this installation (expected {path}); "
                "pass --weights detr_r50_panoptic or a checkpoint path"
            )
    elif name in WEIGHTS:
        record = WEIGHTS[name]
        if preset is not None and preset != record.preset:
            raise WeightsError(f"{name} is a {record.preset} checkpoint, not {preset}; drop --preset")
        preset = record.preset
        path = cached_path(record)
    else:
        path = Path(name)
        if not path.is_file():
            hint = f"; or a name: demo, {', '.join(WEIGHTS)}" if not path.suffix else ""
            raise WeightsError(f"{path}: no such file (expected a checkpoint path{hint})")

    contents = _read(path)
    config, categories = _architecture(contents, path, preset)
    if record is not None:
        categories = Categories.coco_panoptic()
    model = _model(config, contents.state_dict, path, device) if build else None
    source = f"{name} ({path})" if name != os.fspath(path) else str(path)
    reload = functools.partial(_read_again, path, config, device)
    return Pretrained(model, config, categories, source, contents.inference, reload=reload, file=path,
                      device=device)


def _model(config: DETRConfig, state_dict: dict[str, torch.Tensor], path: Path,
           device: str | torch.device) -> DETRPanoptic:
    model = build_model(config)
    load_state_dict_strict(model, state_dict, what=f"the weights in {path}")
    return model.to(device).eval()


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _read_again(path: Path, config: DETRConfig, device: str | torch.device) -> DETRPanoptic:
    """The model of a released `Pretrained` (which checks its file is unchanged first)."""
    return _model(config, _read(path).state_dict, path, device)


def demo_path() -> Path:
    """Where the bundled demo checkpoint lives (a project checkpoint of a small preset)."""
    return Path(str(resources.files("panoptic_detr.assets").joinpath("demo", "demo.pt")))


def cached_path(record: PretrainedWeights, option: str = "--weights") -> Path:
    """The checkpoint file of `record`, downloaded into torch hub's cache when absent.

    A file already there is hash-checked too, so a wrong or truncated manual copy is caught.
    `option`: how the caller's user names a weights path, for the message (training: "init=").
    """
    dest = Path(torch.hub.get_dir()) / "checkpoints" / record.filename
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            # writes a temp file and renames it once the hash checked out
            torch.hub.download_url_to_file(record.url, str(dest), hash_prefix=record.hash_prefix)
        except Exception as e:  # offline, HTTP error, hash mismatch: all end the same way
            raise WeightsError(
                f"could not download {record.url} ({type(e).__name__}: {e}). Download it where "
                f"there is internet access and put it at {dest} (or pass its path as {option})"
            ) from None
        return dest
    digest = _sha256(dest)
    if not digest.startswith(record.hash_prefix):
        raise WeightsError(
            f"{dest}: wrong file for {record.preset} (SHA-256 {digest[:8]}..., expected "
            f"{record.hash_prefix}...); delete it so it is downloaded again from {record.url}"
        )
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(path: Path) -> ckpt_io.Contents:
    """The checkpoint's contents, read by the project's one set of rules (`checkpoint.read`)."""
    try:
        obj = ckpt_io.read(path)
    except ckpt_io.CheckpointError as e:
        raise WeightsError(f"{e}; expected a file written by torch.save: {ckpt_io.KINDS}") from None
    try:
        return ckpt_io.interpret(obj, path)
    except ckpt_io.CheckpointError as e:
        raise WeightsError(str(e)) from None


def _architecture(
    contents: ckpt_io.Contents, path: Path, preset: str | None
) -> tuple[DETRConfig, Categories]:
    """The architecture and categories the file records, else those its tensors tell."""
    if contents.kind == "project":
        try:
            config = DETRConfig.from_dict(dict(contents.config or {}))
            categories = Categories(list(contents.categories or []), num_classes=config.num_classes)
        except (KeyError, TypeError, ValueError) as e:
            raise WeightsError(f"{path}: damaged {CHECKPOINT_FORMAT} checkpoint ({e})") from None
        if preset is not None and PRESETS[preset].with_overrides(dilation=config.dilation) != (
            config.with_overrides(pretrained_backbone=False)
        ):
            raise WeightsError(
                f"{path} holds a {preset_name(config) or 'custom'} model, not {preset}; drop --preset"
            )
        return config.with_overrides(pretrained_backbone=False), categories
    sd = contents.state_dict
    if preset is not None:
        config = PRESETS[preset]
        try:
            found = infer_config(sd)
        except WeightsError:
            found = None  # the strict load below says what does not fit
        # compare only what the tensors tell (not heads, groups, dropout, DC5 or the mask options)
        untold = ("nheads", "mask_head_groups", "dropout", "pretrained_backbone", "dilation",
                  "mask_attention_pos", "mask_attention_init_gain")
        told = [f for f in config.to_dict() if f not in untold]
        if found is not None and any(getattr(found, f) != getattr(config, f) for f in told):
            raise WeightsError(
                f"{path} holds a {preset_name(found) or 'custom'} model, not {preset}; "
                "drop --preset to use the architecture the file tells"
            )
    else:
        try:
            config = infer_config(sd, dilation="dc5" in path.name.lower())
        except WeightsError as e:
            raise WeightsError(f"{path}: {e}; expected a DETR panoptic checkpoint") from None
    if config.num_classes == 250:
        categories = Categories.coco_panoptic()
    else:
        categories = Categories([], num_classes=config.num_classes)
    return config, categories
