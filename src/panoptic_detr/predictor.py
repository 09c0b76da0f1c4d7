"""Image in, `PanopticResult` out: decode, DETR preprocessing, the network, post-processing.

`Predictor` is the Python API: around a checkpoint name or path, or around a model already
loaded, with `settings.InferenceSettings`. Many files in, files out (`panoptic-detr predict`)
is `runner.predict_files`.

The network runs in two steps: `detect` for every query, then the mask head only for the
queries the class threshold keeps (it is per query, so their masks are the same as in a full
forward); `model.inference.segment` holds that path. On a GPU a batch runs as one padded
tensor, and post-processing crops each image's own region of the masks, so a result does not
depend on the other images of its batch beyond what the network sees. On a CPU each image of a
batch runs alone, at its own size: batching saves no arithmetic there, its 4x larger
activations cost page faults (benchmarks/RESULTS.md), and each result is then exactly the
image's own.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .data.images import as_rgb, preprocess
from .loading import Pretrained, WeightsError, load_pretrained
from .model import DETRPanoptic
from .model.inference import Segmentation, segment
from .settings import InferenceSettings, MaskChunk, SettingsError, StuffMerge, check_settings
from .structures import Categories, PaddedBatch, PanopticResult

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor
"""One image, as `data.images.as_rgb` takes it."""

NETWORK_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""torch dtype of each `InferenceSettings.dtype` (post-processing is float32 either way)."""


