"""glibc's allocator, told to keep freed memory for reuse: the export's big short-lived tensors.

By default glibc hands a freed block above its mmap threshold (128 KiB, rising to at most 32 MiB)
back to the kernel, and trims the heap top above 128 KiB. The calibration passes allocate a
16-image batch of feature maps (~13 MB per layer at 224 px) again and again; each one is then
mapped, faulted in and zeroed page by page, and unmapped. With both thresholds raised, freed
blocks stay in the heap and are reused. ``calibration.int8.prepare`` for MobileNetV3-large at
224 px (128 crops, one thread, 2-core AMD EPYC, two runs each): 13.6-15.2 -> 8.7-11.1 s, system
time ~7 -> 1.4 s, peak memory +~9%. Only the thresholds change, so every result is the same.

``edgekit export`` and ``edgekit analyze`` set it for their own process (forked lanes inherit
it); the Python API leaves a caller's process as it is, and ``edgekit bench`` times the engines in
an allocator as a user's process has it.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_BLOCKS = 1 << 30  # blocks up to 1 GiB come from the heap and go back to it
KEEP_TOP = 2**31 - 1  # mallopt takes an int: free heap top kept up to 2 GiB


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where that is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    # The mmap threshold first: a raised trim threshold alone stops glibc's threshold from
    # adapting, and every large block is then mapped afresh (3x the system time, measured).
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BLOCKS)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_TOP))
