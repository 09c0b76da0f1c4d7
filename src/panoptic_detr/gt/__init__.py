"""Ground-truth building: annotated things + a source for everything else -> COCO panoptic.

`compose` and `preview` are pure arrays; `sources` and `build` read and write files.
Instance models (Mask R-CNN) for things and for masks inside annotated boxes: `maskrcnn`
(networks, loading), `instance_model` (the source), `box_masks`; `train_instance_model`
trains the bundled stand-in. `models`: a build's model sources as one `runner.ItemModel`, so
that `build` runs them through the many-images runner.
"""

from .build import DEFAULT_MIN_AREA, BuildError, build_gt
from .report import format_summary
from .sources import SourceError, open_source

__all__ = ["DEFAULT_MIN_AREA", "BuildError", "SourceError", "build_gt", "format_summary", "open_source"]
