"""Learning benchmark: train a small preset on synthetic scenes for a fixed time on the CPU and
report the held-out PQ / PQ-things / PQ-stuff (validation scenes from another seed) and the
training curve (benchmarks/learning_curve.png).

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_learning.py --minutes 15

The run is configs/learning_cpu.yaml (the synthetic data is generated on first use); any
`key=value` after the flags overrides it, e.g. `device=cuda batch_size=32`. With torchrun it
trains data-parallel (rank 0 reports), e.g. two single-thread processes of 4 images each:

    PYTHONPATH=src torchrun --standalone --nproc-per-node 2 benchmarks/bench_learning.py \
        --minutes 15 --threads 1 batch_size=4
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch

from panoptic_detr.train.config import load_config
from panoptic_detr.train.curves import plot_curves, read_metrics
from panoptic_detr.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training time budget")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default="runs/learning", help="run folder (replaced)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "configs" / "learning_cpu.yaml",
                      [f"time_limit={args.minutes}", f"out_dir={args.out}", *args.overrides])
    main_rank = os.environ.get("RANK", "0") == "0"
    if main_rank:
        for stale in (Path(cfg.out_dir) / "checkpoint_last.pt", Path(cfg.out_dir) / "metrics.jsonl"):
            stale.unlink(missing_ok=True)
    start = time.perf_counter()
    metrics = train(cfg, overwrite=True)
    minutes = (time.perf_counter() - start) / 60
    if not main_rank:
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    records = read_metrics(Path(cfg.out_dir) / "metrics.jsonl")
    png = ROOT / "benchmarks" / "learning_curve.png"
    title = f"{cfg.model.preset}, {minutes:.1f} min, {world} x {args.threads} threads"
    plot_curves(records, png, title=title)
    shutil.copy(Path(cfg.out_dir) / "metrics.jsonl", ROOT / "benchmarks" / "learning_metrics.jsonl")
    print(f"steps {metrics['step']} in {minutes:.1f} min (incl. data generation and evaluation), "
          f"{metrics['images_per_s']:.1f} images/s at the end")
    print(f"held-out PQ {metrics['pq']:.1f}  PQ-things {metrics['pq_th']:.1f}  "
          f"PQ-stuff {metrics['pq_st']:.1f}")


if __name__ == "__main__":
    main()
