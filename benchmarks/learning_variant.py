"""One variant of the learning recipe, for comparing recipes: train configs/learning_cpu.yaml
with overrides for a time budget, then held-out PQ at several thresholds.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/learning_variant.py NAME --minutes 10 \
        --threads 1 [KEY=VALUE ...]

Two variants with one thread each run side by side on a 2-core machine (each about 10
images/s). Runs go to runs/variants/NAME; the scenes are generated once under runs/variants/data
unless `data.train=...`/`data.val=...` point elsewhere. Prints the last metrics and PQ,
PQ-things and PQ-stuff at thresholds 0.3, 0.5, 0.7 and 0.85.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from panoptic_detr.train.config import load_config
from panoptic_detr.train.evaluation import make_evaluator
from panoptic_detr.train.loop import build_parts, train

ROOT = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.3, 0.5, 0.7, 0.85)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("name")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "configs" / "learning_cpu.yaml", [
        "data.train=runs/variants/data/train", "data.val=runs/variants/data/val",
        f"time_limit={args.minutes}", f"out_dir=runs/variants/{args.name}", "eval_every=0",
        "checkpoint_every=0", *args.overrides])
    parts = build_parts(cfg)
    evaluators = {t: make_evaluator(parts.categories, t) for t in THRESHOLDS}

    def evaluate(model, val_set, device, info):
        out = {}
        for t, fn in evaluators.items():
            r = fn(model, val_set, device, info)
            out.update({f"pq@{t}": r["pq"], f"things@{t}": r["pq_th"], f"stuff@{t}": r["pq_st"]})
        out["pq"] = max(out[f"pq@{t}"] for t in THRESHOLDS)
        return out

    metrics = train(cfg, parts=parts, evaluate_fn=evaluate, overwrite=True, progress=False)
    print(args.name, json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in metrics.items()}))


if __name__ == "__main__":
    main()
