"""An Android device over adb: the runner runs in the device's shell under a Python found there.

Android ships no Python; install one on the device (e.g. Termux's ``python`` with numpy and
ai-edge-litert wheels for aarch64) and pass its path as ``remote_python``. Files go to a fresh
``/data/local/tmp/edgekit.XXXXXX`` folder that is removed after each run.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
from pathlib import Path

from edgekit.errors import TargetError
from runtimes.targets import Target, run_command

DEVICE_TMP = "/data/local/tmp"


class AdbTarget(Target):
    def __init__(
        self,
        serial: str | None = None,
        *,
        remote_python: str = "python3",
        timeout: float = 600.0,
        arch: str | None = None,
    ) -> None:
        self.serial = serial
        self.name = f"adb:{serial}" if serial else "adb"
        self.remote_python = remote_python
        self.timeout = timeout
        self.expected_arch = arch

    def _adb(self) -> list[str]:
        adb = shutil.which("adb")
        if adb is None:
            raise TargetError(
                "adb not found on PATH",
                "install Android platform-tools (apt install adb, or Google's SDK platform-tools)",
            )
        return [adb, "-s", self.serial] if self.serial else [adb]

    def devices(self) -> list[str]:
        """Serials of the devices adb sees in the ``device`` state (not offline/unauthorized)."""
        proc = run_command([*self._adb(), "devices"], 30.0, "adb devices")
        rows = [line.split() for line in proc.stdout.splitlines()[1:]]
        return [row[0] for row in rows if len(row) >= 2 and row[1] == "device"]

    def check(self) -> None:
        found = self.devices()
        if not found or (self.serial and self.serial not in found):
            which = f"device {self.serial}" if self.serial else "a device"
            raise TargetError(
                f"{self.name}: adb does not see {which} (seen: {', '.join(found) or 'none'})",
                "connect it with USB debugging enabled and accept the prompt; see `adb devices`",
            )
        if not self.serial and len(found) > 1:
            raise TargetError(
                f"adb sees {len(found)} devices ({', '.join(found)})", "pick one: --target adb:SERIAL"
            )
        super().check()

    def shell(self, command: str, timeout: float) -> str:
        """Run one device shell ``command`` (already quoted) and return its stdout."""
        proc = run_command([*self._adb(), "shell", command], timeout, f"{self.name} shell")
        if proc.returncode == 127 or "not found" in proc.stderr:
            raise TargetError(
                f"{self.name}: {proc.stderr.strip()[:160] or 'command not found'}",
                f"install Python with numpy on the device (e.g. Termux) and pass its path "
                f"(now {self.remote_python!r})",
            )
        if proc.returncode != 0 and not proc.stdout.strip():
            raise self._crashed(proc.returncode, proc.stderr)
        return proc.stdout

    def _transfer(self, verb: str, args: list[str], timeout: float) -> None:
        proc = run_command([*self._adb(), verb, *args], timeout, f"adb {verb}")
        if proc.returncode != 0:
            raise TargetError(
                f"{self.name}: adb {verb} failed ({proc.stderr.strip()[:160]})",
                "check free space in /data/local/tmp and that the device is still connected",
            )

    def _execute(
        self, files: list[Path], argv: list[str], fetch: str | None, local_dir: Path, timeout: float
    ) -> str:
        workdir = self.shell(f"mktemp -d {DEVICE_TMP}/edgekit.XXXXXX", 60.0).strip()
        if not workdir.startswith(f"{DEVICE_TMP}/edgekit."):
            raise TargetError(f"{self.name}: mktemp gave {workdir[:80]!r}", "the device needs toybox mktemp")
        try:
            self._transfer("push", [*(str(f) for f in files), workdir + "/"], timeout)
            command = " ".join(shlex.quote(a) for a in [self.remote_python, "runner.py", *argv])
            stdout = self.shell(f"cd {shlex.quote(workdir)} && {command}", timeout)
            if fetch and '"ok": true' in stdout:
                self._transfer("pull", [f"{workdir}/{fetch}", str(local_dir / fetch)], timeout)
            return stdout
        finally:
            with contextlib.suppress(TargetError):  # never hide the real failure behind the clean-up's
                self.shell(f"rm -rf {shlex.quote(workdir)}", 60.0)
