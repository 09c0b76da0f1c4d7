"""Time `explain` and the report on a 256 px synthetic scene with a small model.

    PYTHONPATH=src python benchmarks/explain_speed.py [--weights demo|PATH] [--threads 2] [--short 800]

Without --weights (or when the demo checkpoint is not bundled) the model is a randomly
initialised `detr_r18_small` over the synthetic categories: the time does not depend on the
weights, only the number of kept segments (how many sheets are drawn) does, so the random
model is run at threshold 0 to keep every query that predicts a class (the worst case).
Prints one line per stage and the total, best of --repeat runs.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", default=None)
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--short", type=int, default=800, help="short side of the network input (predict: 800)")
    p.add_argument("--max-size", type=int, default=1333)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from panoptic_detr.data.synth import make_scene, synth_categories
    from panoptic_detr.explain import explain
    from panoptic_detr.explain.report import write_report
    from panoptic_detr.structures import Categories

    t = time.perf_counter()
    if args.weights:
        from panoptic_detr.loading import load_pretrained

        source = load_pretrained(args.weights)
        what, threshold = source.source, 0.85 if args.threshold is None else args.threshold
    else:
        from panoptic_detr.model import PRESETS, build_model

        cats = synth_categories()
        config = PRESETS["detr_r18_small"].with_overrides(num_classes=max(c["id"] for c in cats) + 1)
        torch.manual_seed(0)
        model = build_model(config).eval()
        source = type("Source", (), {"model": model, "categories": Categories(cats), "source": "random"})()
        what, threshold = "random detr_r18_small", 0.0 if args.threshold is None else args.threshold
    load = time.perf_counter() - t
    image, _, _ = make_scene(seed=0, index=0, size=(256, 256))

    best: dict[str, float] = {}
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        expl = explain(source, image, threshold=threshold, size=args.short, max_size=args.max_size)
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            write_report(expl, out)
        t2 = time.perf_counter()
        for k, v in {"explain": t1 - t0, "report": t2 - t1, "total": t2 - t0}.items():
            best[k] = min(best.get(k, float("inf")), v)
    n_seg = len(expl.result.segments_info)
    print(f"model: {what}; threads: {args.threads}; input {expl.input_size[1]}x{expl.input_size[0]}; "
          f"{n_seg} segments, {len(expl.queries)} queries, {expl.num_heads} heads")
    print(f"load {load:.2f} s | explain {best['explain']:.2f} s | report {best['report']:.2f} s | "
          f"explain+report {best['total']:.2f} s (best of {args.repeat})")


if __name__ == "__main__":
    main()
