"""The memory layout of the weights during the calibration passes.

oneDNN runs a convolution with channels-last weights on its NHWC path: a MobileNetV3-large pass
over 16 crops at 224 px, one thread, took 0.26-0.29 s instead of 0.44-0.47 s (2-core AMD EPYC).
So the remedies and a random-init network's batch-norm re-estimation run that way, and the
exporters get contiguous weights back.
"""

from __future__ import annotations

from typing import Any


def for_passes(model: Any) -> Any:
    """``model`` with its 4-D weights channels-last, in place; one with 5-D weights (Conv3d), which
    the 4-D layout cannot hold, as it is."""
    import torch

    tensors = [*model.parameters(), *model.buffers()]
    if any(t.dim() == 5 for t in tensors):
        return model
    return model.to(memory_format=torch.channels_last)


def for_export(model: Any) -> Any:
    """``model`` with contiguous weights again, in place."""
    import torch

    return model.to(memory_format=torch.contiguous_format)
