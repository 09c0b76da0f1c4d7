"""The training run: a config in, metrics out.

`train(cfg)` builds the model and data from the config (or takes them ready-made as `parts`),
then a `trainer.Trainer` runs optimiser steps until `cfg.steps` with the hooks of `hooks.py`:
logging to `OUT/metrics.jsonl` and `OUT/curves.png`, evaluating PQ on the validation set and
writing checkpoints (rank 0 only). `train(cfg, resume=True)` continues from
`OUT/checkpoint_last.pt` exactly where it stopped: the same parameters, optimiser and scheduler
state, samples still to come in the epoch, and RNG states.

Exactness rests on three choices: the data order is a pure function of (seed, epoch) and the
position in the epoch; every sample's augmentation is seeded by (seed, epoch, index), so neither
depends on workers or on when the run was interrupted; the global RNG (dropout) is saved.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import checkpoint as ckpt_io
from ..data.collate import collate_padded
from ..data.files import atomic_write
from ..data.transforms import PanopticTransform, eval_transforms, train_transforms
from ..memory import keep_freed_memory
from ..structures import Categories, PaddedBatch, Target
from .config import OptimSection, TrainConfig
from .criterion import SetCriterion
from .curves import truncate_metrics
from .distributed import (
    DistInfo,
    ResumableSampler,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    resolve_device,
)
from .hooks import (
    Checkpointer,
    CurvePlotter,
    EvaluateFn,
    Exporter,
    MetricsLogger,
    PeriodicEvaluation,
    set_rng_state,
)
from .trainer import Trainer, TrainState

__all__ = ["Augmented", "EvaluateFn", "RunParts", "TrainError", "build_parts", "lr_factor", "param_groups",
           "total_steps", "train", "training_transform"]


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
    """(image, Target) -> transformed (normalised image, Target), seeded by (seed, epoch, index).

    cache: keep each transformed sample after its first use (only for a transform that gives
    the same sample every epoch: `data.cache`)."""

    def __init__(self, base: Dataset, transform: PanopticTransform, seed: int, cache: bool = False) -> None:
        self.base, self.transform, self.seed, self.epoch = base, transform, seed, 0
        self.cache: dict[int, tuple[torch.Tensor, Target]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        image, target = self.base[index]
        g = torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)
        sample = self.transform(image, target, generator=g)
        if self.cache is not None:
            self.cache[index] = sample
        return sample


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
    if cfg.init:
        _fetch_init(cfg.init)  # an unreachable checkpoint fails now, not after the dataset check
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


def _fetch_init(init: str) -> None:
    """Make sure `init` can be read: a file that exists, or a published checkpoint, downloaded
    (and hash-checked) now. Reading it into the model stays where it was, after the model is
    built, so the initial weights do not change."""
    from ..loading import cached_path
    from ..model.weights import WEIGHTS

    path = Path(init)
    if path.is_file() or init == "demo":
        return
    if init in WEIGHTS:
        cached_path(WEIGHTS[init], option="init=PATH")
        return
    names = ", ".join(["demo", *WEIGHTS])
    raise ckpt_io.CheckpointError(f"init={init}: no such file (expected a checkpoint path or a name: "
                                  f"{names})")


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
    """Linear warm-up over `warmup` steps, times `gamma` from step `drop` on (0: never)."""
    f = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return f * (gamma if drop > 0 and step >= drop else 1.0)


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    if cfg.steps > 0:
        return cfg.steps
    return max(1, cfg.epochs * batches_per_epoch // cfg.grad_accum)


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
    overwrite: start afresh in an OUT that already holds a checkpoint.

    The process keeps freed memory for reuse from here on (`memory.keep_freed_memory`): every
    step frees and allocates the same activations, which glibc would otherwise return to the
    OS and fault back in (~4,000 page faults and ~9 ms of kernel time a learning-recipe step)."""
    keep_freed_memory()
    info = init_distributed(cfg.device)
    try:
        return _train(cfg, info, resume, parts, evaluate_fn, overwrite, progress)
    finally:
        cleanup_distributed()


