"""ncnn: the engine for ``.ncnn.param`` files (weights in the ``.ncnn.bin`` beside), CPU only.

ncnn's options default to fp16 storage and arithmetic: a session sets them before loading from the
file's format, so ``ncnn-fp32`` runs in fp32 and ``ncnn-fp16`` (float16 weights) with ncnn's
defaults, what ncnn users get: fp16 storage (F16C on x86, every ARMv8) and fp16 arithmetic where
the CPU has it (ARMv8.2 asimdhp: Cortex-A76/Pi 5; not Cortex-A72/Pi 4, not x86 in this build).
``fp16=`` overrides. One extractor per inference, one CHW image per call, as ncnn's API takes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.base import Runtime, Session, tensor_info


class NcnnRuntime(Runtime):
    name = "ncnn"
    suffixes = (".param",)
    accelerator = "ncnn CPU kernels"

    def available(self) -> tuple[bool, str]:
        try:
            import ncnn  # noqa: F401
        except ImportError as exc:
            return False, f"ncnn is not installed ({exc}); pip install ncnn"
        return True, ""

    def version(self) -> str | None:
        try:
            import ncnn
        except ImportError:
            return None
        return ncnn.__version__

    def load(self, path: str | os.PathLike[str], threads: int = 1, **opts: Any) -> NcnnSession:
        opts.setdefault("fp16", fp16_file(path))
        return NcnnSession(path, threads, **opts)


def fp16_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file is an fp16 format's (``model_fp16.ncnn.param``), by the format registry."""
    from edgekit.formats import Precision, for_file

    return for_file(path).precision is Precision.FP16


class NcnnSession(Session):
    runtime = "ncnn"
    layout = "NCHW"

    def __init__(self, path: str | os.PathLike[str], threads: int = 1, fp16: bool = False) -> None:
        import ncnn

        super().__init__(path, threads)
        self._ncnn = ncnn
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.num_threads = threads
        opt.use_vulkan_compute = False
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = fp16
        opt.use_bf16_storage = False
        weights = Path(path).with_suffix(".bin")
        if self.net.load_param(os.fspath(path)) != 0 or self.net.load_model(os.fspath(weights)) != 0:
            raise RuntimeError(f"ncnn cannot load {path} with {weights.name}")
        self.fp16 = fp16
        self.input = tensor_info(self.net.input_names()[0], [1, 3, None, None], np.float32)
        self.output = tensor_info(self.net.output_names()[0], [1, None], np.float32)

    def prepare(self, x: np.ndarray) -> Any:
        return self._ncnn.Mat(np.ascontiguousarray(x[0], dtype=np.float32)).clone()

    def invoke(self, native: Any) -> Any:
        with self.net.create_extractor() as ex:
            ex.input(self.input["name"], native)
            _, out = ex.extract(self.output["name"])
            return np.array(out)

    def finish(self, raw: Any) -> np.ndarray:
        return np.asarray(raw, dtype=np.float32).reshape(1, -1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "version": self._ncnn.__version__, "fp16_storage": self.fp16}
