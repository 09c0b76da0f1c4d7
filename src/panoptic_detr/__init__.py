"""panoptic-detr: panoptic segmentation with DETR."""

from .structures import Categories, PaddedBatch, PanopticResult, Target

__version__ = "0.1.0"
__all__ = ["Categories", "PaddedBatch", "PanopticResult", "Target", "__version__"]
