"""Many processes, one or many machines: torchrun's environment -> process group, sampler,
metric reduction. With no torchrun environment everything degrades to one process. The process
group itself (DistInfo, init_distributed, barrier, broadcast_object, ...) lives in
`panoptic_detr.parallel`, shared with inference.

Launch (one machine, 4 GPUs):
    torchrun --nproc-per-node 4 -m panoptic_detr.train --config configs/x.yaml
Many machines: the same command on every node with `--nnodes M --node-rank R
--rdzv-backend c10d --rdzv-endpoint HOST:PORT` (HOST = node 0). Rank 0 writes all files.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler

from ..parallel import (
    DistInfo,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    resolve_device,
)


def reduce_mean(values: dict[str, float], info: DistInfo, device: torch.device) -> dict[str, float]:
    """Average scalar metrics over all processes (identity for one process)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


class ResumableSampler(Sampler[int]):
    """`DistributedSampler` (this process's share of a seeded per-epoch shuffle) that starts
    `skip` samples into the epoch, so a resumed run sees exactly the samples it had not yet."""

    def __init__(self, dataset: Dataset, info: DistInfo, seed: int, epoch: int, skip: int = 0,
                 shuffle: bool = True) -> None:
        self.inner = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                        shuffle=shuffle, seed=seed, drop_last=False)
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.inner) - self.skip, 0)


__all__ = ["DistInfo", "ResumableSampler", "barrier", "broadcast_object", "cleanup_distributed",
           "init_distributed", "reduce_mean", "resolve_device"]
