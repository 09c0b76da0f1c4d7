"""Many processes: worker pools that are safe to start from any caller, and the process group
that torchrun describes (one or many machines), shared by training and inference.

Forking starts a worker in milliseconds, spawning in ~0.3 s. But forking a process that
holds other threads (torch's OpenMP pool, a progress bar's monitor) can deadlock the child
on a lock some thread held, and a forked child of a torch-holding parent counts its memory
as resident; so fork only from a lean, single-threaded parent and spawn otherwise.

Process groups: `init_distributed` joins the group torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, ...) describes, NCCL for GPUs and gloo for CPUs; with no such
environment everything is one process and the collectives below are identities. torch is
imported inside the functions: PQ workers import this module and must stay torch-free.

`Relay`: for machines without a shared file system, the other processes send what they
would write to rank 0 while they run, one object at a time, and rank 0 writes it.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import pickle
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


def pool_context() -> BaseContext:
    """The multiprocessing context to start worker pools with."""
    if (
        "torch" not in sys.modules
        and threading.active_count() == 1
        and "fork" in multiprocessing.get_all_start_methods()
    ):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


# -- process groups (torchrun) -----------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: rank among world_size processes, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """This process's place as torchrun's environment says (one process without it); joins nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")), local_world)


def resolve_device(name: str | torch.device, info: DistInfo) -> torch.device:
    """"auto" -> this process's GPU when CUDA is there, else the CPU; "cuda" without an index ->
    the GPU of this process's local rank (one device per process)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank % max(torch.cuda.device_count(), 1))
    return device


def init_distributed(device: str | torch.device = "auto") -> DistInfo:
    """Join the process group torchrun describes: NCCL for GPUs, gloo for CPUs. Idempotent;
    one process (nothing joined) without that environment."""
    info = dist_info()
    if not info.enabled:
        return info
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        on_gpu = resolve_device(device, info).type == "cuda"
        if on_gpu:
            torch.cuda.set_device(resolve_device(device, info))
        dist.init_process_group(backend="nccl" if on_gpu else "gloo")
    return info


def cleanup_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(device: str | torch.device = "auto") -> Iterator[DistInfo]:
    """`init_distributed` for a block; leaves the group when the block joined it (a group the
    caller set up stays)."""
    if not dist_info().enabled:  # one process: torch not even imported
        yield DistInfo()
        return
    import torch.distributed as dist

    joined = not (dist.is_available() and dist.is_initialized())
    info = init_distributed(device)
    try:
        yield info
    finally:
        if joined:
            cleanup_distributed()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's `obj` on every process (identity for one process)."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: T, info: DistInfo) -> list[T]:
    """Every process's `obj`, in rank order, on every process ([obj] for one process). Meant
    for small things: records, statistics, lines; never images."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This process's share of `items`: every world_size-th one from its rank (strided, so
    neighbours, often alike in size, spread over the processes). Exact: no item repeated or
    left out, shares differ by at most one (unlike `DistributedSampler`, which pads by
    repeating)."""
    return list(items[info.rank :: info.world_size])


def rank_device(name: str | torch.device, info: DistInfo) -> torch.device:
    """The device of this process of a run: under torchrun "cuda" becomes its local rank's
    GPU, and on a CPU the machine's cores are divided between its processes (torch threads,
    see `threads_per_process`); one process: `name` as it is."""
    import torch

    device = resolve_device(name, info)
    if not info.enabled:
        return device
    if device.type == "cpu":
        torch.set_num_threads(threads_per_process(info))
    return device


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_process(info: DistInfo) -> int:
    """The CPU cores of this machine divided among its processes of the run (at least 1)."""
    return max(1, usable_cores() // max(1, info.local_world_size))


# -- objects sent to rank 0 as they are made ---------------------------------------------------


class Relay:
    """Plain data (str, bytes, numbers and lists, tuples, dicts of them) sent by every other
    process of the run to rank 0 while the run goes on, one object at a time.

    Every process makes one (a collective: it sets up a gloo group of its own, so the objects
    travel as CPU tensors beside an NCCL group too), the others `send`, and all `close`. On
    rank 0 a thread takes the objects from the senders in turn and hands each to
    `receive(sender's rank, object)`; a `send` returns once rank 0 has taken its object, so
    each sender has at most one object in flight and memory stays flat however many there
    are. Nothing but plain data is unpickled: the bytes come from processes of the run.
    """

    def __init__(self, info: DistInfo, receive: Callable[[int, Any], None]) -> None:
        import torch.distributed as dist

        self.info = info
        self.problem: str | None = None
        """Why rank 0 stopped taking objects, one line (a sender gone, a `receive` that raised)."""
        self._group = dist.new_group(backend="gloo")
        self._thread: threading.Thread | None = None
        if info.is_main:
            self._thread = threading.Thread(target=self._take, args=(receive,), name="relay", daemon=True)
            self._thread.start()

    def send(self, obj: Any) -> None:
        """Send `obj` to rank 0 (not from rank 0); raises ConnectionError when it is gone."""
        if self.info.is_main:
            raise ValueError("rank 0 receives; it has nothing to send to itself")
        self._send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def close(self) -> str | None:
        """Senders: say they are done; rank 0: wait until every sender has. Returns `problem`."""
        import torch.distributed as dist

        if self._thread is not None:
            self._thread.join()
        else:
            try:
                self._send(b"")  # an object is never 0 bytes: the end
            except ConnectionError as e:
                self.problem = str(e)
        dist.destroy_process_group(self._group)
        return self.problem

    def _send(self, payload: bytes) -> None:
        import torch
        import torch.distributed as dist

        try:
            dist.send(torch.tensor([len(payload)], dtype=torch.int64), dst=0, group=self._group)
            if payload:
                dist.send(torch.frombuffer(bytearray(payload), dtype=torch.uint8), dst=0, group=self._group)
        except RuntimeError as e:  # the connection to rank 0 is gone
            raise ConnectionError(f"rank 0 does not answer ({_first_line(e)})") from None

    def _take(self, receive: Callable[[int, Any], None]) -> None:
        import torch
        import torch.distributed as dist

        senders = list(range(1, self.info.world_size))
        size = torch.empty(1, dtype=torch.int64)
        while senders:
            for rank in list(senders):  # in turn: a sender waits at most one object per other
                try:
                    dist.recv(size, src=rank, group=self._group)
                    if int(size) == 0:
                        senders.remove(rank)
                        continue
                    data = torch.empty(int(size), dtype=torch.uint8)
                    dist.recv(data, src=rank, group=self._group)
                except RuntimeError as e:
                    self.problem = f"rank {rank} stopped sending ({_first_line(e)})"
                    return
                try:
                    receive(rank, _PlainUnpickler(io.BytesIO(data.numpy().tobytes())).load())
                except Exception as e:  # reported; the senders are still drained, not left hanging
                    self.problem = self.problem or f"rank 0 could not take an object of rank {rank} ({e})"


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"{module}.{name}: only plain data travels to rank 0")


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [""])[0][:120]
