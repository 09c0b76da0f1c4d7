"""Synthetic scene throughput on one core: rendering alone, and a whole dataset written to disk.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_synth.py [--n 300] [--size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from panoptic_detr.data.synth import make_dataset, make_scene


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--crowd-prob", type=float, default=0.2)
    a = p.parse_args()
    torch.set_num_threads(1)
    size = (a.size, a.size)
    make_scene(0, 0, size)  # warm-up
    t, c = time.perf_counter(), time.process_time()
    for i in range(a.n):
        make_scene(0, i, size, crowd_prob=a.crowd_prob)
    render = (a.n / (time.perf_counter() - t), a.n / (time.process_time() - c))
    with tempfile.TemporaryDirectory() as tmp:
        t, c = time.perf_counter(), time.process_time()
        make_dataset(tmp, a.n, seed=0, size=size, crowd_prob=a.crowd_prob, progress=False)
        write = (a.n / (time.perf_counter() - t), a.n / (time.process_time() - c))
    # wall clock, and per CPU second of this process (what one free core would give)
    print(f"{a.size}x{a.size}, n={a.n}, crowd_prob={a.crowd_prob}: make_scene {render[0]:.1f} images/s "
          f"({render[1]:.1f} per CPU s), make_dataset (JPEG + PNG + JSON, atomic writes) "
          f"{write[0]:.1f} images/s ({write[1]:.1f} per CPU s)")

if __name__ == "__main__":
    main()
