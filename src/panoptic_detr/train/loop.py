"""The training loop: a config in, metrics out.

`train(cfg)` builds the model and data from the config (or takes them ready-made as `parts`),
then runs optimiser steps until `cfg.steps`, logging to `OUT/metrics.jsonl` and `OUT/curves.png`,
evaluating PQ on the validation set and writing checkpoints (rank 0 only). `train(cfg,
resume=True)` continues from `OUT/checkpoint_last.pt` exactly where it stopped: the same
parameters, optimiser and scheduler state, samples still to come in the epoch, and RNG states.

Exactness rests on three choices: the data order is a pure function of (seed, epoch) and the
position in the epoch; every sample's augmentation is seeded by (seed, epoch, index), so neither
depends on workers or on when the run was interrupted; the global RNG (dropout) is saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.collate import collate_padded
from ..data.files import atomic_write
from ..data.transforms import PanopticTransform, eval_transforms, train_transforms
from ..structures import Categories, Target
from . import checkpoint as ckpt_io
from .config import TrainConfig
from .criterion import SetCriterion
from .model_with_loss import ModelWithLoss
from .curves import plot_curves, read_metrics
from .distributed import (
    DistInfo,
    ResumableSampler,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    reduce_mean,
    resolve_device,
)

# evaluate_fn(model, val_set, device, dist_info) -> {"pq": ..., "pq_th": ..., "pq_st": ...}
EvaluateFn = Callable[[nn.Module, Dataset, torch.device, DistInfo], dict[str, float]]

MASK_HEAD_PREFIXES = ("bbox_attention.", "mask_head.")
"""Parameters of the mask head (trained alone in the second stage of "two_stage")."""
PLOT_EVERY_S = 60.0
"""Seconds between redraws of curves.png while training (also drawn at checkpoints and at the end)."""


class TrainError(RuntimeError):
    """A run that cannot start or continue (one line)."""


@dataclass
class RunParts:
    """What a run trains on; `build_parts(cfg)` makes them from the config."""

    model: nn.Module
    model_config: dict[str, Any]
    """Architecture as stored in checkpoints (dataclasses.asdict of the DETRConfig)."""
    categories: Categories
    train_set: Dataset
    """Yields (image [3, H, W] in 0..1, Target), not yet augmented."""
    val_set: Dataset | None = None
    init_report: dict[str, list[str]] | None = None
    """Which tensors an `init` checkpoint provided (finetune: kept vs re-initialised)."""


class Augmented(Dataset):
    """(image, Target) -> transformed (normalised image, Target), seeded by (seed, epoch, index)."""

    def __init__(self, base: Dataset, transform: PanopticTransform, seed: int) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image, target = self.base[index]
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)
        return self.transform(image, target, generator=g)


def _other_synth_dataset(root: Path, n: int, seed: int, size: int) -> str | None:
    """Why the synthetic dataset already at `root` is not the one the config asks for, if it
    is not (a run never trains on a stale folder, nor overwrites it)."""
    fix = "delete the folder or point data.train/val elsewhere"
    try:
        data = json.loads((root / "panoptic.json").read_text())
        images = data["images"]
        have = (len(images), data["info"].get("seed"), images[0]["height"] if images else size)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"{root}: cannot read its panoptic.json ({e}); {fix}"
    if have != (n, seed, size):
        return (f"{root}: holds {have[0]} synthetic scenes of seed {have[1]} at {have[2]} px, "
                f"the config asks for {n} of seed {seed} at {size} px; {fix}")
    return None


def build_parts(cfg: TrainConfig, info: DistInfo | None = None) -> RunParts:
    """Datasets (generating synthetic scenes first if asked) and the model of the config."""
    from ..data.coco_panoptic import CocoPanoptic
    from ..model import build_model
    from .config import model_config

    info = info or DistInfo()
    synth = cfg.data.synth
    if synth.n_train > 0 and info.is_main:
        from ..data.synth import make_dataset

        todo = ((cfg.data.train, synth.n_train, synth.seed), (cfg.data.val, synth.n_val, synth.seed + 1))
        for root, n, seed in todo:
            if not root or n <= 0:
                continue
            if not (Path(root) / "panoptic.json").exists():
                make_dataset(root, n, seed=seed, size=(synth.size, synth.size), crowd_prob=synth.crowd_prob,
                             max_things=synth.max_things, thing_size=tuple(synth.thing_size), progress=False)
            elif problem := _other_synth_dataset(Path(root), n, seed, synth.size):
                raise TrainError(problem)
    barrier(info)
    if cfg.data.check:
        problem = _check_data([cfg.data.train, cfg.data.val], cfg.data.num_workers) if info.is_main else None
        problem = broadcast_object(problem, info)
        if problem:
            raise TrainError(problem)
    train_set = CocoPanoptic(cfg.data.train)
    val_set = CocoPanoptic(cfg.data.val) if cfg.data.val else None
    categories = train_set.categories
    mcfg = model_config(cfg, num_classes=categories.num_classes)
    model = build_model(mcfg)
    report = None
    if cfg.init:
        from .finetune import init_from

        report = init_from(model, cfg.init, reinit_class_head=cfg.schedule == "finetune")
    return RunParts(model, dataclasses.asdict(mcfg), categories, train_set, val_set, report)


def _check_data(roots: list[str], workers: int) -> str | None:
    """One line about the first dataset that fails the check, or None."""
    from ..data.check import check_dataset

    for root in filter(None, roots):
        problems, _ = check_dataset(root, decode_images=False, progress=False, workers=max(workers, 1))
        if problems:
            return (f"{root}: dataset check failed with {len(problems)} problem(s), the first: {problems[0]} "
                    f"(`panoptic-detr check {root}` lists them all; data.check=false skips the check)")
    return None


def param_groups(model: nn.Module, lr: float, lr_backbone: float) -> list[dict[str, Any]]:
    """Two AdamW groups: the backbone at its own (lower) rate, everything else."""
    backbone, rest = [], []
    for name, p in model.named_parameters():
        (backbone if name.startswith("backbone") else rest).append(p)
    groups = [{"params": rest, "lr": lr}]
    if backbone:
        groups.append({"params": backbone, "lr": lr_backbone})
    return groups


def lr_factor(step: int, warmup: int, drop: int, gamma: float) -> float:
    """Linear warm-up over `warmup` steps, times `gamma` from step `drop` on."""
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return f * (gamma if drop > 0 and step >= drop else 1.0)


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


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    if cfg.steps > 0:
        return cfg.steps
    return max(1, cfg.epochs * batches_per_epoch // cfg.grad_accum)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train(
    cfg: TrainConfig,
    resume: bool | str = False,
    parts: RunParts | None = None,
    evaluate_fn: EvaluateFn | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train as `cfg` says; returns the last logged metrics (and the last validation PQ).

    resume: True continues from OUT/checkpoint_last.pt, a path from that checkpoint.
    parts: a ready model and datasets (tests, notebooks); built from `cfg` when None.
    evaluate_fn: validation PQ; the default runs the panoptic post-processing and eval/pq.py.
    overwrite: start afresh in an OUT that already holds a checkpoint."""
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info, resume, parts, evaluate_fn, overwrite, progress)
    finally:
        cleanup_distributed()


