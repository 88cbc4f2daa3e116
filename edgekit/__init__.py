"""edgekit: lightweight CNNs from PyTorch to a device."""

__version__ = "0.1.0"
