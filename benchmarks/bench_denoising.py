"""Denoising side by side: the learning benchmark's recipe (configs/learning_cpu.yaml) and the
same recipe with denoising queries (`denoising.groups`), on the same synthetic data, seed and
time budget each, one after the other; prints the held-out PQ / things / stuff and the steps of
both. A smoke comparison for short budgets, not the 15-minute learning benchmark.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_denoising.py --minutes 4 --groups 3

Any `key=value` after the flags overrides both runs (e.g. `denoising.box_noise=0.2`).
Runs go to OUT/base and OUT/denoising (replaced); the data to the config's paths (made once).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from panoptic_detr.train.config import load_config
from panoptic_detr.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4.0, help="training time budget of each run")
    p.add_argument("--groups", type=int, default=3, help="denoising groups of the second run")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default="runs/denoising", help="run folder (its base/ and denoising/ replaced)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, extra in (("base", []), ("denoising", [f"denoising.groups={args.groups}"])):
        out = Path(args.out) / name
        shutil.rmtree(out, ignore_errors=True)
        cfg = load_config(ROOT / "configs" / "learning_cpu.yaml",
                          [f"time_limit={args.minutes}", f"out_dir={out}", "checkpoint_every=0",
                           *args.overrides, *extra])
        m = train(cfg, overwrite=True, progress=False)
        rows.append((name, m))
        print(f"{name}: steps {m['step']}, {m['images_per_s']:.1f} images/s at the end, held-out PQ "
              f"{m['pq']:.1f}  things {m['pq_th']:.1f}  stuff {m['pq_st']:.1f}", flush=True)
    print(f"{args.minutes:g} min each, denoising groups {args.groups}:")
    for name, m in rows:
        print(f"  {name:10s} steps {m['step']:5d}  PQ {m['pq']:5.1f}  things {m['pq_th']:5.1f}  "
              f"stuff {m['pq_st']:5.1f}")


if __name__ == "__main__":
    main()