def _train(cfg, info, resume, parts, evaluate_fn, overwrite, progress) -> dict[str, Any]:
    device = resolve_device(cfg.device, info)
    out = Path(cfg.out_dir)
    resumed, resume_path = _resume_source(out, resume, overwrite)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    parts = parts or build_parts(cfg, info)
    if evaluate_fn is None and parts.val_set is not None:
        from .evaluation import make_evaluator

        evaluate_fn = make_evaluator(parts.categories, cfg.eval_threshold,
                                     overlap_threshold=cfg.eval_overlap_threshold,
                                     pixel_assignment=cfg.eval_pixel_assignment)
    model = parts.model.to(device)
    if cfg.channels_last:  # before the optimiser, so its state takes the parameters' layout
        model.to(memory_format=torch.channels_last)
    criterion = SetCriterion(num_classes=parts.categories.num_classes, weights=cfg.loss, costs=cfg.match)
    train_set = Augmented(parts.train_set, training_transform(cfg), cfg.seed, cache=cfg.data.cache)
    val_set = Augmented(parts.val_set, eval_transforms(cfg.data.val_size, cfg.data.max_size), cfg.seed) \
        if parts.val_set is not None else None
    denoising = None
    if cfg.denoising.groups > 0:  # built after the model: its initial weights stay the recipe's
        from .denoising import DenoisingQueries

        dim = model.query_embed.embedding_dim
        denoising = DenoisingQueries(parts.categories.num_classes, dim, cfg.denoising).to(device)
    state = TrainState()
    optimizer, scheduler = _optimizer(model, cfg.optim, device, state, denoising)
    per_epoch = len(train_set) // (cfg.batch_size * info.world_size)
    if per_epoch == 0:
        raise TrainError(f"{cfg.data.train or 'training set'}: {len(train_set)} images, fewer than "
                         f"one batch of {cfg.batch_size} x {info.world_size} processes")
    if resumed is not None:
        ckpt_io.check_architecture(resumed, parts.model_config, resume_path)
        ckpt_io.load_model_state(model, resumed["model"], resume_path)
        ts = resumed["train_state"]
        if (denoising is None) != ("denoising" not in ts):
            raise TrainError(f"{resume_path}: checkpoint trained with denoising "
                             f"{'on' if 'denoising' in ts else 'off'}, the config has it "
                             f"{'off' if denoising is None else 'on'}")
        if denoising is not None:
            denoising.load_state_dict(ts["denoising"])
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        for k in vars(state):  # in place: the scheduler reads state.lr_drop_step
            if k in ts:  # (checkpoints from before a field have its default)
                setattr(state, k, ts[k])
        rngs = ts["rng"]
        set_rng_state(rngs[info.rank] if len(rngs) == info.world_size else rngs[0], device)
        del resumed
    if info.is_main:
        _prepare_out_dir(out, state.step, cfg, parts)

    max_steps = total_steps(cfg, per_epoch)
    if cfg.optim.lr_drop_fraction == 0:  # the config's step (a resumed run takes a changed one)
        state.lr_drop_step = cfg.optim.lr_drop
    elif cfg.time_limit <= 0:  # a share of the steps
        state.lr_drop_step = max(1, round(cfg.optim.lr_drop_fraction * max_steps))
    # else a share of the time: the trainer sets it when that time has passed (a resumed run
    # keeps the step where the run it resumes dropped)
    trainer = Trainer(model, criterion, optimizer, scheduler, _batches(train_set, cfg, info, state), state,
                      max_steps, cfg, info, device, denoising)
    metrics_path = out / "metrics.jsonl"
    trainer.register(MetricsLogger(metrics_path, cfg.log_every, progress))
    if val_set is not None and evaluate_fn is not None:
        trainer.register(PeriodicEvaluation(evaluate_fn, val_set, cfg.eval_every, metrics_path))
    trainer.register(Checkpointer(out, cfg.checkpoint_every, parts.model_config, parts.categories.to_json()))
    if info.is_main:
        trainer.register(CurvePlotter(out, cfg.log_every, cfg.out_dir))
        if cfg.export:
            trainer.register(Exporter(out, cfg.export))
    return trainer.train()


