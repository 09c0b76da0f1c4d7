"""Resident memory of `predict` phase by phase (import, loading, each image), for one runtime:
R50 panoptic with the reference weights at 800x1066, K = 20 kept queries forced, as
bench_runtimes.py runs it, in a fresh process.

    PYTHONPATH=src python benchmarks/probe_rss.py onnxruntime float32 [--torch-home DIR]
        [--reference ../shared/reference] [--threads 2]

Prints, after each phase, the resident set (VmRSS) and the peak so far (VmHWM) from
/proc/self/status (Linux). The export is built on first use (minutes for R50), into
`--torch-home` (default: a temporary folder); pass the folder of an earlier run to reuse it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def mem(tag: str) -> None:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if ":" in line)
    mb = {k: int(status[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}
    print(f"{tag:32s} RSS {mb['VmRSS']:5d} MB   peak {mb['VmHWM']:5d} MB", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runtime", choices=["torch", "onnxruntime", "openvino"])
    p.add_argument("dtype", choices=["float32", "bfloat16"])
    p.add_argument("--torch-home", type=Path)
    default_reference = Path(__file__).resolve().parents[2] / "shared" / "reference"
    p.add_argument("--reference", type=Path,
                   default=Path(os.environ.get("PANOPTIC_DETR_REFERENCE", default_reference)))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    mem("start")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TORCH_HOME"] = str(args.torch_home or Path(tmp) / "torch_home")
        import torch
        import torchvision  # noqa: F401

        mem("import torch, torchvision")
        torch.set_num_threads(args.threads)
        from bench_runtimes import ForcedK, prepare

        from panoptic_detr.data.images import load_image
        from panoptic_detr.predictor import Predictor

        ckpt, photos = prepare(args.reference, Path(tmp))
        mem("import panoptic_detr; weights file")
        predictor = Predictor(str(ckpt), preset="detr_r50_panoptic", runtime=args.runtime, dtype=args.dtype)
        mem("Predictor")
        predictor.model = ForcedK(predictor.model, 20)
        for photo in photos:
            predictor.predict(load_image(photo))
            mem(f"predict {photo.name}")


if __name__ == "__main__":
    main()
