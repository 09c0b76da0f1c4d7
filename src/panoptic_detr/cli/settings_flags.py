"""The inference-settings flags of every command that runs a model, worded once.

Each defaults to None, "not given", so the library resolves what the user left out as the
Python API does (`settings.InferenceSettings.resolve`: the checkpoint's recommendation, else
DETR's defaults); a bad value is reported by the library as a `SettingsError`.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..settings import DETR_DEFAULTS, PIXEL_ASSIGNMENTS, RUNTIMES, default_help

NAMES = ("threshold", "size", "max_size", "stuff_merge", "overlap_threshold", "pixel_assignment", "dtype",
         "prepare", "runtime")


def add_settings_flags(group: argparse._ActionsContainer) -> None:
    group.add_argument("--threshold", type=float, default=None,
                       help=f"class confidence a query needs to be kept ({default_help('threshold')})")
    group.add_argument("--size", type=int, default=None,
                       help=f"shortest side fed to the network ({default_help('size')})")
    group.add_argument("--max-size", type=int, default=None,
                       help=f"longest side cap ({default_help('max_size')})")
    group.add_argument("--stuff-merge", choices=("original", "union"), default=None,
                       help="duplicated stuff: 'original' reproduces DETR (extra queries of a stuff class "
                            "dropped, their pixels to the next best query); 'union' merges them "
                            f"({default_help('stuff_merge')})")
    group.add_argument("--overlap-threshold", type=float, default=None, metavar="SHARE",
                       help="drop a thing that keeps less than this share of its own mask after the "
                            "per-pixel argmax (a fragment); 0 keeps all, as DETR "
                            f"({default_help('overlap_threshold')})")
    group.add_argument("--pixel-assignment", choices=PIXEL_ASSIGNMENTS, default=None,
                       help="which kept query a pixel goes to: 'mask' the highest mask logit, as DETR; "
                            "'score' the highest class score x mask probability, as Mask2Former "
                            f"({default_help('pixel_assignment')})")
    group.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                       help="network precision: bfloat16 is ~2x faster on CPUs with AVX512-BF16/AMX, "
                            f"with bfloat16-rounded scores and masks (default {DETR_DEFAULTS.dtype})")
    group.add_argument("--no-prepare", dest="prepare", action="store_const", const=False, default=None,
                       help="run the model as loaded: no BN folding or channels-last (slower; the "
                            "same segments up to float32 rounding)")
    add_runtime_flag(group)


def add_runtime_flag(group: argparse._ActionsContainer) -> None:
    group.add_argument("--runtime", choices=RUNTIMES, default=None,
                       help="what runs the network: torch, or its ONNX export (built on first use, "
                            "cached beside torch hub's cache) run by onnxruntime or openvino on the CPU "
                            "(needs the 'export' extra; default torch)")


def settings_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user gave (flags left out are not passed)."""
    return {name: getattr(args, name) for name in NAMES if getattr(args, name, None) is not None}
