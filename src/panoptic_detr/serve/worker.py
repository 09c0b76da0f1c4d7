"""The one network worker: a thread that runs jobs one at a time, behind a bounded queue.

The model is used by this thread only (torch then runs each job with all its threads, and the
results are exactly a one-image run's). A job that would make more than `max_queue` jobs wait
is refused at once (`QueueFull`: the server answers 503 with Retry-After); a job still waiting
when its caller's timeout passes is cancelled and never runs (`JobTimeout`); one already
running finishes and its result is dropped. `close` lets the running and waiting jobs finish.

Batching (`run_batched`): the worker takes a batchable job together with the jobs of the same
function and key already waiting, up to `max_batch`, waiting up to `batch_wait_s` for more
when the batch is not full; the function then gets all their items at once. With
`max_batch=1` (the server's default on a CPU) every job runs alone.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
Item = TypeVar("Item")


class QueueFull(Exception):
    """Every place in the queue is taken."""


class JobTimeout(Exception):
    """The job did not finish within the timeout."""


@dataclass(eq=False)
class _Job:
    future: Future
    fn: Callable[..., Any]
    """Alone: fn(*args); batched: fn([args[0] of each job]) -> a result or exception for each."""
    args: tuple[Any, ...]
    batch: Hashable | None = None
    """Jobs with equal, non-None `batch` may run together."""


class Worker:
    def __init__(self, max_queue: int, timeout_s: float, max_batch: int = 1, batch_wait_s: float = 0.0):
        if max_queue < 0 or timeout_s <= 0 or max_batch < 1 or batch_wait_s < 0:
            raise ValueError(f"max_queue must be >= 0, timeout_s > 0, max_batch >= 1 and batch_wait_s "
                             f">= 0, got {max_queue}, {timeout_s}, {max_batch}, {batch_wait_s}")
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self._cond = threading.Condition()
        self._jobs: deque[_Job] = deque()
        self._thread: threading.Thread | None = None
        self._pending = 0  # waiting + running
        self.closing = False

    @property
    def depth(self) -> int:
        """Jobs waiting or running."""
        return self._pending

    @property
    def full(self) -> bool:
        """Whether `run` would refuse a job now (callers check before reading a large body)."""
        return self.closing or self._pending > self.max_queue

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on the worker thread; QueueFull or JobTimeout instead when it cannot."""
        return await self._submit(_Job(Future(), fn, args))

    async def run_batched(self, fn: Callable[[list[Item]], Sequence[T | Exception]], item: Item,
                          key: Hashable = None) -> T:
        """fn([item, ...]) on the worker thread, with the items of other waiting jobs of the same
        fn and key (see the module docstring); fn returns a result or an exception for each
        item, in order. This item's result (its exception raised), or QueueFull / JobTimeout."""
        return await self._submit(_Job(Future(), fn, (item,), (fn, key)))

    async def _submit(self, job: _Job) -> Any:
        with self._cond:
            if self.full:  # one running + max_queue waiting
                raise QueueFull
            self._pending += 1
            job.future.add_done_callback(self._done)  # also called when cancelled before it ran
            self._jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="panoptic-detr-network", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            # on timeout, wait_for cancels the wrapper, which cancels a job that has not started
            return await asyncio.wait_for(asyncio.wrap_future(job.future), self.timeout_s)
        except TimeoutError:
            raise JobTimeout from None

    def _done(self, _: Future) -> None:
        with self._cond:
            self._pending -= 1

    def _loop(self) -> None:
        while (jobs := self._next()) is not None:
            if jobs[0].batch is None:
                self._finish(jobs[0], lambda: jobs[0].fn(*jobs[0].args))
                continue
            try:
                results = list(jobs[0].fn([job.args[0] for job in jobs]))
                if len(results) != len(jobs):
                    raise RuntimeError(f"a batch of {len(jobs)} jobs gave {len(results)} results")
            except Exception as e:  # a bug: every job of the batch gets it
                results = [e] * len(jobs)
            for job, result in zip(jobs, results, strict=True):
                self._finish(job, lambda r=result: r)

    @staticmethod
    def _finish(job: _Job, compute: Callable[[], Any]) -> None:
        try:
            result = compute()
        except Exception as e:
            job.future.set_exception(e)
            return
        if isinstance(result, Exception) and job.batch is not None:
            job.future.set_exception(result)
        else:
            job.future.set_result(result)

    def _next(self) -> list[_Job] | None:
        """The next job and those that run with it (None: closed and nothing left)."""
        with self._cond:
            while True:
                while not self._jobs:
                    if self.closing:
                        return None
                    self._cond.wait()
                first = self._jobs.popleft()
                if first.future.set_running_or_notify_cancel():  # False: cancelled while waiting
                    break
            batch = [first]
            if first.batch is None or self.max_batch == 1:
                return batch
            deadline = time.monotonic() + self.batch_wait_s
            while True:
                for job in [j for j in self._jobs if j.batch == first.batch]:
                    if len(batch) == self.max_batch:
                        break
                    self._jobs.remove(job)
                    if job.future.set_running_or_notify_cancel():
                        batch.append(job)
                left = deadline - time.monotonic()
                if len(batch) == self.max_batch or left <= 0 or self.closing:
                    return batch
                self._cond.wait(left)

    def close(self) -> None:
        """Refuse new jobs, finish the queued and running ones."""
        with self._cond:
            self.closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