def _resume_source(out: Path, resume: bool | str, overwrite: bool) -> tuple[dict[str, Any] | None, Path]:
    """The checkpoint to resume from (None when starting afresh) and its path."""
    last_path = out / ckpt_io.LAST
    resume_path = Path(resume) if isinstance(resume, str) and resume else last_path
    if not resume:
        if last_path.exists() and not overwrite:
            raise TrainError(f"{last_path}: a run is already there; pass --resume to continue it or "
                             "--overwrite")
        return None, resume_path
    # read before building anything, so a bad file fails fast with its own message
    resumed = ckpt_io.load_checkpoint(resume_path)
    if "train_state" not in resumed:
        raise TrainError(f"{resume_path}: checkpoint has no training state to resume from")
    return resumed, resume_path


def _optimizer(model: nn.Module, o: OptimSection, device: torch.device, state: TrainState,
               denoising: nn.Module | None = None):
    """AdamW over `param_groups` (and the denoising queries', at `lr`) and its learning-rate
    schedule (`lr_factor`, dropping from `state.lr_drop_step`, which the run may set later)."""
    groups = param_groups(model, o.lr, o.lr_backbone)
    if denoising is not None:
        groups.append({"params": list(denoising.parameters()), "lr": o.lr})
    # the fused kernel: one pass over all parameters (8 ms against 40 for the default per-tensor
    # loops on the learning recipe's 13 M parameters, 2 CPU threads), the same update rule
    optimizer = torch.optim.AdamW(groups, weight_decay=o.weight_decay, fused=device.type in ("cpu", "cuda"))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, o.warmup_steps, state.lr_drop_step, o.lr_gamma)
    )
    return optimizer, scheduler


def _prepare_out_dir(out: Path, step: int, cfg: TrainConfig, parts: RunParts) -> None:
    """Rank 0: the output folder, metrics.jsonl cut back to `step`, the init report; the
    temporary files of a killed run (`data.files.atomic_write`'s `.NAME.*.tmp`) removed."""
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    truncate_metrics(out / "metrics.jsonl", step)
    if parts.init_report is not None:
        from .finetune import summary

        tqdm.write(f"init from {cfg.init}: {summary(parts.init_report)}")
        report = json.dumps(parts.init_report, indent=1).encode()
        atomic_write(out / "init_report.json", lambda f: f.write(report))


def _batches(train_set: Augmented, cfg: TrainConfig, info: DistInfo,
             state: TrainState) -> Iterator[tuple[PaddedBatch, list[Target]]]:
    """Batches from the current position on, across epochs; tracks epoch and position in `state`."""
    while True:
        train_set.epoch = state.epoch
        skip = state.position * cfg.batch_size
        sampler = ResumableSampler(train_set, info, cfg.seed, state.epoch, skip=skip)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                            collate_fn=collate_padded, num_workers=cfg.data.num_workers,
                            generator=torch.Generator())  # keeps the global RNG out of it
        for batch in loader:
            state.position += 1
            yield batch
        state.epoch += 1
        state.position = 0


def training_transform(cfg: TrainConfig) -> PanopticTransform:
    """The transform of the config's training images (its augmentation, or the validation
    resize with `data.augment: false`); `Augmented(train_set, training_transform(cfg), seed)`
    is the training stream before batching."""
    d = cfg.data
    if not d.augment:
        return eval_transforms(d.val_size, d.max_size)
    return train_transforms(d.scales, d.max_size, d.crop_scales, d.crop_min, d.crop_max)