class Predictor:
    """Panoptic segmentation of RGB images with a DETR model.

    weights: "demo", a name of the original COCO checkpoints or a checkpoint path (see
    `loading.load_pretrained`; preset: the architecture for files that do not say), a loaded
    `loading.Pretrained`, or a bare `DETRPanoptic` with its `categories`. A model passed in is
    used as it is, and changed in place when `prepare` (see `InferenceSettings.prepare`).
    settings: the `InferenceSettings` to run with, complete (the checkpoint's recommendation
    is then not read); **given: single settings (threshold=, size=, max_size=, stuff_merge=,
    mask_chunk=, dtype=, batched_network=, prepare=, runtime=) over `settings`, else over what the
    checkpoint recommends, else DETR's defaults (`InferenceSettings.resolve`). None values
    count as not given. A bad value raises `SettingsError` before any weights load.
    batch_size: images per network call of `predict_batch` (how many images are run, not
    how: a choice of the caller, not an inference setting).

    Attributes: `settings`, `model`, `categories`, `pretrained`, and `device` / `dtype`, the
    model's torch device and dtype. With an exported runtime, weights loaded here are released
    once the export is found (`Pretrained.release`): `pretrained.model` reads them again.
    """

    def __init__(
        self,
        weights: str | os.PathLike[str] | Pretrained | DETRPanoptic = "demo",
        settings: InferenceSettings | None = None,
        *,
        categories: Categories | None = None,
        preset: str | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 1,
        **given: Any,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        if settings is not None and not isinstance(settings, InferenceSettings):
            raise TypeError(f"settings must be an InferenceSettings, got {type(settings).__name__} "
                            "(preset, device and the single settings are keyword arguments)")
        check_settings(given)  # before anything loads
        # an exported runtime asked for: the torch model is built only if its export is not
        # cached yet (export/cache.py); weights read from a file only, a caller's model is kept
        runtime = given.get("runtime") or (settings.runtime if settings is not None else None)
        pretrained = _as_pretrained(weights, categories, preset, device,
                                    build=runtime in (None, "torch"))
        if settings is None:
            settings = InferenceSettings.resolve(given, pretrained.inference)
        else:
            settings = settings.replace(**given)
        self.pretrained, self.settings, self.batch_size = pretrained, settings, batch_size
        self.model: DETRPanoptic
        if settings.runtime != "torch":  # its ONNX export, with the same detect / predict_masks
            from .export.cache import exported_model

            # weights read here have no use once their export is found: dropped (read again
            # from the file if `pretrained.model` is asked for); a caller's Pretrained is kept
            self.model = exported_model(pretrained, settings, release=not isinstance(weights, Pretrained))
        else:
            self.model = pretrained.model.eval()
            # BN folded into the convolutions, channels-last: faster convolutions (a model without
            # the method, e.g. a test double with DETR's interface, runs as it is)
            if settings.prepare and hasattr(self.model, "prepare_for_inference"):
                self.model.prepare_for_inference()
            if settings.dtype != "float32":  # after folding BN (float32)
                self.model.to(NETWORK_DTYPES[settings.dtype])
        self.categories: Categories = pretrained.categories
        param = next(self.model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.is_thing = self.categories.thing_mask(self.device)

    # the settings in use, read-only: `settings` is their one home
    @property
    def threshold(self) -> float:
        return self.settings.threshold

    @property
    def size(self) -> int:
        return self.settings.size

    @property
    def max_size(self) -> int:
        return self.settings.max_size

    @property
    def stuff_merge(self) -> StuffMerge:
        return self.settings.stuff_merge

    @property
    def mask_chunk(self) -> MaskChunk:
        return self.settings.mask_chunk

    @property
    def batched_network(self) -> bool:
        """Whether a batch runs through the network as one padded tensor (see the module docstring)."""
        together = self.settings.batched_network
        # an exported runtime takes CPU tensors whatever device it runs on (`ExportedModel.runs_on`)
        runs_on = getattr(self.model, "runs_on", self.device)
        return runs_on.type != "cpu" if together is None else together

    def predict(self, image: ImageInput | Sequence[ImageInput], *, channel_order: str = "RGB"
                ) -> PanopticResult | list[PanopticResult]:
        """One image -> its result at its size; a list (or tuple) of images -> a list of results.
        An image is anything `data.images.as_rgb` takes: a path, a PIL image, a numpy array or
        a torch tensor; channel_order="BGR" for OpenCV arrays. `predictor(image)` is the same."""
        if isinstance(image, list | tuple):
            return self.predict_batch(image, channel_order=channel_order)
        return self.predict_batch([image], channel_order=channel_order)[0]

    __call__ = predict

    def predict_batch(self, images: Sequence[ImageInput], *, channel_order: str = "RGB"
                      ) -> list[PanopticResult]:
        """Many images, run `batch_size` at a time; results in input order, each at its
        image's size. A bad file raises `ImageError` (`runner.predict_files` goes on instead)."""
        if not isinstance(images, Sequence) or isinstance(images, str):
            raise TypeError(f"predict_batch takes a list of images, got {type(images).__name__}")
        out: list[PanopticResult] = []
        for start in range(0, len(images), self.batch_size):
            chunk = [as_rgb(im, channel_order) for im in images[start : start + self.batch_size]]
            out.extend(self.predict_arrays(chunk))
        return out

    @property
    def preprocessing(self) -> Callable[[np.ndarray], torch.Tensor]:
        """[H, W, 3] uint8 -> [3, h, w] float32 network input with these settings (resize,
        normalise); picklable, for loader processes."""
        return functools.partial(preprocess, short=self.settings.size, max_size=self.settings.max_size)

    def predict_arrays(self, arrays: Sequence[np.ndarray],
                       inputs: Sequence[torch.Tensor | None] | None = None) -> list[PanopticResult]:
        """One padded batch of decoded [H, W, 3] uint8 images. inputs: their network inputs
        ([3, h, w], `preprocessing`) where already made (in loader processes); None ones are
        made here."""
        return [PanopticResult(s.result.id_map.cpu(), s.result.segments_info, self.categories)
                for s in self.segment_arrays(arrays, inputs)]

    @torch.inference_mode()
    def segment_arrays(self, arrays: Sequence[np.ndarray],
                       inputs: Sequence[torch.Tensor | None] | None = None, *,
                       threshold: float | None = None, keep_det: bool = False) -> list[Segmentation]:
        """`predict_arrays`' way through the network, each image's `Segmentation` (with
        keep_det, `detect`'s outputs too, e.g. for re-thresholding later); threshold: None for
        the settings'."""
        if not arrays:
            return []
        s = self.settings
        made = inputs if inputs is not None else [None] * len(arrays)
        inputs = [self.preprocessing(a) if x is None else x for a, x in zip(arrays, made, strict=True)]
        batch = PaddedBatch.from_images(inputs).to(self.device, self.dtype)
        return segment(self.model, batch, [a.shape[:2] for a in arrays], self.is_thing,
                       threshold=s.threshold if threshold is None else threshold,
                       stuff_merge=s.stuff_merge, overlap_threshold=s.overlap_threshold,
                       pixel_assignment=s.pixel_assignment,
                       mask_chunk=s.mask_chunk, together=self.batched_network, keep_det=keep_det)


def _as_pretrained(weights: Any, categories: Categories | None, preset: str | None,
                   device: str | torch.device, build: bool = True) -> Pretrained:
    if isinstance(weights, Pretrained):
        return weights
    if isinstance(weights, str | os.PathLike):
        return load_pretrained(weights, preset=preset, device=device, build=build)
    if not hasattr(weights, "detect") or not hasattr(weights, "predict_masks"):
        raise TypeError(f"a Predictor needs weights or a DETR panoptic model, got {type(weights).__name__}")
    if categories is None:
        raise ValueError("a bare model needs its categories: Predictor(model, categories=...)")
    return Pretrained(weights, getattr(weights, "config", None), categories, type(weights).__name__)


__all__ = ["NETWORK_DTYPES", "Predictor", "SettingsError", "WeightsError", "check_settings"]
