"""Synthetic scene throughput on one core: rendering alone, and a whole dataset written to disk
(`--workers N`: by N processes, as `make_dataset` does by default with one per CPU).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_synth.py [--n 300] [--size 256] [--workers 2]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import torch

from panoptic_detr.data.synth import make_dataset, make_scene


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--crowd-prob", type=float, default=0.2)
    p.add_argument("--workers", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(1)
    size = (a.size, a.size)
    make_scene(0, 0, size)  # warm-up
    t, c = time.perf_counter(), time.process_time()
    for i in range(a.n):
        make_scene(0, i, size, crowd_prob=a.crowd_prob)
    render = (a.n / (time.perf_counter() - t), a.n / (time.process_time() - c))
    with tempfile.TemporaryDirectory() as tmp:
        t, c = time.perf_counter(), cpu_seconds()
        make_dataset(tmp, a.n, seed=0, size=size, crowd_prob=a.crowd_prob, progress=False, workers=a.workers)
        write = (a.n / (time.perf_counter() - t), a.n / (cpu_seconds() - c))
    # wall clock, and per CPU second of this process (what one free core would give)
    print(f"{a.size}x{a.size}, n={a.n}, crowd_prob={a.crowd_prob}: make_scene {render[0]:.1f} images/s "
          f"({render[1]:.1f} per CPU s), make_dataset (JPEG + PNG + JSON, atomic writes, {a.workers} "
          f"process{'es' if a.workers > 1 else ''}) "
          f"{write[0]:.1f} images/s ({write[1]:.1f} per CPU s)")

if __name__ == "__main__":
    main()
