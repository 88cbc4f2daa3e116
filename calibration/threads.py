"""One torch thread for the steps whose results are written into files.

With several threads torch's reductions may sum in a different order from run to run, and the
last bit of a bias or a batch-norm statistic then differs: the same command must give the same
bytes (tested by sha256), so the steps that compute what a file holds run single-threaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with torch on ``count`` threads; restore the caller's thread count afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def one_thread() -> AbstractContextManager[None]:
    """Run the block with torch on one thread (the steps whose results are written into files)."""
    return torch_threads(1)
