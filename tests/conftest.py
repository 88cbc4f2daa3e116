"""Shared fixtures: the ../shared data (skipped cleanly when absent) and one small artifact folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

# The longest test files (minutes each, on a 2-core AVX2 EPYC), started first: with `make test`'s
# `--dist loadfile --no-loadscope-reorder` each goes to a worker at once and the many short files
# fill the other, instead of the README tour starting last and running alone for minutes.
LONGEST_FIRST = (
    "test_readme_tour.py", "test_executorch.py", "test_peers.py", "test_int8.py", "test_user_model.py",
    "test_eval.py", "test_int8_exactness.py",
)  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    from edgekit.allocator import keep_freed_memory

    keep_freed_memory()  # as the CLI does: the exports the tests run in-process reuse freed memory


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest as collected


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository; tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (shared data for the team)")
    return SHARED


@pytest.fixture(scope="session")
def imagenet_sample(shared_dir: Path) -> Path:
    """The 250-image ImageNet sample (ImageFolder layout, ``classes.txt`` beside the synsets)."""
    path = shared_dir / "data" / "imagenet-sample"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, make: Callable[[Path], Any]) -> Any:
    """``make(folder)`` run once per test session, even with pytest-xdist's workers (``make -j``):
    the first worker builds under a file lock in the session's shared temp folder, the others read
    its JSON result."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    folder, done = root / f"shared-{name}", root / f"shared-{name}.json"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.is_file():
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(make(folder)))
    return json.loads(done.read_text())


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, verified export of MobileNetV2-0.35 at 64 px: model.pt2, ONNX, TFLite fp32/fp16.

    Built once per session (~40 s on 2 cores) with the real converters; treat it as read-only.
    """

    def make(folder: Path) -> str:
        from edgekit import pipeline

        out = folder / "mobilenet_v2"
        pipeline.export("mobilenet_v2", out_dir=out, width=0.35, resolution=64, argv=["pytest"])
        return str(out)

    return Path(built_once(tmp_path_factory, "small_artifact", make))


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A user's trained model: ``examples/train_digits.py`` run once per session (~30 s).

    scikit-learn's digits as ImageFolders ``train/`` and ``val/`` (word-named classes, so sorted
    folder order differs from digit order), a DDP-style ``checkpoint.pt`` of MobileNetV2-0.35 at
    64 px, and the training script's own top-1 on ``val``.
    """
    pytest.importorskip("sklearn")
    module = train_digits_module()

    def make(root: Path) -> dict:
        module.write_folders(root)
        return {"root": str(root), **module.train(root)}

    figures = built_once(tmp_path_factory, "digits", make)
    return {**figures, "root": Path(figures["root"]), "module": module}


def train_digits_module() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- a real sshd on 127.0.0.1 ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 (throwaway host and user keys), for the SSH target."""
    if (
        not Path("/usr/sbin/sshd").exists()
        or shutil.which("ssh") is None
        or shutil.which("ssh-keygen") is None
    ):
        pytest.skip("OpenSSH server/client not installed (scripts/test-deps.sh installs them)")
    folder = tmp_path_factory.mktemp("sshd")
    _keygen(folder / "host_key")
    _keygen(folder / "user_key")
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {folder / 'host_key'}",
                f"PidFile {folder / 'sshd.pid'}",
                f"AuthorizedKeysFile {folder / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "Subsystem sftp /usr/lib/openssh/sftp-server",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation folder sshd insists on
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read().strip()[-200:]}")
        time.sleep(0.1)
    key_type, key = (folder / "host_key.pub").read_text().split()[:2]
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type} {key}\n")
    (folder / "empty_known_hosts").write_text("")
    yield {
        "port": port,
        "key_file": str(folder / "user_key"),
        "known_hosts": str(folder / "known_hosts"),
        "empty_known_hosts": str(folder / "empty_known_hosts"),
    }
    proc.terminate()
    proc.wait(timeout=10)


def arm64_python(folder: Path) -> Path:
    """A ``python3`` script that runs the pi4-emu rootfs's Python under qemu with the rootfs's
    engine layers: a Pi's Python as far as an SSH login can tell."""
    import shlex

    from runtimes.targets import get_target

    pi = get_target("pi4-emu")
    python = folder / "arm64-python"
    env = [f"{k}={v}" for k, v in pi._env().items() if k.startswith("PYTHON")]
    python.write_text(f'#!/bin/sh\nexec env {shlex.join([*env, *pi._command()])} "$@"\n')
    python.chmod(0o755)
    return python


def manifest_json(folder: Path, check_hashes: bool = True) -> dict:
    """A folder's manifest in its JSON form (what manifest.json and `export --json` hold)."""
    from edgekit.manifest import read_manifest

    return read_manifest(folder, check_hashes).to_dict()
