"""Sine positional encoding of a feature grid, computed from its padding mask (DETR, sec. 3.2).

Coordinates are the cumulative count of valid cells along each axis, normalised to (0, 2*pi]
by the image's own valid extent, so padding does not stretch an image's coordinates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_encoding(
    mask: Tensor,
    dim: int,
    temperature: float = 10000.0,
    scale: float = 2 * math.pi,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """mask: [B, H, W] True on padding -> pos: [B, dim, H, W] (first dim/2 channels encode y,
    the rest x; within each half, sin and cos interleave)."""
    if dim % 2:
        raise ValueError(f"dim={dim} must be even")
    half = dim // 2
    valid = (~mask).to(dtype)
    y = valid.cumsum(1)  # B x H x W, 1..h inside the image
    x = valid.cumsum(2)
    eps = 1e-6
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    i = torch.arange(half, dtype=dtype, device=mask.device)
    freq = temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / half)  # half
    pos_x = x[..., None] / freq  # B x H x W x half
    pos_y = y[..., None] / freq
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # B x dim x H x W
