"""Exports built on first use: `--runtime onnxruntime|openvino` never needs `export` by hand.

An export lives in `torch.hub.get_dir()/panoptic_detr_onnx/<key>/`, the key a hash of the
weights (`exporter.weights_sha256`: the tensors and architecture, whatever file they came in),
the opset, the graph format and the torch version. No inference setting enters the graphs (see
`exporter`), so none enters the key. The folder is built under a file lock (several processes
starting at once, e.g. torchrun ranks, build it once) in a temporary folder that is renamed
into place when complete, so a reader never sees half an export.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from ..loading import Pretrained
from ..settings import InferenceSettings, SettingsError
from .exporter import DEFAULT_OPSET, FORMAT, weights_sha256, write_graphs
from .sessions import ExportedModel, require

try:
    import fcntl
except ImportError:  # Windows: no lock; the rename below still keeps each export whole
    fcntl = None  # type: ignore[assignment]


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "panoptic_detr_onnx"


def export_key(pretrained: Pretrained, opset: int = DEFAULT_OPSET) -> str:
    weights = weights_sha256(pretrained.model, pretrained.config)
    text = f"{weights}|{opset}|{FORMAT}|torch {torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached_export(pretrained: Pretrained, settings: InferenceSettings | None = None,
                  opset: int = DEFAULT_OPSET) -> Path:
    """The export folder of `pretrained`'s weights, built now if absent (minutes for R50)."""
    require("onnxruntime")  # the exporter verifies with it
    root = cache_dir()
    key = export_key(pretrained, opset)
    folder = root / key
    if (folder / "model.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{key}.lock"):
        if (folder / "model.json").is_file():  # another process built it while we waited
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
        try:
            write_graphs(pretrained.model, tmp, categories=pretrained.categories, settings=settings,
                         opset=opset, source=pretrained.source)
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder (no model.json)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def exported_model(pretrained: Pretrained, settings: InferenceSettings) -> ExportedModel:
    """The model of `settings.runtime` ("onnxruntime" or "openvino") for `pretrained`, with
    `detect` / `predict_masks` as the torch model's (see `sessions.ExportedModel`)."""
    device = next(pretrained.model.parameters()).device
    if device.type != "cpu":
        raise SettingsError(f"runtime {settings.runtime!r} runs on the CPU, not {device}; use --device cpu")
    require(settings.runtime)  # before minutes of exporting, the one line saying what is missing
    return ExportedModel(cached_export(pretrained, settings), settings.runtime, settings.dtype)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
