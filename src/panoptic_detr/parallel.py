"""Worker processes that are safe to start from any caller.

Forking starts a worker in milliseconds, spawning in ~0.3 s. But forking a process that
holds other threads (torch's OpenMP pool, a progress bar's monitor) can deadlock the child
on a lock some thread held, and a forked child of a torch-holding parent counts its memory
as resident; so fork only from a lean, single-threaded parent and spawn otherwise.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
from multiprocessing.context import BaseContext


def pool_context() -> BaseContext:
    """The multiprocessing context to start worker pools with."""
    if (
        "torch" not in sys.modules
        and threading.active_count() == 1
        and "fork" in multiprocessing.get_all_start_methods()
    ):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")
