"""The emulated Raspberry Pi: qemu user-mode running an arm64 Debian Python on this machine.

``pi4-emu`` emulates a Cortex-A72 (Raspberry Pi 4), ``pi5-emu`` a Cortex-A76 (Raspberry Pi 5).
The rootfs (Debian bookworm arm64 + aarch64 wheels of numpy, onnxruntime and ai-edge-litert, a
layer with ncnn and openvino, and one with ExecuTorch's runtime libraries and edgekit's C API over
them) is built by ``make pi-rootfs`` into ``$EDGEKIT_CACHE/pi-rootfs``. qemu's ``-L`` serves files
from it first, including a Pi-like ``/proc/cpuinfo`` (the engines crash on the host's x86 one).

What it is good for: the ARM kernels' *outputs* (fp32 and int8 rounding on ARM vs x86). What it
is not: a timing. Emulation is hundreds of times slower than a Pi, so every result is flagged
``emulated`` with a note saying so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from edgekit.errors import TargetError
from runtimes.targets.local import LocalTarget

CPUS = {"pi4-emu": "cortex-a72", "pi5-emu": "cortex-a76"}
# The Features line of each board's /proc/cpuinfo (the rootfs holds the Pi 4's): the int8 path
# named beside every figure follows the emulated core (the A76 has the dot product).
FEATURES = {
    "cortex-a72": "fp asimd evtstrm crc32 cpuid",
    "cortex-a76": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
    "dcpop asimddp",
}
QEMU = "qemu-aarch64-static"
SITE = "opt/edgekit-site"
ENGINES_SITE = "opt/edgekit-engines"  # ncnn, openvino: a layer added to the base (pi-rootfs.sh)
EXECUTORCH_SITE = "opt/edgekit-executorch"  # the executorch wheel + edgekit's C API: another layer


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEKIT_CACHE") or Path.home() / ".cache" / "edgekit")


def rootfs_dir() -> Path:
    return cache_dir() / "pi-rootfs"


def host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return "the host"


class QemuTarget(LocalTarget):
    emulated = True

    def __init__(
        self, name: str = "pi4-emu", rootfs: str | Path | None = None, timeout: float = 900.0
    ) -> None:
        super().__init__(timeout=timeout)
        self.name = name
        self.cpu = CPUS[name]
        self.rootfs = Path(rootfs) if rootfs else rootfs_dir()
        self.expected_arch = "aarch64"

    def _execute(
        self, files: list[Path], argv: list[str], fetch: str | None, local_dir: Path, timeout: float
    ) -> str:
        self._check_files()
        return super()._execute(files, argv, fetch, local_dir, timeout)

    def _check_files(self) -> None:
        if shutil.which(QEMU) is None:
            raise TargetError(
                f"{self.name}: {QEMU} not found",
                "install it with `apt-get install qemu-user-static`, then run `make pi-rootfs`",
            )
        for need in (".edgekit-stamp", "usr/bin/python3", SITE, "proc/cpuinfo"):
            if not (self.rootfs / need).exists():
                raise TargetError(
                    f"{self.name}: the arm64 rootfs at {self.rootfs} is missing or incomplete",
                    "build it with `make pi-rootfs` (about 1-2 minutes, needs a Debian mirror)",
                )

    def _parse(self, stdout: str) -> dict[str, Any]:
        try:
            return super()._parse(stdout)
        except TargetError as exc:
            if "is not installed on the target" not in exc.message:
                raise
            raise TargetError(
                exc.message,
                "add the engine layers to the rootfs: `make pi-rootfs` (ncnn, openvino, executorch)",
            ) from exc

    def _describe(self, machine: dict[str, Any]) -> dict[str, Any]:
        # The rootfs' cpuinfo is a Pi 4's for both models, and the core count is the host's.
        return {
            **machine,
            "features": FEATURES[self.cpu].split() if self.cpu in FEATURES else machine.get("features", []),
            "cpu": f"{self.cpu} (qemu user-mode on {host_cpu()})",
            "cores": None,
            "emulated": True,
        }

    def _command(self) -> list[str]:
        return [QEMU, "-cpu", self.cpu, "-L", str(self.rootfs), str(self.rootfs / "usr/bin/python3")]

    def _env(self) -> dict[str, str]:
        # Only the wheels built for the rootfs; nothing of the host's Python may leak in.
        keep = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") and k != "VIRTUAL_ENV"}
        path = os.pathsep.join(str(self.rootfs / site) for site in (SITE, ENGINES_SITE, EXECUTORCH_SITE))
        return {**keep, "PYTHONPATH": path, "PYTHONNOUSERSITE": "1"}
