"""edgekit.allocator: freed large blocks are reused, not handed back and faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Allocate and free a 64 MiB array once, then 8 more times, counting the page faults of those 8.
PROBE = """
import resource, sys
import numpy as np
from edgekit.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
np.ones(16 * 2**20, dtype=np.float32)  # freed at once: the heap now holds it (kept)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    a = np.ones(16 * 2**20, dtype=np.float32)
    del a
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
HUGE_PAGES = 64 * 2**20 // 2**21  # the fewest faults that map 64 MiB afresh (2 MiB pages)


def _faults(mode: str) -> tuple[str, int]:
    # A fresh process: pytest's own (conftest) already keeps freed memory.
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_not_faulted_in_again() -> None:
    _, default = _faults("default")
    kept, reused = _faults("keep")
    assert kept == "True"
    # By default each array is mapped afresh and faulted in (in 2 MiB pages at the fewest); kept,
    # the first array's pages are reused: a few faults for the interpreter's own objects at most.
    assert default >= 8 * HUGE_PAGES
    assert reused < HUGE_PAGES
