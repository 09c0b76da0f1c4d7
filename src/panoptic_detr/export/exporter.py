"""A model as ONNX: `detect.onnx` + `mask.onnx` + `model.json` in one folder, verified with ONNX
Runtime against torch before anything is kept.

The exporter: `torch.onnx.export(..., dynamo=True)` (torch.export, then onnxscript). It handles
both graphs with dynamic batch, height, width and number of kept queries (torch 2.14: the
outputs agree with torch to float32 noise at sizes other than the traced one, including odd
sizes whose feature grids are not exact halves). The TorchScript exporter (`dynamo=False`) is
the fallback when the dynamo one raises (other torch versions), and a choice
(`exporter="torchscript"`, `export --exporter torchscript`): its graphs agree with torch as
closely and it exports about 10x faster (the tiny preset: 3 s against 35 s on a busy 2-core
box), but torch has deprecated it. `model.json` records which ran.

The graphs are exported from a float32 copy of the model with its frozen batch norms folded
(`prepare_for_inference` without channels-last), so they hold what `Predictor` runs; none of
the inference settings enter them (threshold, sizes and stuff merging are applied by the
Python post-processing, the precision by the runtime).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import __version__
from ..data.files import write_json
from ..model import DETRConfig, DETRPanoptic
from ..model.weights import preset_name
from ..settings import InferenceSettings
from ..structures import Categories
from .graphs import (
    DETECT_INPUTS,
    DETECT_OUTPUTS,
    MASK_INPUTS,
    MASK_OUTPUTS,
    SHAPES,
    DetectGraph,
    MaskGraph,
    exportable,
    sample_inputs,
)

FORMAT = "panoptic-detr-onnx/1"
"""`model.json`'s `format`: the graphs' inputs and outputs as `graphs.py` names them."""
DEFAULT_OPSET = 18
EXPORTERS = ("dynamo", "torchscript")
FILES = ("detect.onnx", "mask.onnx", "model.json")
END_TO_END = "end_to_end.onnx"  # end_to_end.FILE
"""With `end_to_end`: image -> id map + segment table, one graph (see `end_to_end.py`)."""


@dataclass
class ExportReport:
    folder: Path
    exporter: str
    """"dynamo" or "torchscript" (see the module docstring)."""
    max_difference: dict[str, float]
    """Largest |ONNX Runtime - torch| of every output on the verification sample."""
    end_to_end: dict[str, Any] | None = None
    """With `end_to_end`: how ONNX Runtime's end-to-end result compares with the Python path's
    (`end_to_end.verify_end_to_end`)."""

    def line(self) -> str:
        worst = max(self.max_difference, key=self.max_difference.get)
        files = (*FILES[:2], *((END_TO_END,) if self.end_to_end else ()), FILES[2])
        text = (f"wrote {', '.join(str(self.folder / f) for f in files)} ({self.exporter} exporter); "
                f"ONNX Runtime vs torch on a padded batch of 2: max difference "
                f"{self.max_difference[worst]:.2g} ({worst})")
        if self.end_to_end:
            e = self.end_to_end
            text += (f"; end to end vs the Python path on a {e['image']} scene: {e['segments']} "
                     f"segments ({e['python_segments']} in Python), "
                     f"{100 * e['pixel_agreement']:.2f} % of pixels alike")
        return text


def weights_sha256(model: torch.nn.Module, config: DETRConfig | None) -> str:
    """SHA-256 of the architecture and every tensor of the state dict (names, dtypes, shapes,
    values): the same weights give the same hash whatever file format they came in."""
    h = hashlib.sha256(json.dumps(config.to_dict() if config else None, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # no copy of the bytes
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_onnx(
    model: DETRPanoptic,
    folder: str | os.PathLike[str],
    *,
    categories: Categories,
    settings: InferenceSettings | None = None,
    opset: int = DEFAULT_OPSET,
    checkpoint: str | os.PathLike[str] | None = None,
    source: str = "",
    overwrite: bool = False,
    exporter: str = "dynamo",
    end_to_end: bool = False,
) -> ExportReport:
    """Write `folder`/detect.onnx, mask.onnx and model.json for `model` (left unchanged), and
    with `end_to_end` also end_to_end.onnx (image -> segmentation with `settings` built in).

    The files are built in a temporary folder beside `folder`, verified, then moved in
    (model.json last, so a folder with a model.json is complete). An existing export in
    `folder` raises FileExistsError unless `overwrite`. checkpoint: the file the weights came
    from, whose SHA-256 model.json records beside the weights' own (`weights_sha256`).
    """
    folder = Path(folder)
    if not overwrite:
        taken = [f for f in (*FILES, END_TO_END) if (folder / f).exists()]
        if taken:
            raise FileExistsError(f"{folder / taken[0]}: exists (pass --overwrite to replace the export)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        report = write_graphs(model, tmp, categories=categories, settings=settings, opset=opset,
                              checkpoint=checkpoint, source=source, exporter=exporter, end_to_end=end_to_end)
        folder.mkdir(exist_ok=True)
        if not end_to_end:  # an older export's end-to-end graph would not match the new model.json
            (folder / END_TO_END).unlink(missing_ok=True)
        for name in (*FILES[:2], *((END_TO_END,) if end_to_end else ()), FILES[2]):
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.folder = folder
    return report


def write_graphs(model: DETRPanoptic, folder: Path, *, categories: Categories,
                 settings: InferenceSettings | None, opset: int,
                 checkpoint: str | os.PathLike[str] | None = None, source: str = "",
                 exporter: str = "dynamo", end_to_end: bool = False) -> ExportReport:
    """The export into an existing, empty `folder` (see `export_onnx`); exporter: "dynamo"
    (the TorchScript one where it fails) or "torchscript" (the end-to-end graph always takes
    the dynamo one: its filter loop is a `torch.while_loop`, which only torch.export captures)."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    config = getattr(model, "config", None)
    digest = weights_sha256(model, config)
    net = copy.deepcopy(model).cpu().float().eval()
    net.prepare_for_inference(channels_last=False)
    detect_in, mask_in = sample_inputs(net)
    ran = [_export(DetectGraph(net), detect_in, folder / "detect.onnx", DETECT_INPUTS, DETECT_OUTPUTS,
                   _detect_axes(), opset, exporter),
           _export(MaskGraph(net), mask_in, folder / "mask.onnx", MASK_INPUTS, MASK_OUTPUTS, _mask_axes(),
                   opset, exporter)]
    exporter = "+".join(dict.fromkeys(ran))  # "dynamo", "torchscript" or both where one fell back
    diff = verify(net, folder, detect_in)
    settings = settings or InferenceSettings()
    graphs = {"detect": {"file": "detect.onnx", "inputs": list(DETECT_INPUTS),
                         "outputs": list(DETECT_OUTPUTS), "shapes": SHAPES["detect"]},
              "mask": {"file": "mask.onnx", "inputs": list(MASK_INPUTS), "outputs": list(MASK_OUTPUTS),
                       "shapes": SHAPES["mask"]}}
    checked = None
    if end_to_end:
        from . import end_to_end as e2e

        is_thing = categories.thing_mask()
        graphs["end_to_end"] = e2e.write_end_to_end(net, folder, is_thing, settings, opset)
        checked = e2e.verify_end_to_end(net, folder / END_TO_END, is_thing, settings)
    meta = {
        "format": FORMAT,
        "graphs": graphs,
        "preset": preset_name(config) if config else None,
        "config": config.to_dict() if config else None,
        "categories": categories.to_json(),
        "num_classes": categories.num_classes,
        "inference": dataclasses.asdict(settings),
        "weights_sha256": digest,
        "checkpoint_sha256": file_sha256(checkpoint) if checkpoint else None,
        "source": source,
        "exporter": {"kind": exporter, "opset": opset, **versions()},
        "verification": {"max_abs_difference": diff, **({"end_to_end": checked} if checked else {})},
    }
    write_json(folder / "model.json", meta, indent=1)
    return ExportReport(folder, exporter, diff, checked)


