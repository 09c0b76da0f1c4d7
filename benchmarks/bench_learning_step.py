"""Training-step throughput of the learning recipe (configs/learning_cpu.yaml): float32 against
bfloat16 autocast (`bf16: true`), optionally channels-last.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_learning_step.py --threads 2

One step = detect + matching + masks of the matched queries + losses + backward + AdamW, on the
config's synthetic training scenes (generated on first use), batch as configured. The modes
take turns on each batch (each with its own copy of the model and optimiser), so drift in the
machine's speed hits them alike; after 2 warm-up steps it prints each one's median step time,
images/s and page faults a step. A mode ending in `+per-image-masks` runs the mask head image
by image and the mask loss's upsampling through F.interpolate, the step before issue 21's
session 6 (one batch of all images' queries, upsampling as matrix products):

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_learning_step.py --keep-freed-memory \
        --steps 30 --modes float32-channels-last float32-channels-last+per-image-masks

`--keep-freed-memory` first does what `train` does (`memory.keep_freed_memory`: glibc keeps
freed blocks for reuse); compare a run with it and one without.
"""

from __future__ import annotations

import argparse
import copy
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from panoptic_detr.data.collate import collate_padded
from panoptic_detr.train import criterion
from panoptic_detr.train.config import load_config
from panoptic_detr.train.criterion import SetCriterion
from panoptic_detr.train.loop import Augmented, build_parts, training_transform
from panoptic_detr.train.model_with_loss import ModelWithLoss

ROOT = Path(__file__).resolve().parents[1]
BASE_MODES = ("float32", "bf16", "float32-channels-last", "bf16-channels-last")
MODES = BASE_MODES + tuple(f"{m}+per-image-masks" for m in BASE_MODES)


class Mode:
    """One way to run the step, with its own copy of the model and optimiser."""

    def __init__(self, name: str, cfg, parts, initial: dict) -> None:
        self.name = name
        model = copy.deepcopy(parts.model)
        model.load_state_dict(initial)  # every mode from the same weights
        self.channels_last = "channels-last" in name
        model = model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        for p in model.parameters():
            p.requires_grad_(True)
        self.per_image = name.endswith("+per-image-masks")
        if self.per_image:  # the mask head image by image (predict_masks' inference path)
            predict_masks = model.predict_masks
            model.predict_masks = lambda det, queries, one_batch=False: predict_masks(det, queries)
        self.step = ModelWithLoss(model, SetCriterion(parts.categories.num_classes, cfg.loss))
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, fused=True)  # as train
        self.amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=name.startswith("bf16"))
        self.times: list[float] = []
        self.faults: list[int] = []

    def run(self, batch, targets) -> None:
        upsample = criterion.upsample_bilinear
        if self.per_image:  # and F.interpolate's upsampling for the mask losses
            criterion.upsample_bilinear = lambda x, size: F.interpolate(
                x[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        if self.channels_last:
            batch = batch.to(memory_format=torch.channels_last)
        with self.amp:
            loss = self.step(batch, targets)["loss"]
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - t0)
        self.faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        criterion.upsample_bilinear = upsample

    def median(self) -> tuple[float, float]:
        """(median seconds, mean minor page faults) of a step after the 2 warm-up steps."""
        times, faults = sorted(self.times[2:]), self.faults[2:]
        return times[len(times) // 2], sum(faults) / len(faults)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--modes", nargs="+", default=list(BASE_MODES), choices=MODES)
    p.add_argument("--keep-freed-memory", action="store_true", help="glibc keeps freed blocks, as train does")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args()
    if args.keep_freed_memory:
        from panoptic_detr.memory import keep_freed_memory

        print("keep_freed_memory:", keep_freed_memory())
    torch.set_num_threads(args.threads)
    cfg = load_config(ROOT / "configs" / "learning_cpu.yaml", args.overrides)
    parts = build_parts(cfg)
    initial = {k: v.clone() for k, v in parts.model.state_dict().items()}
    print(f"{cfg.model.preset}, batch {cfg.batch_size}, {cfg.data.synth.size} px, {args.threads} threads")
    data = Augmented(parts.train_set, training_transform(cfg), cfg.seed)
    b = cfg.batch_size
    batches = [collate_padded([data[i] for i in range(j * b, (j + 1) * b)]) for j in range(args.steps + 2)]
    torch.manual_seed(0)
    modes = [Mode(name, cfg, parts, initial) for name in args.modes]
    for batch, targets in batches:  # the modes in turn on each batch: drift hits them alike
        for mode in modes:
            mode.run(batch, targets)
    for mode in modes:
        t, faults = mode.median()
        print(f"{mode.name:40s} {t:.3f} s/step  {cfg.batch_size / t:.1f} images/s  "
              f"{faults:.0f} page faults/step")

if __name__ == "__main__":
    main()
