"""panoptic-detr: panoptic segmentation with DETR."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
_HOMES = {
    "Predictor": "predictor",
    "Categories": "structures",
    "PaddedBatch": "structures",
    "PanopticResult": "structures",
    "Segment": "structures",
    "Target": "structures",
    "predict_video": "video",
    "read_frames": "video",
}
"""Public name -> the module that defines it."""
__all__ = [*_HOMES, "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that torch-free parts (eval/pq.py, the PQ worker processes, the CLI parser) load
    # without torch, whose import alone takes ~700 MB of RSS.
    if name in _HOMES:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
