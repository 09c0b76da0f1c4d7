"""The exported graphs behind the torch model's interface: `ExportedModel.detect` /
`predict_masks` take and return what `DETRPanoptic`'s do, so `model.inference.segment` (and with
it `Predictor`, the runner, evaluate, build-gt) runs ONNX Runtime or OpenVINO unchanged.

onnxruntime and openvino are optional (the `export` extra) and imported only here, when chosen.
On the CPU both run with torch's thread count (`torch.get_num_threads()`, what
`--threads`/OMP_NUM_THREADS set for torch). OpenVINO runs float32 unless asked for bfloat16
(`INFERENCE_PRECISION_HINT`; its CPU plugin would otherwise pick bfloat16 by itself on CPUs with
AMX or AVX512-BF16). On a CUDA device (`--device cuda[:N]`) ONNX Runtime runs its CUDA execution
provider (the onnxruntime-gpu package), or the providers `$PANOPTIC_DETR_ORT_PROVIDERS` names
(`onnxruntime_providers`); OpenVINO runs on the CPU only.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..model.detr import MASK_CHUNK_BYTES
from ..settings import MaskChunk, SettingsError
from ..structures import PaddedBatch
from .graphs import DETECT_INPUTS, DETECT_OUTPUTS, MASK_INPUTS

PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
"""runtime -> the package it needs."""


def require(runtime: str) -> ModuleType:
    """The runtime's package, or one SettingsError line saying how to install it."""
    package = PACKAGES[runtime]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise SettingsError(f"runtime {runtime!r} needs the {package} package: "
                            "pip install 'panoptic-detr[export]'") from None


PROVIDERS_ENV = "PANOPTIC_DETR_ORT_PROVIDERS"
"""Comma-separated ONNX Runtime execution providers to use on a CUDA device, best first, instead
of the CUDA one alone, e.g. "TensorrtExecutionProvider,CUDAExecutionProvider"."""


Provider = str | tuple[str, dict[str, Any]]
"""An execution provider as `onnxruntime.InferenceSession` takes it: its name, or (name, options)."""


def onnxruntime_providers(device: torch.device, available: Sequence[str],
                          cache: str | os.PathLike[str] | None = None) -> list[Provider]:
    """ONNX Runtime's execution providers for `device`, best first (what `InferenceSession`
    takes): the CPU's on a CPU; on CUDA device N, CUDA's on device N, or those named by
    `$PANOPTIC_DETR_ORT_PROVIDERS` (TensorRT builds an engine for each new input size, kept in
    `cache`/tensorrt: worth it for images of one size), then the CPU's for any operator they lack.
    available: `onnxruntime.get_available_providers()`. SettingsError, one line, for a device
    these providers cannot serve."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type != "cuda":
        raise SettingsError(f"runtime 'onnxruntime' runs on a CPU or a CUDA device, not {device}")
    index = device.index or 0
    named = os.environ.get(PROVIDERS_ENV, "CUDAExecutionProvider")
    wanted = [p.strip() for p in named.split(",") if p.strip()]
    missing = [p for p in wanted if p not in available]
    if missing:
        raise SettingsError(f"runtime 'onnxruntime' on {device} needs {', '.join(missing)}, which this "
                            f"onnxruntime lacks (it has {', '.join(available)}): pip install onnxruntime-gpu")
    options: dict[str, dict[str, Any]] = {
        "CUDAExecutionProvider": {"device_id": index},
        "TensorrtExecutionProvider": {"device_id": index, "trt_engine_cache_enable": True,
                                      "trt_engine_cache_path": os.fspath(Path(cache or ".") / "tensorrt")}}
    chosen: list[Provider] = [(p, options[p]) if p in options else p for p in wanted]
    return chosen + ([] if "CPUExecutionProvider" in wanted else ["CPUExecutionProvider"])


class OnnxRuntimeSession:
    """One ONNX file run by ONNX Runtime (on the CPU unless given a CUDA `device`)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None,
                 device: torch.device | None = None):
        ort = require("onnxruntime")
        providers = onnxruntime_providers(device or torch.device("cpu"), ort.get_available_providers(),
                                          Path(path).parent)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # no arena: it keeps the largest activations of every size seen (R50 at 800x1066: peak RSS
        # 1.76 -> 1.44 GB, the same speed; benchmarks/RESULTS.md)
        options.enable_cpu_mem_arena = False
        # its threads wait asleep, not spinning, between operators: the same wall time, ~10 % less
        # CPU, which predict's writer thread and other processes get (benchmarks/RESULTS.md)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(os.fspath(path), options, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict[str, Any]) -> list[np.ndarray]:
        return self.session.run(None, {k: _numpy(feeds[k]) for k in self.input_names})

    def release(self) -> None:
        """Nothing to hand back: the session keeps no arena (`enable_cpu_mem_arena` off)."""