def versions() -> dict[str, str | None]:
    """The versions of what made the export."""
    out: dict[str, str | None] = {"panoptic_detr": __version__}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def verify(net: DETRPanoptic, folder: Path, detect_in: tuple[Tensor, Tensor]) -> dict[str, float]:
    """Max |ONNX Runtime - torch| of every output of both graphs on the sample (a padded batch of
    2; the mask graph for the first image's queries 0..2)."""
    from .sessions import OnnxRuntimeSession

    with torch.no_grad():
        ref = DetectGraph(net)(*detect_in)
        mask_in = (ref[2][0, :3], *(t[:1] for t in ref[3:]))
        ref_masks = MaskGraph(net)(*mask_in)
    got = OnnxRuntimeSession(folder / "detect.onnx").run(dict(zip(DETECT_INPUTS, detect_in, strict=True)))
    got_masks = OnnxRuntimeSession(folder / "mask.onnx").run(dict(zip(MASK_INPUTS, mask_in, strict=True)))
    diff = {}
    names = (*DETECT_OUTPUTS, *MASK_OUTPUTS)
    for name, a, b in zip(names, (*got, *got_masks), (*ref, ref_masks), strict=True):
        diff[name] = float((torch.from_numpy(a).float() - b.float()).abs().max())
    return diff