def _train(cfg, info, resume, parts, evaluate_fn, overwrite, progress) -> dict[str, Any]:
    device = resolve_device(cfg.device, info)
    out = Path(cfg.out_dir)
    last_path = out / ckpt_io.LAST
    resume_path = Path(resume) if isinstance(resume, str) and resume else last_path
    if not resume and last_path.exists() and not overwrite:
        raise TrainError(f"{last_path}: a run is already there; pass --resume to continue it or --overwrite")
    if resume:
        # read before building anything, so a bad file fails fast with its own message
        resumed = ckpt_io.load_checkpoint(resume_path)
        if "train_state" not in resumed:
            raise TrainError(f"{resume_path}: checkpoint has no training state to resume from")

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    parts = parts or build_parts(cfg, info)
    if evaluate_fn is None and parts.val_set is not None:
        from .evaluation import make_evaluator

        evaluate_fn = make_evaluator(parts.categories, cfg.eval_threshold)
    model = parts.model.to(device)
    criterion = SetCriterion(
        num_classes=parts.categories.num_classes,
        weights=cfg.loss,
    )
    train_set = Augmented(parts.train_set, training_transform(cfg), cfg.seed)
    val_set = Augmented(parts.val_set, eval_transforms(cfg.data.val_size, cfg.data.max_size), cfg.seed) \
        if parts.val_set is not None else None

    # the fused kernel: one pass over all parameters (8 ms against 40 for the default per-tensor
    # loops on the learning recipe's 13 M parameters, 2 CPU threads), the same update rule
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.lr, cfg.optim.lr_backbone),
                                  weight_decay=cfg.optim.weight_decay, fused=device.type in ("cpu", "cuda"))
    o = cfg.optim
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, o.warmup_steps, o.lr_drop, o.lr_gamma)
    )
    per_epoch = len(train_set) // (cfg.batch_size * info.world_size)
    if per_epoch == 0:
        raise TrainError(f"{cfg.data.train or 'training set'}: {len(train_set)} images, fewer than "
                         f"one batch of {cfg.batch_size} x {info.world_size} processes")
    steps = total_steps(cfg, per_epoch)
    state = {"step": 0, "epoch": 0, "position": 0, "best_pq": -math.inf}
    if resume:
        ckpt_io.check_architecture(resumed, parts.model_config, resume_path)
        ckpt_io.load_model_state(model, resumed["model"], resume_path)
        ts = resumed["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        state.update({k: ts[k] for k in state})
        rngs = ts["rng"]
        _set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0], device)
        del resumed
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(out / "metrics.jsonl", state["step"])
        if parts.init_report is not None:
            from .finetune import summary

            tqdm.write(f"init from {cfg.init}: {summary(parts.init_report)}")
            report = json.dumps(parts.init_report, indent=1).encode()
            atomic_write(out / "init_report.json", lambda f: f.write(report))

    # what the model itself leaves trainable, recorded once: stages change requires_grad later
    if not hasattr(model, "_trainable_at_start"):
        model._trainable_at_start = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone = {n for n, _ in model.named_parameters() if n.startswith("backbone.")}
    trainable = model._trainable_at_start | (backbone if cfg.optim.train_stem else set())
    stage = configure_stage(model, cfg, state["step"], trainable)
    step_module = _wrap(ModelWithLoss(model, criterion, cfg.all_query_masks), info, device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)

    def batches():
        """Batches from the current position on, across epochs; tracks epoch and position."""
        while True:
            train_set.epoch = state["epoch"]
            sampler = ResumableSampler(train_set, info, cfg.seed, state["epoch"],
                                       skip=state["position"] * cfg.batch_size)
            loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                                collate_fn=collate_padded, num_workers=cfg.data.num_workers,
                                generator=torch.Generator())  # keeps the global RNG out of it
            for batch in loader:
                state["position"] += 1
                yield batch
            state["epoch"] += 1
            state["position"] = 0

    stream = batches()
    # with a time budget the step count is only a cap: the bar shows the minutes left instead
    # of an ETA to a step the run will not reach
    bar = tqdm(total=None if cfg.time_limit > 0 else steps, initial=state["step"],
               disable=not (progress and info.is_main), desc="train", unit="step", dynamic_ncols=True)
    sums: dict[str, float] = {}
    images, t0 = 0, time.perf_counter()
    started = plotted = t0
    metrics: dict[str, Any] = {}
    model.train()
    # images in the model's precision (float64 models train too: tests check exactness with them)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    while state["step"] < steps:
        micro_batches = [next(stream) for _ in range(cfg.grad_accum)]
        # the loss normalisers count the whole step, so accumulated micro-batches add up to it
        counts = [int((~t.iscrowd.bool()).sum()) for _, ts in micro_batches for t in ts]
        for micro, (batch, targets) in enumerate(micro_batches):
            batch = batch.to(device=device, dtype=dtype)
            targets = [t.to(device) for t in targets]
            sync = micro == cfg.grad_accum - 1 or not isinstance(step_module, DistributedDataParallel)
            with (contextlib.nullcontext() if sync else step_module.no_sync()):
                with amp:
                    losses = step_module(batch, targets, counts)
                losses["loss"].backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            images += len(batch) * info.world_size
        if o.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.clip_max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        step = state["step"]
        bar.update(1)

        if cfg.schedule == "two_stage" and configure_stage(model, cfg, step, trainable) != stage:
            stage = configure_stage(model, cfg, step, trainable)
            # DDP registers the trainable parameters when wrapping: wrap again for the new set
            step_module = _wrap(ModelWithLoss(model, criterion, cfg.all_query_masks), info, device)

        done = step == steps or (cfg.time_limit > 0 and _out_of_time(started, cfg.time_limit, info, device))
        if step % cfg.log_every == 0 or done:
            n = step % cfg.log_every or cfg.log_every
            elapsed = time.perf_counter() - t0
            metrics = reduce_mean({k: v / n for k, v in sums.items()}, info, device)
            metrics.update(step=step, epoch=state["epoch"], lr=optimizer.param_groups[0]["lr"],
                           images_per_s=images / max(elapsed, 1e-9), stage=stage)
            post = {"loss": f"{metrics['loss']:.3f}", "img_s": f"{metrics['images_per_s']:.1f}"}
            if cfg.time_limit > 0:
                post["left"] = f"{max(0.0, cfg.time_limit - (time.perf_counter() - started) / 60):.1f}min"
            bar.set_postfix(post)
            if info.is_main:
                _append_metrics(out / "metrics.jsonl", metrics)
            sums, images, t0 = {}, 0, time.perf_counter()

        evaluated = False
        if val_set is not None and evaluate_fn is not None and (
            done or (cfg.eval_every > 0 and step % cfg.eval_every == 0)
        ):
            model.eval()
            with torch.no_grad():  # float32, as predict runs the weights by default
                scores = evaluate_fn(model, val_set, device, info)
            model.train()
            metrics.update(scores)
            evaluated = True
            if info.is_main:
                _append_metrics(out / "metrics.jsonl", {"step": step, **scores})
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.1f}" for k, v in scores.items()))

        files = []
        if done or (cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0):
            files.append(ckpt_io.LAST)
        if evaluated and metrics.get("pq", -math.inf) > state["best_pq"]:
            state["best_pq"] = float(metrics["pq"])
            files.append(ckpt_io.BEST)
        if files:
            _save(files, cfg, info, device, parts, model, optimizer, scheduler, state, out)
        # redrawing costs ~0.2 s (a tenth of a second per 100 logged lines more): after an
        # evaluation or a checkpoint, at the end, else at most once a minute
        if info.is_main and (done or evaluated or files or (
                step % cfg.log_every == 0 and time.perf_counter() - plotted > PLOT_EVERY_S)):
            plot_curves(read_metrics(out / "metrics.jsonl"), out / "curves.png", title=cfg.out_dir)
            plotted = time.perf_counter()
        if done:
            break
    bar.close()
    if cfg.export and info.is_main:
        best = out / ckpt_io.BEST
        ckpt_io.export_checkpoint(best if best.exists() else out / ckpt_io.LAST, cfg.export)
    return metrics


