"""Targets: *where* a model runs (this machine, an emulated Pi, a Pi over SSH, a phone over adb).

The engine (onnxruntime, litert, ncnn, openvino, executorch) is chosen separately; every target
copies the model (with its companion files: ncnn's .bin) and the one standalone
``runtimes/runner.py`` to its working folder, runs it there and parses the single JSON object it
prints. Subclasses implement only the transport (``_execute``) and ``check``. torch files run
locally only: their runtime is torch (see ``LOCAL_ONLY``).

    target = get_target("pi4-emu")
    target.check()
    result = target.run("model_int8.tflite", "litert", threads=1, warmup=1, runs=3, inputs=batch)
    result["outputs"], result["latencies_ms"], result["machine"], result["emulated"]
    target.run("model.onnx", "onnxruntime", runs=30)     # latency only: seeded random input
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import TargetEngineError, TargetError, UsageError

if TYPE_CHECKING:
    import numpy as np

RUNNER = Path(__file__).resolve().parent.parent / "runner.py"
ENGINES = ("onnxruntime", "litert", "ncnn", "openvino", "executorch")  # what runner.py can load
# Engines the runner leaves out, and why (bench and eval skip them on a target with ENGINES).
LOCAL_ONLY = {"torch": "model.pt2 needs torch on the target"}
INPUT_FILE = "input.npy"
OUTPUT_FILE = "output.npy"
EMULATION_NOTE = "qemu user-mode emulation: not representative of the device"


class Target:
    """Base class: builds the runner's command line and turns its JSON into a result dict."""

    name: str = "target"
    emulated: bool = False
    expected_arch: str | None = None  # what the runner must report (None: whatever the host is)
    timeout: float = 600.0

    def check(self) -> None:
        """Raise TargetError (with a hint) when the target cannot run the runner."""
        self.probe()

    def probe(self) -> dict[str, Any]:
        """The target's machine description and the engines its Python can import."""
        with tempfile.TemporaryDirectory(prefix="edgekit-probe-") as tmp:
            stdout = self._execute([RUNNER], ["--probe"], None, Path(tmp), min(self.timeout, 120.0))
        return self._parse(stdout)

    def run(
        self,
        model_path: str | Path,
        engine: str,
        *,
        threads: int = 1,
        warmup: int = 3,
        runs: int = 10,
        inputs: np.ndarray | None = None,
        no_xnnpack: bool = False,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Run ``model_path`` with ``engine`` on the target; outputs come back when ``inputs`` are given.

        ``inputs`` is a float batch in the file's layout; int8 files are (de)quantised by the runner
        with the file's own scales, so ``result["outputs"]`` is float either way.
        """
        import numpy as np

        model = Path(model_path)
        if not model.is_file():
            raise UsageError(f"model file not found: {model}", "export it first: `edgekit export NAME`")
        if engine not in ENGINES:
            raise TargetError(
                f"{self.name} cannot run {engine}: {LOCAL_ONLY.get(engine, 'runner.py does not know it')}",
                f"run {model.name} with --target local, or choose a format for {', '.join(ENGINES)}",
            )
        fmt = _format_of(model)
        companions = [model.with_suffix(Path(name).suffix) for name in (fmt.companions if fmt else ())]
        for companion in companions:
            if not companion.is_file():
                raise UsageError(
                    f"{companion.name} not found beside {model.name}", "copy the files of a format together"
                )
        argv = [
            "--model",
            model.name,
            "--engine",
            engine,
            "--threads",
            str(threads),
            "--warmup",
            str(warmup),
            "--runs",
            str(runs),
            "--seed",
            str(seed),
        ]
        if no_xnnpack:
            argv.append("--no-xnnpack")
        if fmt is not None and fmt.precision == "fp16":
            argv.append("--fp16")  # ncnn's fp16 is a runtime option; the other engines' is in the file
        files = [RUNNER, model, *companions]
        with tempfile.TemporaryDirectory(prefix="edgekit-run-") as tmp:
            local = Path(tmp)
            if inputs is not None:
                np.save(local / INPUT_FILE, np.ascontiguousarray(inputs, dtype=np.float32))
                files.append(local / INPUT_FILE)
                argv += ["--input", INPUT_FILE, "--output", OUTPUT_FILE]
            stdout = self._execute(
                files, argv, OUTPUT_FILE if inputs is not None else None, local, self.timeout
            )
            result = self._parse(stdout)
            if inputs is not None:
                result["outputs"] = np.load(local / OUTPUT_FILE, allow_pickle=False)
        result.update(target=self.name, emulated=self.emulated)
        if self.emulated:
            result["note"] = EMULATION_NOTE
        return result

    # --- for subclasses ------------------------------------------------------------------------

    def _execute(
        self, files: list[Path], argv: list[str], fetch: str | None, local_dir: Path, timeout: float
    ) -> str:
        """Copy ``files`` to a fresh working folder on the target, run ``runner.py argv`` there, copy
        ``fetch`` back into ``local_dir``, remove the folder and return the runner's stdout."""
        raise NotImplementedError

    def _parse(self, stdout: str) -> dict[str, Any]:
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        try:
            result = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError) as exc:
            tail = stdout.strip().splitlines()[-1:] or ["no output"]
            raise TargetError(
                f"{self.name}: cannot parse the runner's result ({tail[0][:200]})",
                "the runner printed no JSON; run it by hand on the target to see why",
            ) from exc
        if not result.get("ok"):
            raise TargetEngineError(
                f"{self.name}: {result.get('error', 'runner failed')}",
                f"on the target: {result.get('hint', 'see the runner output')}",
            )
        self._check_arch(result["machine"])
        result["machine"] = self._describe(result["machine"])
        return result

    def _describe(self, machine: dict[str, Any]) -> dict[str, Any]:
        """The runner's view of the machine, corrected where the target knows better."""
        return machine

    def _crashed(self, code: int, stderr: str, hint: str | None = None) -> TargetError:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        tail = (stderr.strip().splitlines() or ["no error output"])[-1][:200]
        return TargetError(
            f"{self.name}: the runner {how} without a result ({tail})",
            hint or "the engine crashed on this file; try the other engine or format",
        )

    def _check_arch(self, machine: dict[str, Any]) -> None:
        arch = machine.get("arch")
        if self.expected_arch and arch != self.expected_arch:
            raise TargetError(
                f"{self.name} reported a {arch} machine, expected {self.expected_arch}",
                "the target ran the wrong interpreter; check its Python (or rebuild with "
                "`make pi-rootfs` for the emulated Pi)",
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}{' (emulated)' if self.emulated else ''}>"


