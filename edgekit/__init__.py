"""edgekit: lightweight CNNs from PyTorch to a device.

The Python API (``edgekit.export``, ``edgekit.load``, ``edgekit.Artifact``) lives in
:mod:`edgekit.api`; it is imported on first use so that the command line starts fast.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Artifact", "export", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from edgekit import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
