"""memory.keep_freed_memory: a freed block is reused instead of being faulted in again.

Each case runs in a fresh process (the setting lasts for the process): allocate and fill a
40 MB array nine times. glibc's default serves a block over 32 MB with a fresh mmap every time,
which faults again on every fill (4,544 faults for eight fills here, with numpy's huge pages;
~78,000 without); with the kept memory the first fill faults and the rest reuse it (0)."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from panoptic_detr.memory import keep_freed_memory
    assert keep_freed_memory()
np.ones(5_000_000).sum()  # 40 MB: the first one faults either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    np.ones(5_000_000).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults():
    default, keep = faults("default"), faults("keep")
    assert keep < 100 and keep * 10 < default, (default, keep)
