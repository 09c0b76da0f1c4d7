"""Resident memory of `predict` phase by phase (import, loading, each image), for one runtime:
R50 panoptic with the reference weights at 800x1066, K = 20 kept queries forced, as
bench_runtimes.py runs it, in a fresh process.

    PYTHONPATH=src python benchmarks/probe_rss.py onnxruntime float32 [--torch-home DIR]
        [--reference ../shared/reference] [--threads 2]

Prints, after each phase, the resident set (VmRSS) and the peak so far (VmHWM) from
/proc/self/status (Linux). The export is built on first use (minutes for R50), into
`--torch-home` (default: a temporary folder); pass the folder of an earlier run to reuse it.
The weights file and the photos are made in a child process (building them from the reference
tensors would otherwise stay in this process's figures), so the phases are those of a process
that only predicts.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_runtimes import PHOTOS  # noqa: E402


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
        here = Path(__file__).resolve().parent
        made = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                               f"sys.path.insert(0, {str(here)!r}); from bench_runtimes import prepare; "
                               f"prepare(Path({str(args.reference)!r}), Path({tmp!r}))"],
                              capture_output=True, text=True)
        if made.returncode:
            sys.exit(f"preparing the weights failed:\n{made.stderr[-2000:]}")
        ckpt = Path(tmp) / "detr-r50-reference.pth"
        photos = [Path(tmp) / name for name in PHOTOS]
        import torch

        mem("import torch")
        torch.set_num_threads(args.threads)
        from bench_runtimes import ForcedK

        from panoptic_detr.data.images import load_image
        from panoptic_detr.predictor import Predictor

        mem("import panoptic_detr")
        predictor = Predictor(str(ckpt), preset="detr_r50_panoptic", runtime=args.runtime, dtype=args.dtype)
        mem("torchvision imported" if "torchvision" in sys.modules else "torchvision not imported")
        mem("Predictor")
        predictor.model = ForcedK(predictor.model, 20)
        for photo in photos:
            predictor.predict(load_image(photo))
            mem(f"predict {photo.name}")


if __name__ == "__main__":
    main()
