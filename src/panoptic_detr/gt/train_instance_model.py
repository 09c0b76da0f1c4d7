"""Train the small Mask R-CNN stand-in (`gt.maskrcnn.build_small`) on synthetic scenes.

Reproducible from the seed: scene `k` of step `s` is `data.synth.make_scene(seed, s * batch + k)`
(a fresh scene every time, nothing on disk), and torch's generator is seeded. The bundled
`assets/demo/demo_maskrcnn.pt` was made with

    PYTHONPATH=src python -m panoptic_detr.gt.train_instance_model \
        src/panoptic_detr/assets/demo/demo_maskrcnn.pt --steps 120

(2026-12-05: 30 minutes of wall time on two CPU cores shared with five other jobs, far less
CPU time; losses at the end: classifier 0.63, box 0.60, mask 0.42, objectness 0.05). 120
steps of 4 scenes is little: the mask head inside a given box is what it learns best.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_checkpoint
from ..data.synth import make_scene, synth_categories
from .maskrcnn import MaskRCNNConfig, build_small


def scene_target(seed: int, index: int, size: tuple[int, int]
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(image [3, H, W] float 0..1, torchvision target: boxes xyxy, labels 1-6, masks [N, H, W])."""
    image, id_map, segments = make_scene(seed, index, size)
    things = [s for s in segments if s["category_id"] <= 6 and not s["iscrowd"]]
    boxes = [[x, y, x + w, y + h] for x, y, w, h in (s["bbox"] for s in things)]
    masks = np.stack([id_map == s["id"] for s in things]) if things else np.zeros((0, *size), bool)
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255), {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([s["category_id"] for s in things], dtype=torch.int64),
        "masks": torch.from_numpy(masks).to(torch.uint8),
    }


def train_instance_model(
    out: str | Path,
    steps: int = 120,
    seed: int = 0,
    batch_size: int = 4,
    size: tuple[int, int] = (256, 256),
    lr: float = 0.02,
    config: MaskRCNNConfig | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train from scratch for `steps` SGD steps and save a project checkpoint (float16 weights,
    config = the architecture) to `out`. Returns its path."""
    config = config or MaskRCNNConfig()
    torch.manual_seed(seed)
    model = build_small(config).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    warmup = min(100, steps // 10)

    def rate(step: int) -> float:  # linear warm-up, then cosine to 5 %
        if step < warmup:
            return (step + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    start, running = time.time(), {}
    for step in range(steps):
        batch = [scene_target(seed, step * batch_size + k, size) for k in range(batch_size)]
        losses = model([b[0] for b in batch], [b[1] for b in batch])
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)  # the first steps from scratch can spike
        opt.step()
        sched.step()
        for k, v in losses.items():
            running[k] = 0.9 * running.get(k, v.item()) + 0.1 * v.item()
        if (step + 1) % 10 == 0 or step + 1 == steps:
            parts = " ".join(f"{k.removeprefix('loss_')} {v:.3f}" for k, v in running.items())
            log(f"step {step + 1}/{steps} {time.time() - start:.0f}s lr {sched.get_last_lr()[0]:.4f} {parts}")
    categories = [c for c in synth_categories() if c["isthing"]]
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    return save_checkpoint(out, config.to_dict(), categories, state,
                           inference={"threshold": 0.5, "trained": {"steps": steps, "seed": seed,
                                                                    "batch_size": batch_size, "lr": lr}})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    a = p.parse_args(argv)
    path = train_instance_model(a.out, a.steps, a.seed, a.batch_size, lr=a.lr,
                                log=lambda s: print(s, flush=True))
    print(path)


if __name__ == "__main__":
    main()
