"""`panoptic-detr export`: a checkpoint as ONNX graphs plus model.json (see export/exporter.py)."""

from __future__ import annotations

import argparse

from . import whole_number
from .settings_flags import add_settings_flags, settings_kwargs
from .weights_flag import add_weights_flag


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX (detect graph + mask-head graph + model.json)",
        description="Writes DIR/detect.onnx (image + padding mask -> class logits, boxes and what the "
        "mask head needs), DIR/mask.onnx (the mask head for the kept queries of one image) and "
        "DIR/model.json (preset, categories, inference settings, the checkpoint's SHA-256, the "
        "exporter's versions), with dynamic batch, height, width and number of kept queries; then "
        "runs ONNX Runtime on a sample and prints its max difference from torch. "
        "predict/evaluate/build-gt --runtime onnxruntime|openvino build this themselves on first use. "
        "--end-to-end also writes DIR/end_to_end.onnx: a decoded image ([H, W, 3] uint8, any size) -> "
        "id map [H, W] + segment table, the whole of predict in one graph with these inference "
        "settings built in (model.json says how to call it).",
    )
    add_weights_flag(p, default="demo")
    p.add_argument("--preset", default=None, help="architecture, when --weights is a file that does not say")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="what to write (onnx)")
    p.add_argument("--opset", type=whole_number(17), default=None,
                   help="ONNX opset of the graphs (default 18)")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="torch.onnx's exporter: dynamo (default; the TorchScript one where it fails) or "
                        "torchscript (about 10x faster to export, deprecated by torch)")
    p.add_argument("--end-to-end", action="store_true",
                   help="also write end_to_end.onnx: image -> id map + segment table (resize, network, "
                        "panoptic post-processing in one graph; always the dynamo exporter)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an export already in DIR")
    add_settings_flags(p.add_argument_group("inference settings recorded in model.json"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..export.exporter import DEFAULT_OPSET, export_onnx
    from ..export.sessions import require
    from ..loading import load_pretrained
    from ..predictor import check_settings
    from ..settings import InferenceSettings

    given = settings_kwargs(args)
    check_settings(given)
    require("onnxruntime")  # export verifies with it: say so before minutes of work
    pretrained = load_pretrained(args.weights, preset=args.preset)
    settings = InferenceSettings.resolve(given, pretrained.inference)
    checkpoint = _checkpoint_file(args.weights)
    report = export_onnx(pretrained.model, args.out, categories=pretrained.categories, settings=settings,
                         opset=args.opset or DEFAULT_OPSET, checkpoint=checkpoint, source=pretrained.source,
                         overwrite=args.overwrite, exporter=args.exporter, end_to_end=args.end_to_end)
    print(report.line())
    return 0


def _checkpoint_file(weights: str) -> str | None:
    """The file `weights` names ("demo" and the original names resolved), for its SHA-256."""
    from ..loading import cached_path, demo_path
    from ..model.weights import WEIGHTS

    if weights == "demo":
        return str(demo_path())
    if weights in WEIGHTS:
        return str(cached_path(WEIGHTS[weights]))
    return weights
