"""Start-up of a process that predicts with an exported runtime: `import` of the package, then
`Predictor(R50 file, runtime=...)` with the export already cached (the reference weights, as
bench_runtimes.py builds them), each in a fresh process, `--repeat` times.

    PYTHONPATH=src python benchmarks/bench_startup.py --torch-home DIR [--runtime openvino]
        [--dtype bfloat16] [--repeat 2] [--reference ../shared/reference]

Builds the export on the first run into `--torch-home` (reuse the folder of bench_runtimes.py
to skip that); the first OpenVINO run also fills the export's compile cache, so it is shown
apart. Prints seconds for the import and for the Predictor, and whether torchvision was imported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ONE = """
import json, sys, time
t0 = time.perf_counter()
from panoptic_detr.predictor import Predictor
t1 = time.perf_counter()
Predictor(sys.argv[1], preset="detr_r50_panoptic", runtime=sys.argv[2], dtype=sys.argv[3])
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "predictor_s": t2 - t1, "torchvision": "torchvision" in sys.modules}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--torch-home", type=Path, required=True)
    p.add_argument("--runtime", default="openvino", choices=["onnxruntime", "openvino"])
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--repeat", type=int, default=2)
    default_reference = HERE.parents[1] / "shared" / "reference"
    p.add_argument("--reference", type=Path,
                   default=Path(os.environ.get("PANOPTIC_DETR_REFERENCE", default_reference)))
    args = p.parse_args()
    env = {**os.environ, "TORCH_HOME": str(args.torch_home)}
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(HERE))
        from bench_runtimes import prepare

        ckpt, _ = prepare(args.reference, Path(tmp))
        for i in range(args.repeat + 1):
            run = subprocess.run([sys.executable, "-c", ONE, str(ckpt), args.runtime, args.dtype],
                                 env=env, capture_output=True, text=True, check=True)
            r = json.loads(run.stdout.strip().splitlines()[-1])
            what = "first (builds caches)" if i == 0 else f"run {i}"
            print(f"{args.runtime} {args.dtype} {what:22s} import {r['import_s']:.2f} s, Predictor "
                  f"{r['predictor_s']:.2f} s, torchvision imported: {r['torchvision']}", flush=True)


if __name__ == "__main__":
    main()
