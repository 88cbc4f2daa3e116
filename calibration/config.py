"""The int8 options, with their defaults in one place: used by `edgekit export` and `analyze` alike.

``QuantConfig.from_options(**cli_options)`` takes what the CLI or the Python API passes (``None``
for "not given": the default applies) and validates it, so a typo in an option name or a bad value
fails before any work.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from calibration.ranges import DEFAULT_METHOD, METHODS
from edgekit.errors import UsageError

# Stream equalisation and bias correction are on unless switched off. Streams: the residual
# stream's few large channels set the per-tensor activation grid; balanced against the weights
# reading them (exact in float) logits SQNR +1 dB in both formats. Bias correction: removes the
# mean output shift the int8 weight grid puts on every layer (weights-only logits SQNR 21.5 ->
# 29.5 dB; +1 dB end to end). Pretrained MobileNetV2 per-channel; docs/int8.md. Cross-layer
# equalisation is opt-in: it helps per-tensor weights, not per-channel ones. GPTQ rounding is
# opt-in: it matters below 8 bits (per-tensor W6A8 after CLE: -4.4 -> -1.2 top-1, docs/depthwise.md)
# and costs a pass over the calibration set plus ~30 s at 224 px.
REMEDIES = ("equalize", "equalize_streams", "gptq", "bias_correct")


@dataclass(frozen=True)
class QuantConfig:
    calib: str | None = None  # None/'builtin', 'random', an image folder or a .npy file
    calib_samples: int | None = None  # None: 128 generated, or a folder's images (256 at most)
    calib_method: str = DEFAULT_METHOD
    per_tensor: bool = False
    symmetric_activations: bool = False
    skip_bad_images: bool = False
    equalize: bool = False
    equalize_streams: bool = True
    gptq: bool = False
    bias_correct: bool = True
    weight_bits: int = 8  # below 8: the weights are rounded onto that grid, then written as int8
    seed: int = 0

    @classmethod
    def from_options(cls, **options: Any) -> QuantConfig:
        """From keyword options where ``None`` means "not given" (the default applies)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown int8 options {unknown}")
        config = cls(**{k: v for k, v in options.items() if v is not None})
        config.check()
        return config

    def check(self) -> None:
        if self.calib_method not in METHODS:
            raise UsageError(
                f"unknown calibration method {self.calib_method!r}", f"use one of {', '.join(METHODS)}"
            )
        if not 2 <= self.weight_bits <= 8:
            raise UsageError(f"weight bits must be 2..8, got {self.weight_bits}", "e.g. 8, 6 or 4")

    @property
    def per_channel(self) -> bool:
        return not self.per_tensor

    def remedies(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in REMEDIES}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