def _out_of_time(started: float, minutes: float, info: DistInfo, device: torch.device) -> bool:
    """Whether the time budget is spent (decided the same on every rank)."""
    elapsed = reduce_mean({"t": time.perf_counter() - started}, info, device)["t"]
    return elapsed > minutes * 60


def training_transform(cfg: TrainConfig) -> PanopticTransform:
    """The transform of the config's training images (its augmentation, or the validation
    resize with `data.augment: false`); `Augmented(train_set, training_transform(cfg), seed)`
    is the training stream before batching."""
    d = cfg.data
    if not d.augment:
        return eval_transforms(d.val_size, d.max_size)
    return train_transforms(d.scales, d.max_size, d.crop_scales, d.crop_min, d.crop_max)


def _wrap(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if not info.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def inference_settings(cfg: TrainConfig) -> dict[str, Any]:
    """What predict should use with this run's weights by default: its validation settings."""
    return {"size": cfg.data.val_size, "max_size": cfg.data.max_size, "threshold": cfg.eval_threshold}


def _save(files, cfg, info, device, parts, model, optimizer, scheduler, state, out) -> None:
    """Write checkpoint `files` (names in `out`): rank 0 writes, every rank gives its RNG state."""
    rng = _rng_state(device)
    if info.enabled:
        import torch.distributed as dist

        rngs: list[Any] = [None] * info.world_size
        dist.all_gather_object(rngs, rng)
    else:
        rngs = [rng]
    if info.is_main:
        train_state = {**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "rng": rngs, "world_size": info.world_size, "train_config": cfg.to_dict()}
        for name in files:
            ckpt_io.save_checkpoint(out / name, parts.model_config, parts.categories.to_json(),
                                    model.state_dict(), train_state, inference_settings(cfg))
    barrier(info)


def _append_metrics(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, forget records logged after the checkpoint (they will be logged again)."""
    records = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda f: f.write(text.encode()))
