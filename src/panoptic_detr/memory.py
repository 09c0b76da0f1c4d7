"""The process's heap: keep freed blocks for reuse instead of handing them back to the OS.

glibc serves a large block (from 128 KB, its threshold rising with what was freed up to 32 MB)
with a fresh `mmap`, and the kernel zeroes every page of it on first touch; it also returns
free memory at the top of the heap beyond a trim threshold. A loop that allocates and frees
the same few-MB buffers every iteration (a training step's activations, a PQ worker's decoded
images) then spends its time in page faults: ~5,000 a step of the learning recipe, 9-13 ms of
kernel time (benchmarks/RESULTS.md). Raising both thresholds (`mallopt`) keeps those blocks in
the heap (the step's wall time on a 2-core Xeon did not measurably change: the faults overlapped
the other thread's work; on busier machines kernel time is not free). No-op where the C
library is not glibc.
"""

from __future__ import annotations

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Serve blocks under `mmap_threshold` bytes from the heap and keep up to `trim_threshold`
    bytes of free heap for reuse, for the rest of the process. True when glibc took it."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    except (OSError, AttributeError):
        return False