def _detect_axes() -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    b, h, w = Dim("batch", min=1), Dim("height", min=16), Dim("width", min=16)
    return {"images": {0: b, 2: h, 3: w}, "mask": {0: b, 1: h, 2: w}}


def _mask_axes() -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    q, h, w = Dim("kept", min=1), Dim("h32"), Dim("w32")
    return {"queries": {0: q}, "keys": {2: h, 3: w}, "padding": {1: h, 2: w}, "lay1": {2: h, 3: w},
            "adapter1": {2: Dim("h16"), 3: Dim("w16")}, "adapter2": {2: Dim("h8"), 3: Dim("w8")},
            "adapter3": {2: Dim("h4"), 3: Dim("w4")}}


def _export(graph: torch.nn.Module, inputs: tuple, path: Path, input_names: tuple[str, ...],
            output_names: tuple[str, ...], axes: dict[str, dict[int, Any]], opset: int,
            exporter: str) -> str:
    """Export one graph with `exporter`; "dynamo" falls back to the TorchScript exporter where it
    fails, "dynamo-only" raises. Returns which ran."""
    graph.eval()

    def dynamo() -> str:
        with _quiet(), exportable(), torch.no_grad():
            torch.onnx.export(graph, inputs, path, dynamo=True, external_data=False,
                              input_names=list(input_names), output_names=list(output_names),
                              dynamic_shapes=axes, opset_version=opset, optimize=True)
        return "dynamo"

    if exporter == "dynamo-only":
        return dynamo()
    if exporter == "dynamo":
        try:
            return dynamo()
        except Exception as e:  # noqa: BLE001 - any failure of the dynamo exporter: try the other
            warnings.warn(f"the dynamo ONNX exporter failed ({type(e).__name__}: {str(e)[:200]}); "
                          "using the TorchScript exporter", stacklevel=2)
    dynamic = {name: {i: d.__name__ for i, d in dims.items()} for name, dims in axes.items()}
    with _quiet(), exportable(), torch.no_grad():
        torch.onnx.export(graph, inputs, path, dynamo=False, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic, opset_version=opset)
    return "torchscript"


@contextlib.contextmanager
def _quiet():
    """The exporters' progress prints and optimiser notes, which are not for our users."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
