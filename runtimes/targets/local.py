"""This machine, through the same runner every remote target runs (a check of the runner itself)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from runtimes.targets import Target, run_command


class LocalTarget(Target):
    """Runs ``runner.py`` with this Python in a temp folder; the reference the other targets match."""

    def __init__(self, python: str | None = None, timeout: float = 600.0) -> None:
        self.name = "local"
        self.python = python or sys.executable
        self.timeout = timeout
        self.expected_arch = platform.machine()

    def _command(self) -> list[str]:
        return [self.python]

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _execute(
        self, files: list[Path], argv: list[str], fetch: str | None, local_dir: Path, timeout: float
    ) -> str:
        # The working folder is the local temp folder itself: link the inputs in, nothing to copy back.
        for file in files:
            link = local_dir / file.name
            if not link.exists():
                link.symlink_to(file.resolve())
        proc = run_command(
            [*self._command(), "runner.py", *argv],
            timeout,
            f"{self.name} runner",
            cwd=local_dir,
            env=self._env(),
        )
        if proc.returncode != 0 and not proc.stdout.strip():
            raise self._crashed(proc.returncode, proc.stderr)
        return proc.stdout