def _format_of(model: Path) -> Any:
    """The file's format by its name (``model_fp16.ncnn.param`` -> ncnn-fp16), None if unknown."""
    from edgekit.formats import for_file

    try:
        return for_file(model)
    except UsageError:
        return None


def run_command(cmd: list[str], timeout: float, what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` with an argument list, captured text and a timeout that becomes a TargetError."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise TargetError(
            f"{what} did not finish within {timeout:.0f} s",
            "the target is too slow or hanging: check it, or allow more with --timeout SECONDS",
        ) from exc
    except FileNotFoundError as exc:
        raise TargetError(f"{cmd[0]} not found", f"install {cmd[0]} to use this target") from exc


def names() -> list[str]:
    return ["local", "pi4-emu", "pi5-emu", "avx2-emu", "ssh://user@host[:port]", "adb", "adb:SERIAL"]


def get_target(spec: str = "local", **options: Any) -> Target:
    """Parse a target spec: ``local``, ``pi4-emu``, ``pi5-emu``, ``avx2-emu``, ``ssh://user@host[:port]``,
    ``adb[:SERIAL]``.

    ``options`` go to the target's constructor (ssh: key_file, known_hosts, remote_python,
    ssh_options, connect_timeout; adb: remote_python; all: timeout).
    """
    spec = (spec or "local").strip()
    if spec == "local":
        from runtimes.targets.local import LocalTarget

        return LocalTarget(**options)
    if spec in ("pi4-emu", "pi5-emu"):
        from runtimes.targets.qemu import QemuTarget

        return QemuTarget(spec, **options)
    if spec == "avx2-emu":
        from runtimes.targets.x86emu import X86EmuTarget

        return X86EmuTarget(spec, **options)
    if spec.startswith("ssh://"):
        from runtimes.targets.ssh import SshTarget

        return SshTarget.from_url(spec, **options)
    if spec == "adb" or spec.startswith("adb:"):
        from runtimes.targets.adb import AdbTarget

        return AdbTarget(serial=spec.partition(":")[2] or None, **options)
    raise UsageError(f"unknown target {spec!r}", f"choose one of: {', '.join(names())}")
