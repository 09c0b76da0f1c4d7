"""Many processes, one or many machines: torchrun's environment -> process group, sampler,
metric reduction. With no torchrun environment everything degrades to one process.

Launch (one machine, 4 GPUs):
    torchrun --nproc-per-node 4 -m panoptic_detr.train --config configs/x.yaml
Many machines: the same command on every node with `--nnodes M --node-rank R
--rdzv-backend c10d --rdzv-endpoint HOST:PORT` (HOST = node 0). Rank 0 writes all files.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """"auto" -> this process's GPU when CUDA is there, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank % max(torch.cuda.device_count(), 1))
    return device


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...):
    NCCL for GPUs, gloo for CPUs. Idempotent; one process without those variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        on_gpu = resolve_device(device, info).type == "cuda"
        if on_gpu:
            torch.cuda.set_device(resolve_device(device, info))
        dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    return info


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's `obj` on every process (identity for one process)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
