"""Inference settings: one typed home for how a model is run on images.

A checkpoint recommends what belongs to the model (`RECOMMENDED`: the threshold, resize and
stuff merging it was validated with); the rest are choices of the machine. One rule of
precedence, used by every command and by the Python API: what the caller passed > what the
checkpoint recommends > the original DETR's defaults (the field defaults below).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

StuffMerge = Literal["original", "union"]
PixelAssignment = Literal["mask", "score"]
PIXEL_ASSIGNMENTS = ("mask", "score")
MaskChunk = int | None | Literal["auto"]
DTYPES = ("float32", "bfloat16")
RUNTIMES = ("torch", "onnxruntime", "openvino")

RECOMMENDED = ("threshold", "size", "max_size", "stuff_merge", "overlap_threshold", "pixel_assignment")
"""The settings a checkpoint may recommend: they belong to the model, not the machine."""


class SettingsError(ValueError):
    """An inference setting out of its range (one line naming the setting and the value)."""


@dataclass(frozen=True)
class InferenceSettings:
    """How `Predictor` runs a model; every field validated on construction."""

    threshold: float = 0.85
    """Class confidence (softmax of the best real class) a query needs to become a segment,
    in [0, 1)."""
    size: int = 800
    """Shortest image side fed to the network (DETR's resize), >= 1."""
    max_size: int = 1333
    """Cap on the longest side after resizing, >= `size`."""
    stuff_merge: StuffMerge = "original"
    """Duplicated stuff: "original" reproduces DETR (extra queries of a stuff class dropped,
    their pixels to the next best query); "union" merges them into one segment."""
    overlap_threshold: float = 0.0
    """Fragments: a thing query that wins less than this share of its own mask (the pixels
    where its mask logit is > 0) in the per-pixel argmax is dropped, and its pixels go to the
    next best query (Mask2Former's overlap threshold, on things); 0 (DETR) keeps every segment
    larger than 4 pixels. In [0, 1)."""
    pixel_assignment: PixelAssignment = "mask"
    """Which kept query each pixel goes to: "mask" (DETR) the one with the highest mask logit;
    "score" (Mask2Former's panoptic inference) the one with the highest class score x mask
    probability (the sigmoid of the logit), so a confident query wins the pixels it shares
    with a doubtful duplicate. The fragment filter counts a query's own mask the same way in
    both (logit > 0)."""
    mask_chunk: MaskChunk = "auto"
    """Queries per mask-head call (the same masks, bounded memory): an int >= 1, None for all
    at once, "auto" for `model.detr.DETRPanoptic.mask_chunk`."""
    dtype: str = "float32"
    """Network precision: "float32" (the checkpoint's answers) or "bfloat16" (about 2x faster on
    CPUs with AVX512-BF16 or AMX and on GPUs; scores and masks bfloat16-rounded, so a pixel or
    a borderline query can come out differently). Post-processing stays float32."""
    batched_network: bool | None = None
    """Run a batch through the network as one padded tensor (True) or each image alone (False);
    None: together on GPUs, alone on CPUs (see `model.inference.segment`)."""
    prepare: bool = True
    """`model.prepare_for_inference()`: frozen batch norm folded into the convolutions and
    channels-last tensors, faster on CPUs, the same outputs up to float32 rounding. It changes
    the model in place (do not train or save it afterwards)."""

    runtime: str = "torch"
    """What runs the network: "torch", or its ONNX export (built on first use and cached, see
    `export.cache`) run by "onnxruntime" (float32) or "openvino" (float32 or bfloat16), on the
    CPU. The same segments up to float32 rounding; faster on CPUs (benchmarks/RESULTS.md)."""

    def __post_init__(self) -> None:
        for name in ("threshold", "overlap_threshold"):
            t = getattr(self, name)
            if isinstance(t, bool) or not isinstance(t, int | float) or math.isnan(t) or not 0 <= t < 1:
                raise SettingsError(f"{name} must be a number from 0 up to (not including) 1, got {t!r}")
        for name in ("size", "max_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SettingsError(f"{name} must be a whole number of pixels >= 1, got {v!r}")
        if self.max_size < self.size:
            raise SettingsError(f"max_size ({self.max_size}) must be at least size ({self.size})")
        if self.stuff_merge not in ("original", "union"):
            raise SettingsError(f"stuff_merge must be 'original' or 'union', got {self.stuff_merge!r}")
        if self.pixel_assignment not in PIXEL_ASSIGNMENTS:
            raise SettingsError(f"pixel_assignment must be one of {', '.join(PIXEL_ASSIGNMENTS)}, "
                                f"got {self.pixel_assignment!r}")
        c = self.mask_chunk
        if not (c is None or c == "auto" or (isinstance(c, int) and not isinstance(c, bool) and c >= 1)):
            raise SettingsError(f"mask_chunk must be a whole number >= 1, None or 'auto', got {c!r}")
        if self.dtype not in DTYPES:
            raise SettingsError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.runtime not in RUNTIMES:
            raise SettingsError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime == "onnxruntime" and self.dtype != "float32":
            raise SettingsError("runtime onnxruntime runs float32 only; use runtime openvino for bfloat16")
        if self.batched_network not in (None, True, False):
            raise SettingsError(f"batched_network must be True, False or None, got {self.batched_network!r}")
        if self.prepare not in (True, False):
            raise SettingsError(f"prepare must be True or False, got {self.prepare!r}")

    @classmethod
    def resolve(cls, given: Mapping[str, Any] | None = None,
                recommended: Mapping[str, Any] | None = None) -> InferenceSettings:
        """The settings to run with: `given` (the caller's; None values count as not given) over
        `recommended` (a checkpoint's; only `RECOMMENDED` keys are read, others ignored) over
        the defaults. Unknown keys in `given` raise SettingsError."""
        fields = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in (given or {}).items() if v is not None}
        unknown = sorted(set(given) - fields)
        if unknown:
            raise SettingsError(f"unknown inference setting(s): {', '.join(unknown)}")
        advice = {k: v for k, v in (recommended or {}).items() if k in RECOMMENDED and v is not None}
        merged = {**advice, **given}
        # checkpoints store JSON-ish values: a size saved as 128.0 is still a size
        for name in ("size", "max_size"):
            if isinstance(merged.get(name), float) and float(merged[name]).is_integer():
                merged[name] = int(merged[name])
        return cls(**merged)

    def replace(self, **changes: Any) -> InferenceSettings:
        """A copy with `changes` (None values left as they are), validated."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def recommendation(self) -> dict[str, Any]:
        """What a checkpoint stores as its recommendation: the `RECOMMENDED` fields."""
        return {k: getattr(self, k) for k in RECOMMENDED}


DETR_DEFAULTS = InferenceSettings()
"""The original DETR's inference settings."""


def default_help(name: str) -> str:
    """The `--help` wording of a recommended setting's default: the checkpoint's, else DETR's."""
    return f"default: the checkpoint's, else {getattr(DETR_DEFAULTS, name)}"


def check_settings(given: dict[str, Any]) -> None:
    """Raise `SettingsError` for a bad value among `given` (None: not given). Each is checked
    on its own; size and max_size together only when both are given (else the checkpoint's
    recommendation may complete them)."""
    given = {k: v for k, v in given.items() if v is not None}
    for name, value in given.items():
        # a partner that cannot fail first, so the message names the setting that is wrong
        partner = {"size": {"max_size": value}, "max_size": {"size": 1}}.get(name, {})
        InferenceSettings.resolve({**partner, name: value})
    if "size" in given and "max_size" in given:
        InferenceSettings.resolve({"size": given["size"], "max_size": given["max_size"]})
