"""`python -m panoptic_detr.train ARGS` is `python -m panoptic_detr train ARGS`, kept for the
torchrun command lines written against it (`torchrun --nproc-per-node N -m panoptic_detr.train
--config FILE.yaml`); every command also runs as `torchrun ... -m panoptic_detr COMMAND ...`.

An entry point, not library code: it runs the package's `__main__` by name instead of importing
the command line into the training layer, which the CLI imports (imports point one way).
"""

import runpy
import sys

sys.argv[1:1] = ["train"]
runpy.run_module("panoptic_detr", run_name="__main__", alter_sys=True)
