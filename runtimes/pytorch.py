"""Eager PyTorch on ``model.pt2`` (a ``torch.export.save``'d ExportedProgram): the float reference.

The program runs without the zoo's Python code, so a benchmark of it needs only the file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from runtimes.base import Runtime, Session, tensor_info


class TorchRuntime(Runtime):
    name = "torch"
    suffixes = (".pt2",)
    accelerator = "eager (CPU)"

    def available(self) -> tuple[bool, str]:
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            return False, f"PyTorch is not installed ({exc}); pip install torch"
        return True, ""

    def version(self) -> str | None:
        try:
            import torch
        except ImportError:
            return None
        return torch.__version__

    def load(self, path: str | os.PathLike[str], threads: int = 1, **opts: Any) -> TorchSession:
        return TorchSession(path, threads, **opts)


class TorchSession(Session):
    runtime = "torch"
    layout = "NCHW"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1) -> None:
        import torch

        super().__init__(path, threads)
        # torch's thread pool is process-wide: the last session loaded sets it.
        torch.set_num_threads(threads)
        program = torch.export.load(os.fspath(path))
        self._module = program.module()
        self._torch = torch
        self.input, self.output = _io_info(program)

    def prepare(self, x: np.ndarray) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def invoke(self, native: Any) -> Any:
        with self._torch.inference_mode():
            out = self._module(native)
        return out[0] if isinstance(out, tuple | list) else out

    def finish(self, raw: Any) -> np.ndarray:
        out = raw.detach().numpy().astype(np.float32, copy=False)
        return out.reshape(out.shape[0], -1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "version": self._torch.__version__, "provider": "eager (CPU)"}


def _io_info(program: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """First user input and first output; a symbolic (dynamic) dimension becomes None."""
    user_inputs = set(program.graph_signature.user_inputs)
    nodes = list(program.graph.nodes)
    first_in = next(n for n in nodes if n.op == "placeholder" and n.name in user_inputs)
    first_out = program.graph.output_node().args[0][0]
    return _info(first_in), _info(first_out)


def _info(node: Any) -> dict[str, Any]:
    shape = getattr(node.meta.get("val"), "shape", [])
    return tensor_info(node.name, [d if isinstance(d, int) else None for d in shape], np.float32)
