"""The optimiser step and the hooks around it (detectron2's `TrainerBase` / `HookBase` /
`SimpleTrainer.run_step`).

`Trainer.run_step` is one optimiser step: micro-batches forward and backward, clipping, the
optimiser and scheduler. Everything else a run does (metrics.jsonl and the progress bar,
validation, checkpoints, curves, the export) is a `HookBase` in `hooks.py`, called before
training, after every step and after training, in the order registered.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..structures import PaddedBatch, Target
from .config import TrainConfig
from .criterion import SetCriterion
from .denoising import DenoisingQueries
from .distributed import DistInfo, reduce_mean
from .model_with_loss import ModelWithLoss

MASK_HEAD_PREFIXES = ("bbox_attention.", "mask_head.")
"""Parameters of the mask head (trained alone in the second stage of "two_stage")."""


@dataclass
class TrainState:
    """Where a run stands; saved in checkpoints (as `train_state`) and restored on resume."""

    step: int = 0
    """Optimiser steps done."""
    epoch: int = 0
    position: int = 0
    """Batches of `epoch` this process has drawn."""
    best_pq: float = -math.inf
    """Best validation PQ so far (the weights in checkpoint_best.pt)."""
    lr_drop_step: int = 0
    """The step from which the learning rates are multiplied by `optim.lr_gamma` (0: none yet):
    `optim.lr_drop`, or where `optim.lr_drop_fraction` of the run was done."""


class HookBase:
    """Something a run does around its steps; `trainer` is set by `Trainer.register`."""

    trainer: Trainer

    def before_train(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        """After the last step (not after a failure)."""


def configure_stage(model: nn.Module, cfg: TrainConfig, step: int, trainable: set[str]) -> str:
    """Set which parameters train at `step`; returns the stage name.

    trainable: the parameters the model itself leaves trainable (DETR freezes the backbone's
    stem and layer1); nothing outside it is ever unfrozen. joint / finetune: all of those (a
    backbone with lr_backbone 0 stays frozen). two_stage: the detector without the mask head
    until `stage1_steps`, then the mask head alone on the frozen detector."""
    stage = "joint"
    if cfg.schedule == "two_stage":
        stage = "detector" if step < cfg.stage1_steps else "masks"
    for name, p in model.named_parameters():
        is_mask = name.startswith(MASK_HEAD_PREFIXES)
        train_it = name in trainable and {"joint": True, "detector": not is_mask, "masks": is_mask}[stage]
        if name.startswith("backbone") and cfg.optim.lr_backbone <= 0:
            train_it = False
        p.requires_grad_(train_it)
    return stage


class Trainer:
    """Optimiser steps over a stream of (PaddedBatch, targets) until `max_steps` (or the
    config's time limit), then the hooks' `after_train`; `train()` returns `metrics`.

    What the hooks read: `state`, `done` (this is the last step), `losses` (one dict of floats per
    micro-batch of this step), `images` (this step's, over all processes), `stage`, `metrics`
    (the last logged, plus validation scores), and what earlier hooks of this step did:
    `evaluated`, `saved` (checkpoint file names)."""

    def __init__(
        self,
        model: nn.Module,
        criterion: SetCriterion,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        stream: Iterator[tuple[PaddedBatch, list[Target]]],
        state: TrainState,
        max_steps: int,
        cfg: TrainConfig,
        info: DistInfo,
        device: torch.device,
        denoising: DenoisingQueries | None = None,
    ) -> None:
        """stream: the training batches from `state`'s position on (advancing it).
        denoising: the training-only denoising queries (`cfg.denoising`; None: off)."""
        self.model, self.criterion, self.optimizer, self.scheduler = model, criterion, optimizer, scheduler
        self.denoising = denoising
        self.stream, self.state, self.max_steps = stream, state, max_steps
        self.cfg, self.info, self.device = cfg, info, device
        self.hooks: list[HookBase] = []
        # what the model itself leaves trainable, given back to it when training ends: stages
        # change requires_grad, and a later run on the same model must start from the same set
        self.trainable_at_start = {n: p.requires_grad for n, p in model.named_parameters()}
        backbone = {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
        self.trainable = {n for n, on in self.trainable_at_start.items() if on} | \
            (backbone if cfg.optim.train_stem else set())
        self.stage = configure_stage(model, cfg, state.step, self.trainable)
        self.step_module = self._wrap()
        self.amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
        # images in the model's precision (float64 models train too: tests check exactness with them)
        self.dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        self.metrics: dict[str, Any] = {}
        self.losses: list[dict[str, float]] = []
        self.images = 0
        self.done = self.evaluated = False
        self.saved: list[str] = []
        self.started = time.perf_counter()

    def register(self, *hooks: HookBase) -> None:
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    def train(self) -> dict[str, Any]:
        self.started = time.perf_counter()
        for h in self.hooks:
            h.before_train()
        self.model.train()
        try:
            while self.state.step < self.max_steps:
                self.run_step()
                self._next_stage()
                elapsed = self._elapsed_minutes()
                self._drop_on_time(elapsed)
                self.done = self.state.step == self.max_steps or 0 < self.cfg.time_limit < elapsed
                self.evaluated, self.saved = False, []
                for h in self.hooks:
                    h.after_step()
                if self.done:
                    break
        finally:
            for name, p in self.model.named_parameters():
                p.requires_grad_(self.trainable_at_start[name])
        for h in self.hooks:
            h.after_train()
        return self.metrics

    def run_step(self) -> None:
        """One optimiser step over `cfg.grad_accum` micro-batches."""
        micro_batches = [next(self.stream) for _ in range(self.cfg.grad_accum)]
        # the loss normalisers count the whole step, so accumulated micro-batches add up to it
        counts = [int((~t.iscrowd.bool()).sum()) for _, ts in micro_batches for t in ts]
        self.losses, self.images = [], 0
        for micro, (batch, targets) in enumerate(micro_batches):
            batch = batch.to(device=self.device, dtype=self.dtype, memory_format=self.memory_format)
            targets = [t.to(self.device) for t in targets]
            # DDP averages the gradients once, in the step's last backward
            last = micro == len(micro_batches) - 1
            ddp = isinstance(self.step_module, DistributedDataParallel)
            with (self.step_module.no_sync() if ddp and not last else contextlib.nullcontext()):
                with self.amp:
                    losses = self.step_module(batch, targets, counts)
                losses["loss"].backward()
            self.losses.append({k: float(v.detach()) for k, v in losses.items()})
            self.images += len(batch) * self.info.world_size
        if self.cfg.optim.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def _next_stage(self) -> None:
        if self.cfg.schedule == "two_stage" and \
                configure_stage(self.model, self.cfg, self.state.step, self.trainable) != self.stage:
            self.stage = configure_stage(self.model, self.cfg, self.state.step, self.trainable)
            # DDP registers the trainable parameters when wrapping: wrap again for the new set
            self.step_module = self._wrap()

    def _wrap(self) -> nn.Module:
        module = ModelWithLoss(self.model, self.criterion, self.cfg.all_query_masks, self.denoising)
        if not self.info.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def _elapsed_minutes(self) -> float:
        """Minutes of training so far, the same on every rank (0 without a time limit)."""
        if self.cfg.time_limit <= 0:
            return 0.0
        return reduce_mean({"t": time.perf_counter() - self.started}, self.info, self.device)["t"] / 60

    def _drop_on_time(self, elapsed: float) -> None:
        """With a time limit, `optim.lr_drop_fraction` of it spent: the learning rates drop from
        the next step on (the scheduler has already set this step's)."""
        share = self.cfg.optim.lr_drop_fraction
        if share > 0 and self.cfg.time_limit > 0 and not self.state.lr_drop_step \
                and elapsed >= share * self.cfg.time_limit:
            self.state.lr_drop_step = self.state.step + 1
