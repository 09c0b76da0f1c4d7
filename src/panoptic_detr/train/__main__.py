"""`python -m panoptic_detr.train` = `panoptic-detr train`, the entry point for torchrun:
`torchrun --nproc-per-node N -m panoptic_detr.train --config FILE.yaml [key=value ...]`."""

import sys

from ..cli import main

raise SystemExit(main(["train", *sys.argv[1:]]))
