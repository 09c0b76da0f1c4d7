"""Training-step throughput of the learning recipe (configs/learning_cpu.yaml): float32 against
bfloat16 autocast (`bf16: true`), optionally channels-last.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_learning_step.py --threads 2

One step = detect + matching + masks of the matched queries + losses + backward + AdamW, on the
config's synthetic training scenes (generated on first use), batch as configured. Each mode
runs `--steps` steps on the same batches after 2 warm-up steps; prints the median step time,
images/s and the page faults a step. `--keep-freed-memory` first does what `train` does
(`memory.keep_freed_memory`: glibc keeps freed blocks for reuse); compare a run with it and
one without, e.g.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_learning_step.py --modes float32-channels-last
    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/bench_learning_step.py --modes float32-channels-last \
        --keep-freed-memory
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from panoptic_detr.data.collate import collate_padded
from panoptic_detr.train.config import load_config
from panoptic_detr.train.criterion import SetCriterion
from panoptic_detr.train.loop import Augmented, build_parts, training_transform
from panoptic_detr.train.model_with_loss import ModelWithLoss

ROOT = Path(__file__).resolve().parents[1]
MODES = ("float32", "bf16", "float32-channels-last", "bf16-channels-last")


def median_step(cfg, parts, initial: dict, mode: str, steps: int) -> tuple[float, float]:
    """(median seconds, minor page faults) of a step after the warm-up."""
    torch.manual_seed(0)
    model = parts.model
    model.load_state_dict(initial)  # every mode from the same weights
    channels_last = mode.endswith("channels-last")
    model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for p in model.parameters():
        p.requires_grad_(True)
    step = ModelWithLoss(model, SetCriterion(parts.categories.num_classes, cfg.loss))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    data = Augmented(parts.train_set, training_transform(cfg), cfg.seed)
    b = cfg.batch_size
    batches = [collate_padded([data[i] for i in range(j * b, (j + 1) * b)]) for j in range(steps + 2)]
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode.startswith("bf16"))
    times, faults = [], []
    for batch, targets in batches:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        if channels_last:
            batch = batch.to(memory_format=torch.channels_last)
        with amp:
            loss = step(batch, targets)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    times, faults = sorted(times[2:]), faults[2:]
    return times[len(times) // 2], sum(faults) / len(faults)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
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
    for mode in args.modes:
        t, faults = median_step(cfg, parts, initial, mode, args.steps)
        print(f"{mode:24s} {t:.3f} s/step  {cfg.batch_size / t:.1f} images/s  {faults:.0f} page faults/step")


if __name__ == "__main__":
    main()
