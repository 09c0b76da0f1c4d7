"""Images/s of `predict` and `evaluate --weights` with the demo model: 1 process x 2 threads
vs 2 processes x 1 thread (torchrun, gloo), decoding and preprocessing in 0 / 1 / 2 DataLoader
workers, and 2 processes whose outputs rank 0 alone writes (`--gather-outputs`).

    PYTHONPATH=src python benchmarks/bench_distributed_inference.py [--images 150] [--size 128 160]
        [--wait-policy PASSIVE|ACTIVE|default]

Synthetic scenes (`data.synth.make_dataset`, seed 11) of `--size` (height, width), the demo
model at its own size (shortest side 128). Every configuration runs in fresh processes (the
2-process ones under `torchrun --standalone --nproc-per-node 2`); each process imports and
joins its process group first, then the timed part is the library call the command makes
(`runner.predict_files` / `eval.evaluate_model.run_evaluation`: model load, hashing and
naming, decoding, network, writing, predictions.json, PQ), ended on rank 0 after the run's
last collective. 1 process runs with torch.set_num_threads(2); under torchrun each process
gets cores // 2 = 1 thread (`parallel.threads_per_process`).

--wait-policy sets OMP_WAIT_POLICY for every process (default PASSIVE): on a CPU that other
jobs oversubscribe, OpenMP threads that spin at their barriers (libgomp's default) wait for
descheduled partners, and 2 threads in one process ran 10-20x slower than 1 (RESULTS.md);
"default" leaves the variable as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"size": 128, "max_size": 160, "threshold": 0.5}


def worker(args: argparse.Namespace) -> None:
    """One process of a configuration: join, wait for the others, time the call."""
    import torch

    from panoptic_detr.eval.evaluate_model import run_evaluation
    from panoptic_detr.parallel import barrier, init_distributed
    from panoptic_detr.runner import predict_files

    info = init_distributed("cpu")
    if not info.enabled:
        torch.set_num_threads(args.threads)
    barrier(info)
    start = time.perf_counter()
    if args.command == "predict":
        summary = predict_files([str(Path(args.data) / "images")], args.out, "demo", progress=False,
                                loader_workers=args.loader_workers, gather_outputs=args.gather_outputs,
                                **SETTINGS)
        assert not summary.failed and summary.error is None, summary
        n = len(summary.done)
    else:
        results, _ = run_evaluation(weights="demo", data=args.data, out=args.out, progress=False,
                                    workers=0, loader_workers=args.loader_workers, **SETTINGS)
        n = results["images"]
    seconds = time.perf_counter() - start
    if info.is_main:
        print(json.dumps({"images": n, "seconds": seconds, "threads": torch.get_num_threads(),
                          "processes": info.world_size}))


def run(command: str, processes: int, loader_workers: int, gather: bool, data: Path, out: Path,
        wait_policy: str) -> dict:
    script = [str(Path(__file__).resolve()), "--worker", command, "--data", str(data), "--out", str(out),
              "--loader-workers", str(loader_workers), *(["--gather-outputs"] if gather else [])]
    if processes == 1:
        argv = [sys.executable, *script, "--threads", "2"]
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                str(processes), *script]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=150)
    p.add_argument("--size", type=int, nargs=2, default=(128, 160), metavar=("H", "W"))
    p.add_argument("--wait-policy", choices=("PASSIVE", "ACTIVE", "default"), default="PASSIVE")
    p.add_argument("--worker", choices=("predict", "evaluate"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--loader-workers", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--gather-outputs", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.command = args.worker
        worker(args)
        return
    sys.path.insert(0, str(ROOT / "src"))
    from panoptic_detr.data.synth import make_dataset

    configs = [("predict", 1, 0, False), ("predict", 2, 0, False), ("predict", 2, 0, True),
               ("predict", 1, 1, False), ("predict", 1, 2, False), ("evaluate", 1, 0, False),
               ("evaluate", 2, 0, False), ("evaluate", 1, 1, False), ("evaluate", 1, 2, False)]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_dataset(data, args.images, seed=11, size=tuple(args.size), progress=False)
        print(f"{args.images} synthetic scenes {args.size[0]}x{args.size[1]}, demo model, "
              f"{os.cpu_count()} CPUs, OMP_WAIT_POLICY {args.wait_policy}")
        print(f"{'command':9s} {'processes x threads':>20s} {'loader workers':>15s} {'gathered':>9s} "
              f"{'seconds':>8s} {'images/s':>9s}")
        for k, (command, processes, loaders, gather) in enumerate(configs):
            r = run(command, processes, loaders, gather, data, Path(tmp) / f"out{k}", args.wait_policy)
            gathered = "yes" if gather else ""
            print(f"{command:9s} {processes:>16d} x {r['threads']:<2d} {loaders:>15d} {gathered:>9s} "
                  f"{r['seconds']:8.2f} {r['images'] / r['seconds']:9.1f}", flush=True)


if __name__ == "__main__":
    main()
