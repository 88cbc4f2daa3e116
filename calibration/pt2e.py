"""What the PT2E int8 writers (TFLite, ExecuTorch) share: the graph's observers after prepare_pt2e.

prepared = prepare_pt2e(graph, quantizer)
for observer in output_observers(prepared):
    observer.mark_output()            # the logits keep their largest values
... calibration passes; freeze_weight_observers(prepared) after the first ...
ranges = observed_ranges(prepared)    # the manifest's activation ranges
"""

from __future__ import annotations

from typing import Any

import numpy as np


def output_observers(prepared: Any) -> list[Any]:
    """The range observers whose value is a graph output (the logits)."""
    output = next(node for node in prepared.graph.nodes if node.op == "output")
    found = []
    for arg in output.args[0] if isinstance(output.args[0], (list, tuple)) else [output.args[0]]:
        if getattr(arg, "op", None) == "call_module":
            module = prepared.get_submodule(arg.target)
            if hasattr(module, "range_method"):
                found.append(module)
    return found


def observed_ranges(prepared: Any) -> dict[str, tuple[float, float]]:
    """The clipping range each activation observer picked, keyed by the observer's node name."""
    return {
        name: mod.picked_range()
        for name, mod in prepared.named_modules()
        if hasattr(mod, "range_method") and np.isfinite(mod.histogram.min)
    }


def freeze_weight_observers(prepared: Any) -> None:
    """Weights are constants: once observed, their observers need not reduce them again per sample."""
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.args and getattr(node.args[0], "op", None) == "get_attr":
            observer = prepared.get_submodule(node.target)
            observer.forward = _identity


def _identity(x: Any) -> Any:
    return x
