"""What a training run does around its steps, one hook each (see `trainer.py`): metrics.jsonl
and the progress bar, periodic validation, checkpoints (last, and best by PQ), the curves PNG,
the export. Registered in that order: later hooks read what earlier ones did at the same step.

Hooks that only write files run on rank 0; those that take part in collectives (metric means,
validation, the RNG states of a checkpoint) run on every rank.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from .. import checkpoint as ckpt_io
from .config import TrainConfig
from .curves import append_metrics, plot_curves, read_metrics
from .distributed import DistInfo, barrier, reduce_mean
from .trainer import HookBase

# evaluate_fn(model, val_set, device, dist_info) -> {"pq": ..., "pq_th": ..., "pq_st": ...}
EvaluateFn = Callable[[nn.Module, Dataset, torch.device, DistInfo], dict[str, float]]

PLOT_EVERY_S = 60.0
"""Seconds between redraws of curves.png while training (also drawn at checkpoints and at the end)."""


class MetricsLogger(HookBase):
    """Every `log_every` steps (and at the last): the loss terms averaged over the steps and
    processes, step, epoch, lr, images/s and stage, as a metrics.jsonl line (rank 0) and
    `trainer.metrics`; a progress bar with the loss."""

    def __init__(self, path: Path, log_every: int, progress: bool) -> None:
        self.path, self.log_every, self.progress = path, log_every, progress

    def before_train(self) -> None:
        t = self.trainer
        # with a time budget the step count is only a cap: the bar shows the minutes left instead
        # of an ETA to a step the run will not reach
        self.bar = tqdm(total=None if t.cfg.time_limit > 0 else t.max_steps, initial=t.state.step,
                        disable=not (self.progress and t.info.is_main), desc="train", unit="step",
                        dynamic_ncols=True)
        self.sums: dict[str, float] = {}
        self.images, self.t0 = 0, time.perf_counter()

    def after_step(self) -> None:
        t = self.trainer
        self.bar.update(1)
        for losses in t.losses:
            for k, v in losses.items():
                self.sums[k] = self.sums.get(k, 0.0) + v
        self.images += t.images
        step = t.state.step
        if not (step % self.log_every == 0 or t.done):
            return
        n = step % self.log_every or self.log_every
        elapsed = time.perf_counter() - self.t0
        metrics = reduce_mean({k: v / n for k, v in self.sums.items()}, t.info, t.device)
        metrics.update(step=step, epoch=t.state.epoch, lr=t.optimizer.param_groups[0]["lr"],
                       images_per_s=self.images / max(elapsed, 1e-9), stage=t.stage)
        post = {"loss": f"{metrics['loss']:.3f}", "img_s": f"{metrics['images_per_s']:.1f}"}
        if t.cfg.time_limit > 0:
            post["left"] = f"{max(0.0, t.cfg.time_limit - (time.perf_counter() - t.started) / 60):.1f}min"
        self.bar.set_postfix(post)
        if t.info.is_main:
            append_metrics(self.path, metrics)
        t.metrics = metrics
        self.sums, self.images, self.t0 = {}, 0, time.perf_counter()

    def after_train(self) -> None:
        self.bar.close()


class PeriodicEvaluation(HookBase):
    """Validation scores every `every` steps (0: only at the last), into `trainer.metrics` and
    metrics.jsonl; the model in eval mode and without autocast, as predict runs it."""

    def __init__(self, evaluate_fn: EvaluateFn, val_set: Dataset, every: int, path: Path) -> None:
        self.evaluate_fn, self.val_set, self.every, self.path = evaluate_fn, val_set, every, path

    def after_step(self) -> None:
        t = self.trainer
        step = t.state.step
        if not (t.done or (self.every > 0 and step % self.every == 0)):
            return
        t.model.eval()
        with torch.no_grad():  # float32, as predict runs the weights by default
            scores = self.evaluate_fn(t.model, self.val_set, t.device, t.info)
        t.model.train()
        t.metrics.update(scores)
        t.evaluated = True
        if t.info.is_main:
            append_metrics(self.path, {"step": step, **scores})
            tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()))


def inference_settings(cfg: TrainConfig) -> dict[str, Any]:
    """What predict should use with this run's weights by default: its validation settings."""
    return {"size": cfg.data.val_size, "max_size": cfg.data.max_size, "threshold": cfg.eval_threshold,
            "overlap_threshold": cfg.eval_overlap_threshold, "pixel_assignment": cfg.eval_pixel_assignment}


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Checkpointer(HookBase):
    """checkpoint_last.pt every `every` steps (0: only at the last) and at the last step;
    checkpoint_best.pt whenever validation PQ beats the best so far. Rank 0 writes, every rank
    gives its RNG state (so a resumed run continues each process's dropout exactly)."""

    def __init__(self, out: Path, every: int, model_config: dict[str, Any], categories: list[dict[str, Any]]
                 ) -> None:
        self.out, self.every, self.model_config, self.categories = out, every, model_config, categories

    def after_step(self) -> None:
        t = self.trainer
        files = []
        if t.done or (self.every > 0 and t.state.step % self.every == 0):
            files.append(ckpt_io.LAST)
        if t.evaluated and t.metrics.get("pq", -math.inf) > t.state.best_pq:
            t.state.best_pq = float(t.metrics["pq"])
            files.append(ckpt_io.BEST)
        if files:
            self.save(files)
            t.saved = files

    def save(self, files: list[str]) -> None:
        t = self.trainer
        rng = rng_state(t.device)
        if t.info.enabled:
            import torch.distributed as dist

            rngs: list[Any] = [None] * t.info.world_size
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if t.info.is_main:
            train_state = {**vars(t.state), "optimizer": t.optimizer.state_dict(),
                           "scheduler": t.scheduler.state_dict(), "rng": rngs,
                           "world_size": t.info.world_size, "train_config": t.cfg.to_dict()}
            if t.denoising is not None:  # training only: kept out of the model's weights
                train_state["denoising"] = {k: v.detach().cpu() for k, v in t.denoising.state_dict().items()}
            for name in files:
                ckpt_io.save_checkpoint(self.out / name, self.model_config, self.categories,
                                        t.model.state_dict(), train_state, inference_settings(t.cfg))
        barrier(t.info)


class CurvePlotter(HookBase):
    """Redraws curves.png from metrics.jsonl (rank 0): after a validation or a checkpoint, at
    the last step, else at most every `PLOT_EVERY_S` at a logging step. A redraw costs ~0.2 s
    (a tenth of a second per 100 logged lines more)."""

    def __init__(self, out: Path, log_every: int, title: str) -> None:
        self.out, self.log_every, self.title = out, log_every, title

    def before_train(self) -> None:
        self.plotted = time.perf_counter()

    def after_step(self) -> None:
        t = self.trainer
        due = t.state.step % self.log_every == 0 and time.perf_counter() - self.plotted > PLOT_EVERY_S
        if t.done or t.evaluated or t.saved or due:
            plot_curves(read_metrics(self.out / "metrics.jsonl"), self.out / "curves.png", title=self.title)
            self.plotted = time.perf_counter()


class Exporter(HookBase):
    """After training (rank 0): the best checkpoint, else the last, without training state in
    float16 at `path` (a small file to ship)."""

    def __init__(self, out: Path, path: str) -> None:
        self.out, self.path = out, path

    def after_train(self) -> None:
        best = self.out / ckpt_io.BEST
        ckpt_io.export_checkpoint(best if best.exists() else self.out / ckpt_io.LAST, self.path)
