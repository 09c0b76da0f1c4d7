"""The one network worker: a thread that runs jobs one at a time, behind a bounded queue.

The model is used by this thread only (torch then runs each job with all its threads, and the
results are exactly a one-image run's). A job that would make more than `max_queue` jobs wait
is refused at once (`QueueFull`: the server answers 503 with Retry-After); a job still waiting
when its caller's timeout passes is cancelled and never runs (`JobTimeout`); one already
running finishes and its result is dropped. `close` lets the running and waiting jobs finish.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class QueueFull(Exception):
    """Every place in the queue is taken."""


class JobTimeout(Exception):
    """The job did not finish within the timeout."""


class Worker:
    def __init__(self, max_queue: int, timeout_s: float):
        if max_queue < 0 or timeout_s <= 0:
            raise ValueError(f"max_queue must be >= 0 and timeout_s > 0, got {max_queue}, {timeout_s}")
        self.max_queue, self.timeout_s = max_queue, timeout_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="panoptic-detr-network")
        self._lock = threading.Lock()
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
        with self._lock:
            if self.full:  # one running + max_queue waiting
                raise QueueFull
            self._pending += 1
        future: Future[T] = self._pool.submit(fn, *args)
        future.add_done_callback(self._done)  # also called when cancelled before it ran
        try:
            # on timeout, wait_for cancels the wrapper, which cancels a job that has not started
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            raise JobTimeout from None

    def _done(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1

    def close(self) -> None:
        """Refuse new jobs, finish the queued and running ones."""
        self.closing = True
        self._pool.shutdown(wait=True)
