"""Everything a training run needs, as typed dataclasses read from YAML.

`load_config("configs/x.yaml", ["optim.lr=2e-4", "batch_size=4"])` reads the file, applies the
`key=value` overrides (dotted keys reach into sections; values parsed as YAML), and checks every
key and type against the dataclasses below: an unknown key or a wrong type is one
`ConfigError` line naming the file and the key. The architecture is a model preset name plus
field overrides (`model.overrides.num_queries=50`); the class count comes from the dataset.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..settings import PIXEL_ASSIGNMENTS

SCHEDULES = ("joint", "two_stage", "finetune")


MASK_RESOLUTIONS = ("image", "mask")


class ConfigError(ValueError):
    """A config file or override that does not fit `TrainConfig` (one line: file, key, problem)."""


def _check_range(obj: Any, name: str, low: float, *, above: bool = False, high: float | None = None,
                 below: bool = False, range_text: str) -> None:
    """ConfigError naming `name`, its value and `range_text` unless low <= value (low < value
    when `above`) and value <= high (value < high when `below`); NaN and infinities never fit."""
    v = getattr(obj, name)
    values = v if isinstance(v, list) else [v]
    for x in values:
        ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
        ok = ok and (x > low if above else x >= low)
        if ok and high is not None:
            ok = x < high if below else x <= high
        if not ok:
            raise ConfigError(f"{name}: {v!r} is out of range (expected {range_text})")


def _at_least(obj: Any, names: str, low: int, why: str = "") -> None:
    for name in names.split():
        _check_range(obj, name, low, range_text=f"a whole number >= {low}{why}")


@dataclass
class ModelSection:
    preset: str = "detr_r18_small"
    """Name in `model.config.PRESETS`."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """`DETRConfig` fields to change (num_classes is set from the dataset)."""


@dataclass
class SynthSection:
    """Synthetic scenes generated into the data paths when they do not exist yet."""

    n_train: int = 0
    """Scenes in the training set (0: do not generate; use existing data)."""
    n_val: int = 0
    seed: int = 0
    """Training-set seed; the validation set uses seed + 1 (held out)."""
    size: int = 128
    """Side of the square scenes in pixels."""
    crowd_prob: float = 0.0
    """Probability of a crowd region in a scene (crowd segments are left out of the losses)."""
    max_things: int = 10
    """Things per scene are drawn from 0..max_things (occluded ones may vanish)."""
    thing_size: list[float] = field(default_factory=lambda: [0.12, 0.40])
    """Range of a thing's diameter as a fraction of the scene side."""

    def __post_init__(self) -> None:
        _at_least(self, "n_train n_val max_things", 0, "; 0: none")
        _at_least(self, "size", 16)
        _check_range(self, "crowd_prob", 0, high=1, range_text="a probability from 0 to 1")
        _check_range(self, "thing_size", 0, above=True, high=1, range_text="fractions in (0, 1]")
        if len(self.thing_size) != 2 or self.thing_size[0] > self.thing_size[1]:
            raise ConfigError(f"thing_size: {self.thing_size!r} is not a range (expected [low, high])")


