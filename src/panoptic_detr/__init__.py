"""panoptic-detr: panoptic segmentation with DETR."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Categories", "PaddedBatch", "PanopticResult", "Target", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so that torch-free parts (eval/pq.py, the PQ worker processes) load without
    # torch, whose import alone takes ~700 MB of RSS.
    if name in __all__:
        from . import structures

        return getattr(structures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
