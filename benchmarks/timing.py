"""Shared by the benchmark scripts (they run from this folder, so it is importable)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeat: int) -> float:
    """Median wall seconds of `repeat` calls of `fn`, after one untimed warm-up call
    (allocator, oneDNN kernel selection)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