@dataclass
class DataSection:
    train: str = ""
    """Training dataset root (COCO panoptic layout, see data/coco_panoptic.py)."""
    val: str = ""
    """Validation dataset root for periodic PQ ("" = none)."""
    synth: SynthSection = field(default_factory=SynthSection)
    augment: bool = True
    """DETR's flip / multi-scale / crop recipe; False: resize to `val_size` only."""
    scales: list[int] = field(default_factory=lambda: [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800])
    """Candidate shortest sides of the multi-scale resize."""
    max_size: int = 1333
    """Longest side after resizing."""
    crop_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_min: int = 384
    crop_max: int = 600
    val_size: int = 800
    """Shortest side for validation images (and training ones without augmentation)."""
    check: bool = True
    """Check the datasets (`panoptic-detr check`'s rules, images not decoded) before training,
    and stop with the first problem if any; turn off for a large dataset already checked."""
    num_workers: int = 0
    """DataLoader worker processes (augmentation is seeded per sample: results do not depend
    on this)."""
    cache: bool = False
    """Keep the resized training samples in memory after their first epoch (without
    augmentation they are the same every epoch; later epochs then skip decoding and resizing:
    about 4 x 3 x H x W bytes an image plus its masks). Needs `augment: false` and
    `num_workers: 0`; the training is the same, step for step."""

    def __post_init__(self) -> None:
        _at_least(self, "scales max_size crop_scales crop_min crop_max val_size", 1)
        _at_least(self, "num_workers", 0, "; 0: load in the training process")
        if self.cache and (self.augment or self.num_workers):
            raise ConfigError("cache: keeps samples that are the same every epoch, so it needs "
                              "augment: false and num_workers: 0")
        if self.crop_max < self.crop_min:
            raise ConfigError(f"crop_max: {self.crop_max} is out of range "
                              f"(expected >= crop_min, {self.crop_min})")


