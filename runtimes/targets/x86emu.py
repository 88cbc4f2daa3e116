"""An x86-64 CPU without AVX-512 or VNNI, emulated: qemu user-mode running this machine's Python.

``avx2-emu`` is ``qemu-x86_64 -cpu Haswell-v4``: SSE4.2, AVX, AVX2, FMA, F16C, and nothing newer,
the int8 path of AMD EPYC before Zen 4 and of Intel before Cascade Lake. The engines read the CPU
with CPUID, which qemu answers for the emulated model, so ONNX Runtime and XNNPACK run the kernels
such a machine runs (ONNX Runtime's int16 pair-summing U8S8 GEMMs among them) on whatever host
this is. The venv's own interpreter and wheels run unchanged: no rootfs is needed.

What it is good for: the *outputs* of the AVX2 kernels, whether the host has VNNI or not (the
int8 exactness tests run here). What it is not: a timing (TCG is ~100x slower; flagged ``emulated``).
"""

from __future__ import annotations

import shutil
from typing import Any

from edgekit.errors import TargetError
from runtimes.targets.local import LocalTarget
from runtimes.targets.qemu import host_cpu

QEMU = "qemu-x86_64-static"
CPUS = {"avx2-emu": ("Haswell-v4", ["sse4_2", "avx", "avx2", "fma", "f16c"])}


class X86EmuTarget(LocalTarget):
    emulated = True

    def __init__(self, name: str = "avx2-emu", python: str | None = None, timeout: float = 900.0) -> None:
        super().__init__(python=python, timeout=timeout)
        self.name = name
        self.cpu, self.features = CPUS[name]
        self.expected_arch = "x86_64"

    def _command(self) -> list[str]:
        if shutil.which(QEMU) is None:
            raise TargetError(
                f"{self.name}: {QEMU} not found", "install it with `apt-get install qemu-user-static`"
            )
        return [QEMU, "-cpu", self.cpu, self.python]

    def _describe(self, machine: dict[str, Any]) -> dict[str, Any]:
        # /proc/cpuinfo is the host's under user-mode qemu: the emulated model's flags replace it.
        return {
            **machine,
            "cpu": f"{self.cpu} (qemu user-mode on {host_cpu()})",
            "features": list(self.features),
            "cores": None,
            "emulated": True,
        }
