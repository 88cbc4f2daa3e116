"""Typed errors: a message naming the problem and a hint naming the fix.

The CLI alone turns them into one line and an exit code; every package of the project may raise
them (this module imports nothing, so the leaf packages can use it without pulling in the CLI).
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class: ``message`` says what is wrong, ``hint`` what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(EdgekitError):
    """Bad arguments: unknown model, width out of range, bad option combination."""

    exit_code = 2


class UnknownModelError(UsageError):
    """A model name that is not in the zoo."""


class WeightsError(EdgekitError):
    """Pretrained weights missing, unavailable or failing their checksum."""


class DataError(EdgekitError):
    """Calibration or evaluation data that cannot be used (empty folder, corrupt image...)."""


class ExportError(EdgekitError):
    """A converter failed; the message names the op or step."""


class VerificationError(EdgekitError):
    """An exported file disagrees with PyTorch beyond the documented tolerance."""


class ArtifactError(EdgekitError):
    """A missing, corrupt or inconsistent artifact folder, manifest or model file."""


class RuntimeUnavailableError(EdgekitError):
    """An inference engine that is not installed or cannot load the file."""


class TargetError(EdgekitError):
    """A target that cannot be reached or set up (qemu rootfs, SSH host, adb device)."""


class TargetEngineError(TargetError):
    """The target ran, but its engine failed on one file (a skip for that file, not for the target)."""