@dataclass
class OptimSection:
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    """Learning rate of the backbone (0 = frozen: its parameters get no gradient)."""
    weight_decay: float = 1e-4
    clip_max_norm: float = 0.1
    """Gradient norm clipping (0 = off)."""
    train_stem: bool = False
    """Also train the backbone's stem and layer1, which DETR keeps frozen because they come
    pretrained; for a backbone trained from scratch."""
    lr_drop: int = 0
    """Optimiser step after which every learning rate is multiplied by `lr_gamma` (0 = never)."""
    lr_drop_fraction: float = 0.0
    """The same drop once this share of the run is done (0 = never; not with `lr_drop`): of its
    `time_limit` when it has one (for runs of a fixed time, whose number of steps depends on
    the machine; the step where it happened is kept in checkpoints, so a resumed run drops
    where the first one did), else of its steps."""
    lr_gamma: float = 0.1
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many optimiser steps."""

    def __post_init__(self) -> None:
        _check_range(self, "lr", 0, above=True, range_text="a finite number > 0")
        _check_range(self, "lr_backbone", 0, range_text="a finite number >= 0; 0: frozen backbone")
        _check_range(self, "weight_decay", 0, range_text="a finite number >= 0")
        _check_range(self, "clip_max_norm", 0, range_text="a finite number >= 0; 0: off")
        _check_range(self, "lr_gamma", 0, above=True, range_text="a finite number > 0")
        _at_least(self, "lr_drop warmup_steps", 0, "; 0: none")
        _check_range(self, "lr_drop_fraction", 0, high=1, below=True,
                     range_text="a share of the run, >= 0 and < 1; 0: none")
        if self.lr_drop_fraction > 0 and self.lr_drop > 0:
            raise ConfigError("optim: give lr_drop (a step) or lr_drop_fraction (a share of the run), "
                              "not both")


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the Hungarian matching costs (`train/matcher.py`), the `match:` section:
    DETR's class/box/GIoU costs, and optionally Mask2Former's mask costs. With `mask_weight` or
    `dice_weight` above 0 the mask head runs on all queries before matching (about twice the
    mask head's cost) and the final layer is matched on its masks too; the auxiliary layers,
    which have no masks, keep the box costs. 0 (the default) is DETR's matching."""

    class_weight: float = 1.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    mask_weight: float = 0.0
    """Mean sigmoid cross-entropy between a query's mask logits and a segment's mask."""
    dice_weight: float = 0.0
    """1 - soft Dice between a query's mask and a segment's."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_range(self, f.name, 0, range_text="a finite weight >= 0; 0: cost off")

    @property
    def uses_masks(self) -> bool:
        return self.mask_weight > 0 or self.dice_weight > 0


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms in the total (DETR's panoptic defaults); the `loss:` section."""

    ce: float = 1.0
    bbox: float = 5.0
    giou: float = 2.0
    mask: float = 1.0
    """Sigmoid focal loss on mask logits."""
    dice: float = 1.0
    eos_coef: float = 0.1
    """Relative class weight of no-object in the cross-entropy."""
    semantic: float = 0.0
    """Dense class loss on the encoder memory through the class head (`criterion.semantic_loss`);
    0, the default, is DETR's loss. Speeds up learning from scratch."""
    segment: float = 0.0
    """Class loss of every ground-truth segment's mask-pooled encoder memory through the class
    head (`criterion.segment_class_loss`); 0, the default, is DETR's loss."""
    mask_resolution: str = "image"
    """Where the mask losses compare: "image" (DETR's: the mask logits upsampled to the padded
    image) or "mask" (the targets area-averaged to the mask head's grid, H/4 x W/4, as soft
    targets: 16x fewer pixels, a faster step). Not a weight."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "mask_resolution":
                _check_range(self, f.name, 0, range_text="a finite weight >= 0; 0: term off")
        if self.mask_resolution not in MASK_RESOLUTIONS:
            raise ConfigError(f"mask_resolution: must be one of {MASK_RESOLUTIONS}, "
                              f"got {self.mask_resolution!r}")


@dataclass
class DenoisingSection:
    """Denoising training (DN-DETR; masks as Mask DINO), the `denoising:` section: groups of
    noised ground-truth boxes and labels go into the decoder beside the learned queries and
    learn to reconstruct their own segment (class, box, mask; no matching). Training only: the
    model, its checkpoints and inference are unchanged. Off (groups 0) by default: the original
    recipe runs exactly as without this section. See `train/denoising.py`."""

    groups: int = 0
    """Noised copies of every image's segments per step (0: off)."""
    box_noise: float = 0.4
    """Box noise scale: the centre moves by up to box_noise x half the box's size on each axis,
    width and height scale by a factor in [1 - box_noise, 1 + box_noise] (DN-DETR's 0.4)."""
    label_flip: float = 0.2
    """Probability that a denoising query's label is replaced by a random class (DN-DETR's 0.2);
    its target stays the true class."""
    masks: bool = True
    """Also the mask losses of the denoising queries (the mask head runs on them too)."""

    def __post_init__(self) -> None:
        _at_least(self, "groups", 0, "; 0: off")
        _check_range(self, "box_noise", 0, high=1, below=True,
                     range_text="a number from 0 up to (not including) 1")
        _check_range(self, "label_flip", 0, high=1, range_text="a probability from 0 to 1")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossWeights = field(default_factory=LossWeights)
    match: MatchCosts = field(default_factory=MatchCosts)
    denoising: DenoisingSection = field(default_factory=DenoisingSection)
    schedule: str = "joint"
    """"joint" (everything at once), "two_stage" (detector for `stage1_steps`, then the frozen
    detector with the mask head), "finetune" (start from `init`, class head re-initialised)."""
    stage1_steps: int = 0
    """two_stage: optimiser steps of the detector-only stage."""
    init: str = ""
    """Weights to start from: a project checkpoint, an original DETR checkpoint file, or an
    original preset name ("" = from scratch). Required by "finetune"."""
    steps: int = 0
    """Optimiser steps in all (0: from `epochs`)."""
    epochs: int = 1
    time_limit: float = 0.0
    """Minutes of training after which the run ends as if `steps` were reached (0 = none);
    the final evaluation and checkpoint follow."""
    batch_size: int = 2
    """Images per process per forward pass."""
    grad_accum: int = 1
    """Forward passes per optimiser step."""
    bf16: bool = False
    """bfloat16 autocast for the forward pass."""
    channels_last: bool = False
    """Train with the convolutions' weights and the images in channels-last memory (faster
    convolutions on CPUs; the same maths up to float rounding). Checkpoints are unchanged."""
    all_query_masks: bool = False
    """Run the mask head on all queries (the original's cost; for comparison only)."""
    eval_every: int = 0
    """Optimiser steps between validation PQ (0: only at the end, if a val set is given)."""
    checkpoint_every: int = 0
    """Optimiser steps between checkpoints (0: only at the end)."""
    log_every: int = 10
    """Optimiser steps between metrics.jsonl lines."""
    out_dir: str = "runs/train"
    export: str = ""
    """At the end, also write the best (else last) checkpoint here without training state, in
    float16 (a small file to ship, e.g. the demo's) ("" = no export)."""
    seed: int = 0
    device: str = "auto"
    """"auto" (cuda when available), "cpu", "cuda", "cuda:1", ..."""
    eval_threshold: float = 0.85
    """Query confidence threshold of the panoptic post-processing in validation."""
    eval_overlap_threshold: float = 0.0
    """The post-processing's fragment filter in validation (`InferenceSettings.overlap_threshold`;
    0: off, as DETR). Like `eval_threshold`, it becomes the checkpoint's recommendation."""
    eval_pixel_assignment: str = "mask"
    """Which query a pixel goes to in validation (`InferenceSettings.pixel_assignment`: "mask"
    as DETR, "score" as Mask2Former); it becomes the checkpoint's recommendation too."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule: must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "finetune" and not self.init:
            raise ConfigError("init: the finetune schedule needs weights to start from")
        _at_least(self, "batch_size grad_accum epochs log_every", 1)
        _at_least(self, "steps", 0, "; 0: from epochs")
        _at_least(self, "stage1_steps eval_every checkpoint_every", 0)
        _check_range(self, "time_limit", 0, range_text="minutes, a finite number >= 0; 0: none")
        _check_range(self, "eval_threshold", 0, high=1, below=True,
                     range_text="a number from 0 up to (not including) 1")
        _check_range(self, "eval_overlap_threshold", 0, high=1, below=True,
                     range_text="a number from 0 up to (not including) 1; 0: off")
        if self.eval_pixel_assignment not in PIXEL_ASSIGNMENTS:
            raise ConfigError(f"eval_pixel_assignment: must be one of {PIXEL_ASSIGNMENTS}, "
                              f"got {self.eval_pixel_assignment!r}")
        if self.denoising.groups > 0 and self.all_query_masks:
            raise ConfigError("denoising.groups: denoising runs the mask head on chosen queries only; "
                              "turn all_query_masks off")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(value: Any, tp: Any, key: str) -> Any:
    """`value` converted to type `tp`, or ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _from_dict(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check(value, option, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{key}: expected null, got {value!r}")
        return None
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(names)})")
    kwargs = {k: _check(v, hints[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{prefix}{e}") from None


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = data
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {p} is not a section")
        node = child
    node[last] = value


def config_from_dict(
    data: dict[str, Any], overrides: Sequence[str] = (), source: str = "<config>"
) -> TrainConfig:
    """A TrainConfig from a (YAML-shaped) dict plus `key=value` overrides."""
    data = dict(data or {})
    try:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value")
            key, text = item.split("=", 1)
            try:
                value = yaml.safe_load(text) if text.strip() else ""
            except yaml.YAMLError:
                value = text  # not YAML: keep the raw text (a path, a name)
            _set_dotted(data, key.strip(), value)
        cfg = _from_dict(TrainConfig, data)
        model_config(cfg)  # the preset and its overrides, checked now rather than at build time
        return cfg
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config file (None: defaults only) and apply `key=value` overrides."""
    if path is None:
        return config_from_dict({}, overrides)
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return config_from_dict(data or {}, overrides, source=str(path))


def model_config(cfg: TrainConfig, num_classes: int | None = None) -> Any:
    """The DETRConfig of the run: preset + overrides (+ the dataset's class count)."""
    from ..model.config import PRESETS

    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown {cfg.model.preset!r} (known: {', '.join(PRESETS)})")
    overrides = dict(cfg.model.overrides)
    if num_classes is not None:
        given = overrides.get("num_classes")
        if given is not None and given != num_classes:
            raise ConfigError(f"model.overrides.num_classes={given} but the dataset needs {num_classes}")
        overrides["num_classes"] = num_classes
    known = {f.name for f in dataclasses.fields(PRESETS[cfg.model.preset])}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"model.overrides: unknown field {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    try:
        return PRESETS[cfg.model.preset].with_overrides(**overrides)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.overrides: {e}") from None
