"""Where the network's time goes at 800x1066 (R50 preset, reference weights, CPU).

    PYTHONPATH=src python benchmarks/profile_network.py [--threads 2] [--iters 2]

Times `detect` split into backbone, transformer (with input projection and positions) and
heads with forward hooks, for the model as loaded and with channels_last memory format
(oneDNN's preferred layout for convolutions). Also the mask head for 20 queries. Reports the
median of `iters` runs after one warm-up, and the largest output difference of channels_last.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import ROOT, forced_keep, prepare  # noqa: E402


def timed_detect(model, batch, iters: int) -> tuple[dict[str, float], dict]:
    marks: dict[str, float] = {}

    def pre(name):
        return lambda *_: marks.__setitem__(name + ".start", time.perf_counter())

    def post(name):
        return lambda *_: marks.__setitem__(name + ".end", time.perf_counter())

    hooks = []
    for name, mod in (("backbone", model.backbone), ("transformer", model.transformer)):
        hooks.append(mod.register_forward_pre_hook(pre(name)))
        hooks.append(mod.register_forward_hook(post(name)))
    rows: dict[str, list[float]] = {"backbone": [], "transformer": [], "rest": [], "detect": []}
    det = None
    for it in range(iters + 1):
        start = time.perf_counter()
        det = model.detect(batch)
        total = time.perf_counter() - start
        if it:
            b = marks["backbone.end"] - marks["backbone.start"]
            t = marks["transformer.end"] - marks["transformer.start"]
            rows["backbone"].append(b)
            rows["transformer"].append(t)
            rows["rest"].append(total - b - t)
            rows["detect"].append(total)
    for h in hooks:
        h.remove()
    return {k: statistics.median(v) for k, v in rows.items()}, det


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--reference", type=Path, default=Path(
        os.environ.get("PANOPTIC_DETR_REFERENCE", ROOT.parent / "shared" / "reference")))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from panoptic_detr.data.images import load_image, preprocess
    from panoptic_detr.loading import load_pretrained
    from panoptic_detr.structures import PaddedBatch

    with tempfile.TemporaryDirectory() as work:
        ckpt, photo = prepare(args.reference, Path(work))
        pre = load_pretrained(ckpt, preset="detr_r50_panoptic")
        batch = PaddedBatch.from_images([preprocess(load_image(photo))])
    print(f"torch {torch.__version__}, {args.threads} threads, input {tuple(batch.images.shape[-2:])}, "
          f"median of {args.iters}")
    print("| layout | backbone s | transformer s | heads+rest s | detect s | masks K=20 s |")
    print("|---|---|---|---|---|---|")
    ref = None
    for layout in ("contiguous", "channels_last"):
        model = pre.model
        if layout == "channels_last":
            model = model.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            t, det = timed_detect(model, batch, args.iters)
            _, keep = forced_keep(det.pred_logits, 20)
            times = []
            for it in range(args.iters + 1):
                s = time.perf_counter()
                masks = model.predict_masks(det, keep, chunk="auto")  # the predictor's default
                if it:
                    times.append(time.perf_counter() - s)
        diff = ""
        if ref is None:
            ref = (det.pred_logits, masks[0])
        else:
            diff = (f" (max diff vs contiguous: logits {(det.pred_logits - ref[0]).abs().max():.1e}, "
                    f"masks {(masks[0] - ref[1]).abs().max():.1e})")
        print(f"| {layout} | {t['backbone']:.2f} | {t['transformer']:.2f} | {t['rest']:.2f} | "
              f"{t['detect']:.2f} | {statistics.median(times):.2f} |{diff}", flush=True)


if __name__ == "__main__":
    main()
