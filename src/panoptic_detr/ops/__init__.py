"""Pure tensor functions: boxes and panoptic id maps."""
