"""What reaches the user's terminal from the engines and converters (stdlib only).

Their own logging (ONNX Runtime's warnings, LiteRT's "Created TensorFlow Lite XNNPACK delegate",
converter chatter from C++) stays off unless ``--debug``; converters' output is captured so a
failure can quote it. The leaf packages use this module, so it imports nothing of the project.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator

ORT_QUIET = 3  # ONNX Runtime severity: errors only


def debug() -> bool:
    """Whether ``--debug`` was given: tracebacks, and the engines' own logs."""
    return bool(os.environ.get("EDGEKIT_DEBUG"))


def ort_log_level() -> int:
    """The ``log_severity_level`` every ONNX Runtime session gets (0 = verbose under --debug)."""
    return 0 if debug() else ORT_QUIET


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Send fd 1 and 2 to a temp file for the block (converters print from C++ and rich).

    Yields a list that receives the captured text when the block ends, so that a failure can
    quote the converter's own message while a success keeps stdout clean for ``--json``.
    """
    sink: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield sink
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            sink.append(tmp.read().decode("utf-8", "replace"))


@contextlib.contextmanager
def quiet_native() -> Iterator[None]:
    """Silence what native code prints during the block, unless ``--debug``."""
    if debug():
        yield
        return
    with captured_output():
        yield


class Steps:
    """Per-step progress on stderr: a rich spinner on a terminal, plain lines otherwise, each step
    with its duration (the times an export's manifest does not hold are still seen).

    It writes to a duplicate of fd 2 so that the converters' output capture (which redirects fd
    1 and 2 during a conversion) does not swallow the display.
    """

    def __init__(self, title: str, total: int) -> None:
        self.title, self.total, self.done = title, total, 0
        self.live = sys.stderr.isatty()
        self.times: dict[str, float] = {}

    def __enter__(self) -> Steps:
        from rich.console import Console

        self.file = os.fdopen(os.dup(2), "w", buffering=1)
        self.console = Console(file=self.file, force_terminal=self.live, highlight=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.done += 1
        label = f"[{self.done}/{self.total}] {what}"
        start = time.perf_counter()
        if self.live:
            with self.console.status(label):
                yield
        else:
            print(f"{self.title}: {label} ...", file=self.file)
            yield
        took = time.perf_counter() - start
        self.times[what] = round(took, 2)
        if self.live:
            self.console.print(f"[green]✓[/green] {label} [dim]({took:.1f} s)[/dim]")
        else:
            print(f"{self.title}: {label} done ({took:.1f} s)", file=self.file)
