"""PyTorch -> ``model.pt2``: the float reference as a ``torch.export`` program.

The program runs without the zoo's Python code, so the ``torch`` runtime, like the others, reads
a file. With ``--dynamic-batch`` the batch dimension is symbolic.
"""

from __future__ import annotations

from typing import Any

from edgekit.console import captured_output
from edgekit.formats import WriteRequest
from exporters import conversion_error


def write(request: WriteRequest) -> dict[str, Any]:
    import torch

    dynamic_shapes = ({0: torch.export.Dim("batch")},) if request.dynamic_batch else None
    error = None
    with captured_output() as log:
        try:
            program = torch.export.export(request.model, (request.example,), dynamic_shapes=dynamic_shapes)
        except Exception as exc:  # torch.export names the untraceable op or the data-dependent branch
            error = exc
    if error is not None:
        raise conversion_error("torch.export", error, log[0]) from error
    torch.export.save(program, request.path)
    batch = "batch" if request.dynamic_batch else 1
    with torch.inference_mode():
        classes = int(request.model(request.example).shape[-1])
    return {
        "inputs": [
            {
                "name": program.graph_signature.user_inputs[0],
                "shape": [batch, *request.example.shape[1:]],
                "dtype": "float32",
            }
        ],
        "outputs": [{"name": "logits", "shape": [batch, classes], "dtype": "float32"}],
    }
