"""Exports built on first use: `--runtime onnxruntime|openvino` never needs `export` by hand.

An export lives in `torch.hub.get_dir()/panoptic_detr_onnx/<key>/`, the key a hash of the
weights (`exporter.weights_sha256`: the tensors and architecture, whatever file they came in),
the opset, the graph format and the torch version. No inference setting enters the graphs (see
`exporter`), so none enters the key. The folder is built under a file lock (several processes
starting at once, e.g. torchrun ranks, build it once) in a temporary folder that is renamed
into place when complete, so a reader never sees half an export.

The key needs the weights' hash, which needs the weights as tensors; to find an export without
building the torch model (which would import torchvision and hold the weights in memory, ~340
MB of an R50 process that then runs ONNX Runtime or OpenVINO), `files/` beside the exports maps
a checkpoint file (the SHA-256 of its bytes) and the architecture read from it to that hash,
written the first time the hash is taken from the tensors.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch

from ..loading import Pretrained
from ..settings import InferenceSettings, SettingsError
from .exporter import DEFAULT_OPSET, FORMAT, file_sha256, weights_sha256, write_graphs
from .sessions import ExportedModel, onnxruntime_providers, require

try:
    import fcntl
except ImportError:  # Windows: no lock; the rename below still keeps each export whole
    fcntl = None  # type: ignore[assignment]


OPENVINO_CACHE = "openvino_cache"
"""Each export folder's subfolder for OpenVINO's compiled graphs (`sessions.OpenVINOSession`)."""


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "panoptic_detr_onnx"


def export_key(weights: str, opset: int = DEFAULT_OPSET) -> str:
    """The cache folder's name for weights of digest `weights` (`weights_digest`)."""
    text = f"{weights}|{opset}|{FORMAT}|torch {torch.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


_RELEASED: weakref.WeakKeyDictionary[Pretrained, str] = weakref.WeakKeyDictionary()
"""The weights digest of each Pretrained `exported_model` released, taken before the release."""


def weights_digest(pretrained: Pretrained) -> str:
    """`exporter.weights_sha256` of `pretrained`'s weights; of a released one, as taken before the
    release: a Predictor made from it later (explain's, one with other settings) finds the export
    without reading the weights again. Of one read from a file whose model is not built yet
    (`load_pretrained(build=False)`): from the `files/` index when an earlier process took it,
    else from the tensors (building the model) and recorded there."""
    if pretrained.released and pretrained in _RELEASED:
        return _RELEASED[pretrained]
    # the index knows files by their bytes: only for the file as it was read (a changed one
    # raises below, where the model is read again)
    entry = _file_entry(pretrained) if pretrained.released and pretrained.file_unchanged() else None
    if entry is not None and entry.is_file():
        return entry.read_text().strip()
    digest = weights_sha256(pretrained.model, pretrained.config)
    if entry is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=entry.parent, suffix=".tmp", delete=False) as f:
                f.write(digest + "\n")
            os.replace(f.name, entry)  # whole or absent, whoever reads it
        except OSError:  # a cache others filled and this user cannot write: found the slow way
            pass
    return digest


def _file_entry(pretrained: Pretrained) -> Path:
    """The `files/` index entry of `pretrained`'s checkpoint file and architecture."""
    assert pretrained.file is not None
    config = json.dumps(pretrained.config.to_dict(), sort_keys=True)
    key = hashlib.sha256(f"{file_sha256(pretrained.file)}|{config}".encode()).hexdigest()[:32]
    return cache_dir() / "files" / key


def cached_export(pretrained: Pretrained, settings: InferenceSettings | None = None,
                  opset: int = DEFAULT_OPSET, *, digest: str | None = None) -> Path:
    """The export folder of `pretrained`'s weights, built now if absent (minutes for R50).
    digest: their `weights_digest` where already taken."""
    require("onnxruntime")  # the exporter verifies with it
    root = cache_dir()
    key = export_key(digest or weights_digest(pretrained), opset)
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


def exported_model(pretrained: Pretrained, settings: InferenceSettings, *,
                   release: bool = False) -> ExportedModel:
    """The model of `settings.runtime` ("onnxruntime" or "openvino") for `pretrained`, with
    `detect` / `predict_masks` as the torch model's (see `sessions.ExportedModel`).

    release: drop `pretrained`'s torch model once the export is found, before the runtime
    loads the graphs (`Pretrained.release`: for weights the caller read and has not changed)."""
    # released or not built yet: where it was, or would be built (no reading the weights for it)
    device = pretrained.device if pretrained.released else next(pretrained.model.parameters()).device
    if device.type != "cpu" and settings.runtime != "onnxruntime":
        raise SettingsError(f"runtime {settings.runtime!r} runs on the CPU, not {device}; use --device cpu")
    require(settings.runtime)  # before minutes of exporting, the one line saying what is missing
    if device.type != "cpu":  # the providers for it, checked before exporting too
        onnxruntime_providers(device, require("onnxruntime").get_available_providers())
    digest = weights_digest(pretrained)
    folder = cached_export(pretrained, settings, digest=digest)
    if release and pretrained.release():
        _RELEASED[pretrained] = digest
    model = ExportedModel(folder, settings.runtime, settings.dtype, device=device,
                          compile_cache=folder / OPENVINO_CACHE)
    _trim_heap()
    return model


def _trim_heap() -> None:
    """Hand the free pages of glibc's heap back to the system. The runtime frees its parse of
    the graphs once they are loaded, and the released torch weights are free too (R50: about
    300 MB in all), but glibc keeps such pages resident until trimmed: without the trim they
    would stay in the process's peak under the activations of every image (large activations
    are mapped memory of their own, and do not reuse them). Elsewhere (no glibc): nothing."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


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
