"""The machine a benchmark ran on, and its measured compute peak.

Facts come from /proc/cpuinfo, ``platform`` and package metadata (nothing heavy is imported).
The peak is timed, not looked up: a large float32 MatMul and a uint8 x int8 MatMulInteger in
ONNX Runtime at the benchmark's thread count, so "efficiency" compares a model with the best
this host's best-tuned GEMM kernels reach in the same conditions.
"""

from __future__ import annotations

import functools
import os
import platform
from enum import StrEnum
from importlib import metadata
from typing import Any

import numpy as np

# ISA features that decide which kernels run: x86 vector/int8-dot extensions, Arm NEON/dotprod/i8mm.
FEATURES = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "bf16",
)


class Int8Path(StrEnum):
    """The int8 dot-product kernels ONNX Runtime (MLAS) picks on a CPU, told apart by exactness."""

    X86_AMX = "x86 AMX-INT8"
    X86_VNNI = "x86 AVX-512 VNNI / AVX-VNNI"
    X86_AVX512BW = "x86 AVX-512BW without VNNI (int16 pair sums)"
    X86_AVX2 = "x86 AVX2 without VNNI (int16 pair sums)"
    ARM_DOT = "arm64 dot product (SDOT/UDOT)"
    ARM_NEON = "arm64 NEON without dot product"

    @property
    def saturates_pairs(self) -> bool:
        return self in (Int8Path.X86_AVX512BW, Int8Path.X86_AVX2)

    @classmethod
    def from_features(cls, arch: str, features: list[str] | set[str]) -> Int8Path | None:
        """The path for a CPU's /proc/cpuinfo flags (x86) or Features (arm64); None if unknown."""
        flags = set(features)
        if arch in ("x86_64", "AMD64"):
            for flag, path in (
                ("amx_int8", cls.X86_AMX),
                ("avx512_vnni", cls.X86_VNNI),
                ("avx_vnni", cls.X86_VNNI),
                ("avx512bw", cls.X86_AVX512BW),
                ("avx2", cls.X86_AVX2),
            ):
                if flag in flags:
                    return path
            return None
        if arch in ("aarch64", "arm64"):
            return cls.ARM_DOT if flags & {"asimddp", "i8mm"} else cls.ARM_NEON if "asimd" in flags else None
        return None


def int8_path(machine: dict[str, Any]) -> str:
    """The int8 path of a machine description (``facts()`` or a target's runner), for printing."""
    path = Int8Path.from_features(machine.get("arch", ""), machine.get("features") or [])
    return path.value if path else "unknown"


def label(machine: dict[str, Any]) -> str:
    """CPU name and int8 path: a VM often shows only "AMD EPYC", and its int8 figures are its kernels'."""
    return f"{machine.get('cpu', 'unknown')} (int8: {machine.get('int8_path') or int8_path(machine)})"


PACKAGES = (
    "numpy",
    "torch",
    "onnx",
    "onnxslim",
    "onnxruntime",
    "ai-edge-litert",
    "litert-torch",
    "ai-edge-quantizer",
    "openvino",
    "executorch",
    "ncnn",
    "pnnx",
)
PEAK_SIZE = 2048  # M = N = K: 8.6 GMAC, large enough for the GEMM kernels to reach steady state
PEAK_REPEATS = 5


def cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor block's fields (``model name``, ``flags``/``Features``, ...)."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    if fields.get("flags") or fields.get("Features"):
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_features(info: dict[str, str] | None = None) -> list[str]:
    info = cpuinfo() if info is None else info
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in FEATURES if f in flags]


def versions() -> dict[str, str | None]:
    """Python and the installed versions of the packages that write and run the files."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


@functools.cache
def facts() -> dict[str, Any]:
    """CPU model, cores, ISA features, OS and library versions (cached for the process)."""
    info = cpuinfo()
    cpu = info.get("model name") or info.get("Hardware") or info.get("Model") or platform.processor()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    features = cpu_features(info)
    return {
        "cpu": cpu or "unknown",
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "features": features,
        "int8_path": int8_path({"arch": platform.machine(), "features": features}),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
    }


def _matmul_model(kind: str, n: int) -> bytes:
    """A one-node ONNX graph: float32 MatMul or uint8 x int8 MatMulInteger, weights as initializer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        weight = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "b")
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    else:
        weight = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "b")
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    graph = helper.make_graph(
        [node],
        f"peak_{kind}",
        [helper.make_tensor_value_info("a", a_type, [n, n])],
        [helper.make_tensor_value_info("y", y_type, [n, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@functools.cache
def peak_gmacs(kind: str = "fp32", threads: int = 1, n: int = PEAK_SIZE) -> float:
    """Best-of-``PEAK_REPEATS`` GMAC/s of an n^3 GEMM in ONNX Runtime (``kind``: fp32 or int8).

    Best, not median: the peak is what the core can do, and a shared host only ever slows it.
    """
    import onnxruntime as ort

    if kind not in ("fp32", "int8"):
        raise ValueError(f"kind must be fp32 or int8, got {kind!r}")
    from edgekit.console import ort_log_level

    so = ort.SessionOptions()
    so.log_severity_level = ort_log_level()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(_matmul_model(kind, n), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    a = (
        rng.standard_normal((n, n), dtype=np.float32)
        if kind == "fp32"
        else rng.integers(0, 256, (n, n), np.uint8)
    )
    from runtimes.base import time_calls

    call = lambda: sess.run(None, {"a": a})  # noqa: E731
    time_calls(call, 1)  # warm-up: packing, thread-pool start
    return n**3 / (min(time_calls(call, PEAK_REPEATS)) / 1e3) / 1e9
