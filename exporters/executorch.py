"""PyTorch -> ExecuTorch ``.pte``: torch.export, then ``to_edge_transform_and_lower`` with the
XNNPACK partitioner (the CPU backend of phones and the Pi).

What the partitioner leaves outside XNNPACK runs on ExecuTorch's portable kernels, which are
much slower; the manifest records both counts and the ops left outside (the user complaint
"ExecuTorch slower than expected" is usually that), like the XNNPACK coverage of TFLite files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from edgekit.console import captured_output
from edgekit.formats import WriteRequest
from exporters import conversion_error

DELEGATE_CALL = "executorch_call_delegate"
# Python-level graph plumbing, not kernels: not counted as ops left outside the delegate
PLUMBING = {"getitem"}


def write(request: WriteRequest) -> dict[str, Any]:
    """The ``executorch-fp32`` writer."""
    import torch

    from exporters.rewrites import batch_norms_folded

    error = None
    with captured_output() as log:
        try:
            program = torch.export.export(batch_norms_folded(request.model.eval()), (request.example,))
            info = lower(program, request.path)
        except Exception as exc:  # exporter/partitioner failures become one ExportError naming the op
            error = exc
    if error is not None:
        raise conversion_error("executorch", error, log[0]) from error
    return info


def lower(program: Any, path: Path) -> dict[str, Any]:
    """An exported program -> XNNPACK-delegated ``.pte`` at ``path``; what was delegated."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    delegation = delegation_info(edge.exported_program().graph_module)
    path.write_bytes(edge.to_executorch().buffer)
    return {"converter": f"executorch {version()} (XNNPACK partitioner)", "delegation": delegation}


def delegation_info(graph_module: Any) -> dict[str, Any]:
    """XNNPACK subgraphs, and the ops left to the portable kernels (by name and count)."""
    calls = [n for n in graph_module.graph.nodes if n.op == "call_function"]
    delegates = [n for n in calls if DELEGATE_CALL in str(n.target)]
    outside = Counter(
        _op_name(n.target) for n in calls if n not in delegates and _op_name(n.target) not in PLUMBING
    )
    return {
        "xnnpack_subgraphs": len(delegates),
        "portable_ops": sum(outside.values()),
        "portable_by_op": dict(outside.most_common()),
        "all_delegated": not outside,
    }


def _op_name(target: Any) -> str:
    """``aten.permute_copy.default`` -> ``permute_copy`` (namespace and overload dropped);
    Python callables by their name."""
    parts = getattr(target, "__name__", str(target)).split(".")
    return parts[-2] if len(parts) >= 3 else parts[-1]


def version() -> str:
    from importlib.metadata import version as dist_version

    return dist_version("executorch")
