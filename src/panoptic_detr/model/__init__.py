"""The DETR panoptic network and nothing else: config + presets, backbone, position encoding,
transformer, heads, and the import of original checkpoints' weights. Pure: no file access."""

from .config import PRESETS, DETRConfig
from .detr import Detection, DETRPanoptic, LayerOutput, build_model, count_parameters

__all__ = ["PRESETS", "DETRConfig", "DETRPanoptic", "Detection", "LayerOutput", "build_model",
           "count_parameters"]
