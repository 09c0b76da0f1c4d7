"""Learning benchmark: train a small preset on synthetic scenes for a fixed time on the CPU and
report the held-out PQ / PQ-things / PQ-stuff (validation scenes from another seed) and the
training curve (benchmarks/learning_curve.png).

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_learning.py --minutes 15

The run is configs/learning_cpu.yaml (the synthetic data is generated on first use); any
`key=value` after the flags overrides it, e.g. `device=cuda batch_size=32`. Side by side:
`--compare configs/learning_cpu_session5.yaml` first trains that recipe for the same minutes on
the same scenes, then this one, and reports both (the figure then shows both runs' losses and
final PQ). A change of post-processing only needs one training: `--rescore
pixel_assignment=mask` also scores the run's final checkpoint with that inference setting
(over its recommendation) on the same held-out scenes, and reports it as a second row. With
torchrun it trains data-parallel (rank 0 reports), e.g. two single-thread
processes of 4 images each:

    PYTHONPATH=src torchrun --standalone --nproc-per-node 2 benchmarks/bench_learning.py \
        --minutes 15 --threads 1 batch_size=4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from panoptic_detr.train.config import load_config
from panoptic_detr.train.curves import plot_curves, read_metrics
from panoptic_detr.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "learning_cpu.yaml"


def run(config: Path, minutes: float, out: str, overrides: list[str]) -> dict:
    """Train `config` for `minutes` into `out` (replaced); the final metrics, the step records,
    and the minutes it took (data generation and evaluation included)."""
    cfg = load_config(config, [f"time_limit={minutes}", f"out_dir={out}", *overrides])
    if os.environ.get("RANK", "0") == "0":
        for stale in (Path(cfg.out_dir) / "checkpoint_last.pt", Path(cfg.out_dir) / "metrics.jsonl"):
            stale.unlink(missing_ok=True)
    start = time.perf_counter()
    metrics = train(cfg, overwrite=True)
    return {"name": config.stem, "metrics": metrics, "minutes": (time.perf_counter() - start) / 60,
            "records": read_metrics(Path(cfg.out_dir) / "metrics.jsonl"), "cfg": cfg}


def rescore(last: dict, given: list[str]) -> dict:
    """The final checkpoint of run `last` scored again on its held-out scenes with the inference
    settings `given` (KEY=VALUE, e.g. pixel_assignment=mask) over its recommendation."""
    from panoptic_detr.eval.evaluate_model import evaluate_model
    from panoptic_detr.gt.sources import DETR_OPTIONS, parse_model_spec
    from panoptic_detr.predictor import Predictor

    # typed and checked as build-gt's `model:` specs are (threshold=0.5 a number, size=96 pixels)
    checkpoint = Path(last["cfg"].out_dir) / "checkpoint_last.pt"
    settings = parse_model_spec(",".join([f"model:{checkpoint}", *given]), DETR_OPTIONS).options
    pred = Predictor(checkpoint, **settings)
    with tempfile.TemporaryDirectory() as tmp:
        res = evaluate_model(pred, last["cfg"].data.val, tmp, progress=False)
    metrics = {**last["metrics"], "pq": 100 * res["All"]["pq"], "pq_th": 100 * res["Things"]["pq"],
               "pq_st": 100 * res["Stuff"]["pq"]}
    return {**last, "name": f"{last['name']} with {' '.join(given)}", "metrics": metrics}


def side_by_side_figure(runs: list[dict], png: Path, title: str) -> None:
    """Total training loss against the step of each run, and their final PQ, things and stuff."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_loss, ax_pq) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"wspace": 0.5})
    for r in runs:
        pts = [(x["step"], x["loss"]) for x in r["records"] if "loss" in x]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax_loss.plot(xs, ys, lw=1.5, label=f"{r['name']} ({r['metrics']['step']} steps)")
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_title("total training loss")
    ax_loss.grid(alpha=0.3)
    keys = (("pq", "PQ"), ("pq_th", "things"), ("pq_st", "stuff"))
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        vals = [r["metrics"][k] for k, _ in keys]
        xs = np.arange(len(keys)) + (i - (len(runs) - 1) / 2) * width
        bars = ax_pq.bar(xs, vals, width, label=r["name"])
        ax_pq.bar_label(bars, fmt="%.1f", fontsize=9)
    ax_pq.set_xticks(range(len(keys)), [label for _, label in keys])
    ax_pq.set_ylim(0, 100)
    ax_pq.set_title("held-out PQ at the end")
    # below the axes: the names can be long (a --rescore row names its settings)
    ax_loss.legend(fontsize=9, loc="upper left", bbox_to_anchor=(0, -0.16), frameon=False)
    ax_pq.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)
    fig.suptitle(title)
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0, help="training time budget of each run")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default="runs/learning", help="run folder (replaced)")
    p.add_argument("--compare", type=Path, metavar="CONFIG",
                   help="also train this recipe first, for the same minutes on the same scenes")
    p.add_argument("--rescore", action="append", metavar="SETTING=VALUE",
                   help="also score the final checkpoint with this inference setting (repeatable)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = []
    if args.compare:
        data = load_config(RECIPE, args.overrides).data  # the same scenes for both
        runs.append(run(args.compare, args.minutes, f"{args.out}_{args.compare.stem}",
                        [f"data.train={data.train}", f"data.val={data.val}", *args.overrides]))
    runs.append(run(RECIPE, args.minutes, args.out, args.overrides))
    if os.environ.get("RANK", "0") != "0":
        return
    if args.rescore:  # the same training under other post-processing: listed first, as a --compare
        runs.insert(-1, rescore(runs[-1], args.rescore))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    last = runs[-1]
    title = f"{last['cfg'].model.preset}, {args.minutes:g} min each, {world} x {args.threads} threads"
    png = ROOT / "benchmarks" / "learning_curve.png"
    if len(runs) > 1:
        side_by_side_figure(runs, png, title)
    else:
        plot_curves(last["records"], png, title=title)
    shutil.copy(Path(last["cfg"].out_dir) / "metrics.jsonl", ROOT / "benchmarks" / "learning_metrics.jsonl")
    for r in runs:
        m = r["metrics"]
        print(f"{r['name']}: steps {m['step']} in {r['minutes']:.1f} min (incl. data generation and "
              f"evaluation), {m['images_per_s']:.1f} images/s at the end; held-out PQ {m['pq']:.1f}  "
              f"PQ-things {m['pq_th']:.1f}  PQ-stuff {m['pq_st']:.1f}")
    print(json.dumps([{"recipe": r["name"], "step": r["metrics"]["step"],
                       **{k: round(r["metrics"][k], 2) for k in ("pq", "pq_th", "pq_st")}} for r in runs]))


if __name__ == "__main__":
    main()
