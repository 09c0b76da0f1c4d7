"""Batching dataset samples for a DataLoader: images of different sizes, one Target each."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..structures import PaddedBatch, Target


def collate_lists(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """[(image [3, h_i, w_i], Target), ...] -> ([images], [targets]), sizes left as they are."""
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    return images, targets


def collate_padded(
    batch: Sequence[tuple[Tensor, Target]], size_divisibility: int = 1
) -> tuple[PaddedBatch, list[Target]]:
    """[(image [3, h_i, w_i], Target), ...] -> (PaddedBatch [B, 3, H, W] + mask, [targets]).

    Padding is at the bottom/right, so each Target (normalised to its own image's size)
    stays valid; the model reads each image's true size from the mask.
    """
    images, targets = collate_lists(batch)
    return PaddedBatch.from_images(images, size_divisibility=size_divisibility), targets