class OpenVINOSession:
    """One ONNX file compiled by OpenVINO for the CPU, in float32 or bfloat16.

    cache: a folder for OpenVINO's compiled-model cache (`CACHE_DIR`): the first compile writes
    a blob there (R50's detect graph: ~170 MB, one for both precisions, which OpenVINO applies
    when it loads it), later ones load it in a fifth of the time (benchmarks/RESULTS.md,
    "session 7"). Not used where the folder cannot be written (a shared, read-only cache)."""

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, dtype: str = "float32",
                 cache: str | os.PathLike[str] | None = None):
        ov = require("openvino")
        core = ov.Core()
        if cache is not None and _writable(Path(cache)):
            core.set_property({"CACHE_DIR": os.fspath(cache)})
        config = {"INFERENCE_PRECISION_HINT": {"float32": "f32", "bfloat16": "bf16"}[dtype],
                  "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                  "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(os.fspath(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]

    def run(self, feeds: dict[str, Any]) -> list[np.ndarray]:
        result = self.request.infer({k: _numpy(feeds[k]) for k in self.input_names})
        # copies: the request reuses its output buffers on the next call
        return [np.array(result[o]) for o in self.compiled.outputs]

    def release(self) -> None:
        """Hand back the memory of the intermediate tensors (`CompiledModel.release_memory`).
        The CPU plugin otherwise keeps them between calls, so the detect graph's activations
        would sit under the mask graph's and post-processing's; allocating them afresh for each
        image measured no slower (benchmarks/RESULTS.md, "session 7"). An OpenVINO without the
        method (older releases) keeps them, as before."""
        release = getattr(self.compiled, "release_memory", None)
        if release is not None:
            release()


@dataclass
class ExportedDetection:
    """What `ExportedModel.detect` returns: `Detection`'s predictions plus the detect graph's
    outputs the mask graph reads (names of `graphs.DETECT_OUTPUTS`)."""

    pred_logits: Tensor
    """[B, N, K+1]."""
    pred_boxes: Tensor
    """[B, N, 4] normalised (cx, cy, w, h)."""
    features: dict[str, np.ndarray]
    """queries [B, N, d], keys, padding, lay1, adapter1..3 (see `graphs.DETECT_OUTPUTS`)."""

    def one(self, index: int) -> ExportedDetection:
        """Image `index`'s outputs as a batch of one, copied (see `Detection.one`)."""
        if self.pred_logits.shape[0] == 1 and index == 0:
            return self
        i = slice(index, index + 1)
        return ExportedDetection(self.pred_logits[i].clone(), self.pred_boxes[i].clone(),
                                 {k: v[i].copy() for k, v in self.features.items()})


class ExportedModel:
    """`detect` + `predict_masks` of an export folder (detect.onnx, mask.onnx), run by
    ONNX Runtime ("onnxruntime") or OpenVINO ("openvino"); see the module docstring."""

    def __init__(self, folder: str | os.PathLike[str], runtime: str = "onnxruntime",
                 dtype: str = "float32", threads: int | None = None, device: str | torch.device = "cpu",
                 compile_cache: str | os.PathLike[str] | None = None):
        """device: where ONNX Runtime runs the graphs (a CPU, or a CUDA device with onnxruntime-gpu,
        see `onnxruntime_providers`); the inputs and outputs stay CPU tensors either way.
        compile_cache: a folder for OpenVINO's compiled graphs (see `OpenVINOSession`); None: none."""
        folder, device = Path(folder), torch.device(device)
        if runtime == "onnxruntime":
            if dtype != "float32":
                raise SettingsError(f"runtime 'onnxruntime' runs float32 only, not {dtype}; "
                                    "use --runtime openvino for bfloat16")
            self.detect_session: Any = OnnxRuntimeSession(folder / "detect.onnx", threads, device)
            self.mask_session: Any = OnnxRuntimeSession(folder / "mask.onnx", threads, device)
        elif runtime == "openvino" and device.type != "cpu":
            raise SettingsError(f"runtime 'openvino' runs on the CPU, not {device}; use --device cpu "
                                "(or --runtime onnxruntime on a CUDA device)")
        elif runtime == "openvino":
            self.detect_session = OpenVINOSession(folder / "detect.onnx", threads, dtype, compile_cache)
            self.mask_session = OpenVINOSession(folder / "mask.onnx", threads, dtype, compile_cache)
        else:
            raise SettingsError(f"runtime must be 'onnxruntime' or 'openvino' for an export, got {runtime!r}")
        self.folder, self.runtime, self.dtype = folder, runtime, dtype
        self.runs_on = device
        """Where the graphs run (a CUDA device only for ONNX Runtime); inputs and outputs are CPU
        tensors whatever it is, so a `Predictor` batches images together by this, as on a GPU."""

    def eval(self) -> ExportedModel:
        return self

    def parameters(self) -> Iterator[Tensor]:
        """One empty tensor of the device and dtype the inputs are given in (CPU, float32), as
        `Predictor` reads them from a torch model's parameters."""
        yield torch.zeros(0)

    def detect(self, batch: PaddedBatch, return_attention: bool = False) -> ExportedDetection:
        if return_attention:
            raise SettingsError("the attention maps come from the torch model only (runtime 'torch')")
        images, mask = batch.images.float(), batch.mask
        out = self.detect_session.run(dict(zip(DETECT_INPUTS, (images, mask), strict=True)))
        self.detect_session.release()  # its activations are not needed until the next image
        named = dict(zip(DETECT_OUTPUTS, out, strict=True))
        return ExportedDetection(torch.from_numpy(named.pop("pred_logits")),
                                 torch.from_numpy(named.pop("pred_boxes")), named)

    def predict_masks(self, det: ExportedDetection, queries: list[Tensor],
                      chunk: MaskChunk = None) -> list[Tensor]:
        """Per image [Q_i, H/4, W/4] mask logits of `queries[i]` (see `DETRPanoptic.predict_masks`)."""
        f = det.features
        if len(queries) != f["queries"].shape[0]:
            raise ValueError(f"queries has {len(queries)} entries for {f['queries'].shape[0]} images")
        size = f["adapter3"].shape[-2:]
        if chunk == "auto":  # as DETRPanoptic.mask_chunk on a CPU
            chunk = max(1, MASK_CHUNK_BYTES // (f["adapter3"].shape[1] * size[0] * size[1] * 4))
        out = []
        for i, idx in enumerate(queries):
            idx = idx.cpu().numpy()
            if idx.size == 0:
                out.append(torch.zeros((0, *size)))
                continue
            image = {k: f[k][i : i + 1] for k in MASK_INPUTS if k != "queries"}
            parts = [self.mask_session.run({**image, "queries": f["queries"][i, part]})[0]
                     for part in (np.array_split(idx, -(-idx.size // chunk)) if chunk else (idx,))]
            out.append(torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts)))
        self.mask_session.release()
        return out


def _writable(folder: Path) -> bool:
    """Whether `folder` exists and can be written, or can be made."""
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value)
