"""Files at the edge: images, COCO-panoptic datasets, synthetic scenes, ground-truth building."""
