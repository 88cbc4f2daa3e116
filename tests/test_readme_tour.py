"""The README's tour, run line by line as written, so the docs cannot drift from the code.

Each command of the ```sh block under "## A tour of the CLI" runs through bash in a fresh folder
with the installed ``edgekit`` script, ``HOME`` pointing at a folder where ``~/imagenet/val`` is
the shared ImageNet sample and ``~/digits`` the folders of ``examples/train_digits.py`` (whose
checkpoint is ``runs/best.pt``), and ``my_net.py`` is the README's own file. One substitution: the SSH
line's ``ssh://pi@raspberrypi.local`` (a board that is not here) becomes the test sshd on
127.0.0.1, reached with a key held by a real ssh-agent.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BOARD = "ssh://pi@raspberrypi.local"


def tour_commands(text: str) -> list[str]:
    """The commands of the tour's shell block, comments stripped."""
    section = text.split("## A tour of the CLI", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the tour has no ```sh block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def tour_file(text: str, name: str) -> str:
    """A ```python block of the tour that starts with ``# name``."""
    for code in re.findall(r"```python\n(.*?)```", text.split("## A tour of the CLI", 1)[1], re.S):
        if code.startswith(f"# {name}"):
            return code
    raise AssertionError(f"the README has no {name} block")


@pytest.fixture(scope="module")
def home(tmp_path_factory, imagenet_sample: Path, digits: dict, sshd) -> dict[str, str]:
    """A HOME with ~/imagenet/val, ~/digits, the sshd's host key in ~/.ssh/known_hosts, and an
    ssh-agent."""
    home = tmp_path_factory.mktemp("home")
    (home / "imagenet").mkdir()
    (home / "imagenet" / "val").symlink_to(imagenet_sample)
    (home / "digits").symlink_to(digits["root"])
    (home / ".ssh").mkdir(mode=0o700)
    shutil.copy(sshd["known_hosts"], home / ".ssh" / "known_hosts")
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True, timeout=30)
    env = dict(re.findall(r"(SSH_AUTH_SOCK|SSH_AGENT_PID)=([^;]+);", agent.stdout))
    subprocess.run(
        ["ssh-add", sshd["key_file"]], env={**os.environ, **env}, capture_output=True, check=True, timeout=30
    )
    cache = os.environ.get("EDGEKIT_CACHE") or str(Path.home() / ".cache" / "edgekit")
    yield {
        **os.environ,
        **env,
        "HOME": str(home),
        "EDGEKIT_CACHE": cache,  # the pretrained weights and the arm64 rootfs stay where they are
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    subprocess.run(["kill", env["SSH_AGENT_PID"]], check=False)


def test_every_tour_command_runs_as_written(home: dict[str, str], digits: dict, sshd, tmp_path: Path) -> None:
    text = README.read_text()
    commands = tour_commands(text)
    assert len(commands) >= 12 and all(c.startswith("edgekit ") for c in commands)
    (tmp_path / "my_net.py").write_text(tour_file(text, "my_net.py"))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "best.pt").symlink_to(digits["root"] / "checkpoint.pt")
    board = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd['port']}?python={sys.executable}"
    for command in commands:
        line = command.replace(BOARD, board)
        start = time.monotonic()
        proc = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=home, capture_output=True, text=True, timeout=900
        )
        print(f"{time.monotonic() - start:6.1f} s  {command}")
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, f"{command}\n{proc.stderr[-2000:]}"
        for noise in (
            "Serializing optimized model",
            "Created TensorFlow Lite XNNPACK delegate",
            "Warning:",  # Python's warnings (FutureWarning, UserWarning...)
            "WARNING:",  # libraries' logging
        ):
            assert noise not in proc.stdout + proc.stderr, f"{command}: engine log on the console: {noise}"
    artifacts = tmp_path / "artifacts"
    assert {p.name for p in artifacts.iterdir()} >= {"digits", "mobilenet_v2_r96", "mv2_per_tensor", "my_net"}
    report = (artifacts / "digits" / "report.md").read_text()
    assert "## Latency" in report and "ssh://" in (artifacts / "digits" / "bench.json").read_text()
    assert (artifacts / "digits" / "report.html").is_file()
