"""Targets: the runner, local, the emulated Pi (real qemu + arm64 rootfs), SSH (a real sshd on
127.0.0.1; one test logs in to the rootfs's Python under qemu) and adb (tests/fake_adb/adb, a
local stand-in: no Android device is involved)."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import arm64_python, free_port

from edgekit.errors import TargetError, UsageError
from runtimes.targets import RUNNER, get_target
from runtimes.targets.local import LocalTarget
from runtimes.targets.qemu import ENGINES_SITE, EXECUTORCH_SITE, QemuTarget, rootfs_dir

RES = 32
FAKE_ADB = Path(__file__).parent / "fake_adb"
MODELS = {  # file -> (engine, layout)
    "m.onnx": ("onnxruntime", "NCHW"),
    "m_int8.onnx": ("onnxruntime", "NCHW"),
    "m_fp32.tflite": ("litert", "NHWC"),
    "m_int8.tflite": ("litert", "NHWC"),
}


# --- tiny real models, built once with the real converters ---------------------------------------


def _tiny_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.BatchNorm2d(8),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, 1, 1, groups=8),
        nn.ReLU6(),
        nn.Conv2d(8, 16, 1),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    return net.eval()


def _calibration(layout: str, n: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((1, 3, RES, RES), dtype=np.float32) for _ in range(n)]
    return batches if layout == "NCHW" else [b.transpose(0, 2, 3, 1).copy() for b in batches]


def _write_onnx(net, folder: Path) -> None:
    import torch

    from calibration.onnx_int8 import quantize_onnx

    torch.onnx.export(
        net,
        (torch.zeros(1, 3, RES, RES),),
        folder / "m.onnx",
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        opset_version=17,
    )
    # edgekit's quantiser: its weight grid computes the same on every CPU int8 path (the stock
    # quantize_static file saturates on x86 without VNNI, so "x86" would depend on the host).
    quantize_onnx(folder / "m.onnx", folder / "m_int8.onnx", np.concatenate(_calibration("NCHW")))


def _write_tflite(net, folder: Path) -> None:
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class Nhwc(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.permute(0, 3, 1, 2))

    model = Nhwc(net).eval()
    example = (torch.zeros(1, RES, RES, 3),)
    litert_torch.convert(model, example).export(str(folder / "m_fp32.tflite"))
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )
    graph = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    for batch in _calibration("NHWC"):
        graph(torch.from_numpy(batch))
    graph = convert_pt2e(graph, fold_quantize=False)
    converted = litert_torch.convert(
        graph, example, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
    )
    converted.export(str(folder / "m_int8.tflite"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    net = _tiny_net()
    _write_onnx(net, folder)
    _write_tflite(net, folder)
    return folder


@pytest.fixture(scope="module")
def ncnn_models(models: Path) -> Path:
    """m.onnx through pnnx as edgekit writes it: model.ncnn.* (fp32) and model_fp16.ncnn.* (fp16)."""
    pytest.importorskip("pnnx")
    import torch

    from edgekit.formats import WriteRequest
    from exporters.ncnn import convert

    folder = models / "ncnn"
    folder.mkdir()
    for name, fp16 in (("model.ncnn.param", False), ("model_fp16.ncnn.param", True)):
        request = WriteRequest(None, torch.zeros(1, 3, RES, RES), folder / name, source=models / "m.onnx")
        convert(request, fp16)
    return folder


@pytest.fixture(scope="module")
def batch() -> dict[str, np.ndarray]:
    x = np.random.default_rng(1).standard_normal((3, 3, RES, RES), dtype=np.float32)
    return {"NCHW": x, "NHWC": x.transpose(0, 2, 3, 1).copy()}


@pytest.fixture(scope="module")
def x86(models: Path, batch) -> dict[str, np.ndarray]:
    """Outputs of every model on this machine through the local target: the reference."""
    target = LocalTarget()
    out = {}
    for name, (engine, layout) in MODELS.items():
        out[name] = target.run(models / name, engine, warmup=0, runs=1, inputs=batch[layout])["outputs"]
    return out


def _lsb(models: Path, name: str) -> float:
    """One output step of an int8 file (0 for float files): TFLite's output scale; for the ONNX
    file's float logits, the most one step of the classifier's quantised input moves them."""
    if name == "m_int8.tflite":
        from ai_edge_litert.interpreter import Interpreter

        return float(Interpreter(model_path=str(models / name)).get_output_details()[0]["quantization"][0])
    if name == "m_int8.onnx":
        from calibration.onnx_check import output_step

        return output_step(models / name)
    return 0.0


# --- the registry and the runner ----------------------------------------------------------------


def test_get_target_parses_specs():
    assert isinstance(get_target("local"), LocalTarget)
    pi4, pi5 = get_target("pi4-emu"), get_target("pi5-emu")
    assert (pi4.cpu, pi5.cpu, pi4.emulated, pi4.expected_arch) == (
        "cortex-a72",
        "cortex-a76",
        True,
        "aarch64",
    )
    ssh = get_target("ssh://pi@raspberrypi.local:2222", remote_python="/usr/bin/python3.11")
    assert (ssh.user, ssh.host, ssh.port, ssh.remote_python) == (
        "pi",
        "raspberrypi.local",
        2222,
        "/usr/bin/python3.11",
    )
    assert get_target("ssh://10.0.0.7").port == 22
    assert get_target("adb").serial is None
    assert get_target("adb:R58M123").serial == "R58M123"
    with pytest.raises(UsageError, match="unknown target"):
        get_target("pi3-emu")
    with pytest.raises(UsageError, match="bad port"):
        get_target("ssh://pi@host:notaport")


def test_runner_prints_one_json_object(models, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(RUNNER),
            "--model",
            str(models / "m_int8.tflite"),
            "--engine",
            "litert",
            "--runs",
            "4",
            "--warmup",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["ok"]
    assert len(result["latencies_ms"]) == 4 and all(t > 0 for t in result["latencies_ms"])
    assert result["input"]["dtype"] == "int8" and result["output_quant"][0] > 0
    assert {"arch", "cpu", "cores", "features", "python", "os"} <= set(result["machine"])

    proc = subprocess.run(
        [sys.executable, str(RUNNER), "--model", str(tmp_path / "missing.onnx"), "--engine", "onnxruntime"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    failure = json.loads(proc.stdout)
    assert (
        proc.returncode != 0
        and failure["ok"] is False
        and "not found" in failure["error"]
        and failure["hint"]
    )


def test_runner_without_the_engine_says_what_to_install(models, tmp_path):
    # A bare interpreter (-I: no site-packages) is what a fresh board has.
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            str(RUNNER),
            "--model",
            str(models / "m.onnx"),
            "--engine",
            "onnxruntime",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    failure = json.loads(proc.stdout)
    assert proc.returncode == 3 and failure["ok"] is False
    assert failure["hint"].startswith("pip install")


def test_local_target_agrees_with_torch(models, batch, x86):
    import torch

    with torch.no_grad():
        ref = _tiny_net()(torch.from_numpy(batch["NCHW"])).numpy()
    np.testing.assert_allclose(x86["m.onnx"], ref, atol=1e-4)
    np.testing.assert_allclose(x86["m_fp32.tflite"], ref, atol=1e-4)
    # int8 files: within a few output steps of float, and the same top-1 on most samples.
    for name in ("m_int8.onnx", "m_int8.tflite"):
        assert np.abs(x86[name] - ref).max() < 12 * _lsb(models, name)


def test_latency_only_run(models):
    """Without inputs the runner times seeded random input and sends no outputs back."""
    result = get_target("local").run(models / "m.onnx", "onnxruntime", threads=1, warmup=1, runs=5)
    assert len(result["latencies_ms"]) == 5 and result["first_ms"] > 0
    assert result["target"] == "local" and result["emulated"] is False and "outputs" not in result


def test_arch_mismatch_is_detected(models):
    target = LocalTarget()
    target.expected_arch = "aarch64" if target.expected_arch != "aarch64" else "x86_64"
    with pytest.raises(TargetError, match=r"reported a \w+ machine, expected"):
        target.run(models / "m.onnx", "onnxruntime", runs=1, warmup=0)


# --- the emulated Pi ----------------------------------------------------------------------------

needs_rootfs = pytest.mark.skipif(
    shutil.which("qemu-aarch64-static") is None or not (rootfs_dir() / ".edgekit-stamp").exists(),
    reason="qemu-user-static or the arm64 rootfs is missing (run `make pi-rootfs` or scripts/test-deps.sh)",
)


def test_qemu_without_rootfs_says_make_pi_rootfs(tmp_path, models):
    target = QemuTarget("pi4-emu", rootfs=tmp_path / "no-rootfs")
    with pytest.raises(TargetError) as err:
        target.check()
    assert "make pi-rootfs" in err.value.hint
    with pytest.raises(TargetError):
        target.run(models / "m.onnx", "onnxruntime", runs=1)


@needs_rootfs
@pytest.mark.parametrize("name", list(MODELS))
def test_pi4_emu_matches_x86(name, models, batch, x86):
    engine, layout = MODELS[name]
    result = get_target("pi4-emu").run(models / name, engine, warmup=0, runs=1, inputs=batch[layout])
    assert (
        result["machine"]["arch"] == "aarch64"
        and result["emulated"] is True
        and "not representative" in result["note"]
    )
    diff = np.abs(result["outputs"] - x86[name]).max()
    lsb = _lsb(models, name)
    # Float kernels differ only in summation order; int8 ones in rounding: allow 2 output steps.
    assert diff <= (2 * lsb if lsb else 1e-4), f"{name}: ARM vs x86 max |diff| {diff:.3g} (lsb {lsb:.3g})"
    assert (result["outputs"].argmax(1) == x86[name].argmax(1)).all()


@needs_rootfs
def test_pi5_emu_runs_int8_litert(models, batch, x86):
    target = get_target("pi5-emu")
    target.check()
    result = target.run(models / "m_int8.tflite", "litert", warmup=0, runs=2, inputs=batch["NHWC"])
    assert "cortex-a76" in result["machine"]["cpu"] and len(result["latencies_ms"]) == 2
    assert np.abs(result["outputs"] - x86["m_int8.tflite"]).max() <= 2 * _lsb(models, "m_int8.tflite")


needs_executorch = pytest.mark.skipif(
    not (rootfs_dir() / EXECUTORCH_SITE / ".edgekit-stamp").exists(),
    reason="the rootfs has no ExecuTorch layer: run `make pi-rootfs` (needs g++-aarch64-linux-gnu)",
)
needs_engines = pytest.mark.skipif(
    not (rootfs_dir() / ENGINES_SITE / ".edgekit-stamp").exists(),
    reason="the rootfs has no engine layer (ncnn, openvino): run `make pi-rootfs`",
)
# fp16 files: float16 weights, activations stored in float16. Pi 4 (A72) and x86 both compute in
# float32 between fp16 stores, so they differ by summation order plus the odd store rounded the
# other way: one float16 step (2**-11 relative) of the largest logit, with 2x headroom.
FP16_STEP = 2.0**-11


def _local(path: Path, engine: str, x: np.ndarray) -> np.ndarray:
    return LocalTarget().run(path, engine, warmup=0, runs=1, inputs=x)["outputs"]


@needs_rootfs
@needs_engines
def test_pi4_emu_runs_ncnn_fp32_and_fp16(ncnn_models, batch):
    target = get_target("pi4-emu")
    for name, fp16 in (("model.ncnn.param", False), ("model_fp16.ncnn.param", True)):
        result = target.run(ncnn_models / name, "ncnn", warmup=0, runs=1, inputs=batch["NCHW"])
        x86 = _local(ncnn_models / name, "ncnn", batch["NCHW"])
        assert result["fp16"] is fp16 and result["machine"]["arch"] == "aarch64" and result["emulated"]
        diff = np.abs(result["outputs"] - x86).max()
        # fp32: summation order only (the float tolerance of the other engines).
        assert diff <= (2 * FP16_STEP * np.abs(x86).max() if fp16 else 1e-4), f"{name}: {diff:.3g}"
        assert (result["outputs"].argmax(1) == x86.argmax(1)).all()


@needs_rootfs
@needs_engines
def test_pi_emu_runs_onnx_in_openvino(models, batch, x86):
    # Pi 4: float only (OpenVINO 2026.4 does not compile QDQ int8 for ARMv8.0 cores: docs/targets.md).
    fp32 = get_target("pi4-emu").run(models / "m.onnx", "openvino", warmup=0, runs=1, inputs=batch["NCHW"])
    assert fp32["engine"] == "openvino" and fp32["engine_version"].startswith("2026.")
    np.testing.assert_allclose(fp32["outputs"], x86["m.onnx"], atol=1e-4)
    int8 = get_target("pi5-emu").run(
        models / "m_int8.onnx", "openvino", warmup=0, runs=1, inputs=batch["NCHW"]
    )
    # Another engine's int8 kernels on another CPU: within a few output steps of ONNX Runtime on x86.
    assert np.abs(int8["outputs"] - x86["m_int8.onnx"]).max() <= 4 * _lsb(models, "m_int8.onnx")


@needs_rootfs
@pytest.mark.parametrize(
    ("name", "engine"),
    [("model.onnx", "onnxruntime"), pytest.param("model.pte", "executorch", marks=needs_executorch)],
)
def test_an_engine_failing_on_one_file_is_not_a_target_failure(tmp_path, name, engine):
    """The engine's own reason comes back (ExecuTorch's through the C API); bench and eval skip
    that file in that engine with it and go on with the others."""
    from edgekit.errors import TargetEngineError

    bad = tmp_path / name
    bad.write_bytes(b"not a model file")
    with pytest.raises(TargetEngineError) as err:
        get_target("pi4-emu").run(bad, engine, warmup=0, runs=1)
    assert f"{engine} cannot load {name}" in err.value.message


def test_targets_leave_the_torch_file_local_with_the_reason(tmp_path):
    pt2 = tmp_path / "model.pt2"
    pt2.write_bytes(b"not run")
    with pytest.raises(TargetError) as err:
        get_target("pi4-emu").run(pt2, "torch")
    assert "needs torch on the target" in err.value.message and "--target local" in err.value.hint


def test_runner_without_the_executorch_c_api_says_how_to_add_it(tmp_path):
    # This machine's Python has the executorch wheel but not edgekit's C API beside it.
    (tmp_path / "model.pte").write_bytes(b"never loaded")
    proc = subprocess.run(
        [sys.executable, str(RUNNER), "--model", str(tmp_path / "model.pte"), "--engine", "executorch"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    failure = json.loads(proc.stdout)
    assert proc.returncode == 3 and "libexecutorch_capi.so is not on the Python path" in failure["error"]
    assert "executorch==1.5.1" in failure["hint"] and "docs/targets.md" in failure["hint"]


# --- SSH against a real OpenSSH server on 127.0.0.1 ------------------------------------------------


def _ssh(sshd, known_hosts: str | None = None, remote_python: str = sys.executable):
    return get_target(
        f"ssh://{getpass.getuser()}@127.0.0.1:{sshd['port']}",
        key_file=sshd["key_file"],
        known_hosts=known_hosts or sshd["known_hosts"],
        remote_python=remote_python,
    )


@pytest.mark.parametrize("name", ["m.onnx", "m_int8.tflite"])
def test_ssh_matches_local(sshd, name, models, batch, x86):
    engine, layout = MODELS[name]
    target = _ssh(sshd)
    target.check()
    result = target.run(models / name, engine, warmup=1, runs=3, inputs=batch[layout])
    assert result["target"].startswith("ssh://") and result["emulated"] is False
    assert len(result["latencies_ms"]) == 3
    np.testing.assert_allclose(result["outputs"], x86[name], atol=1e-6)


@needs_rootfs
@needs_engines
def test_ssh_to_an_arm64_python_runs_ncnn(sshd, ncnn_models, batch, tmp_path):
    """The remote Python is the rootfs's under qemu (a Pi's Python as far as SSH can tell): the
    runner, the .param and its .bin go over scp, the outputs come back."""
    target = _ssh(sshd, remote_python=str(arm64_python(tmp_path)))
    result = target.run(ncnn_models / "model.ncnn.param", "ncnn", warmup=0, runs=2, inputs=batch["NCHW"])
    assert result["machine"]["arch"] == "aarch64" and len(result["latencies_ms"]) == 2
    assert (
        np.abs(result["outputs"] - _local(ncnn_models / "model.ncnn.param", "ncnn", batch["NCHW"])).max()
        <= 1e-4
    )


def test_ssh_unknown_host_key_is_refused(sshd, models):
    with pytest.raises(TargetError) as err:
        _ssh(sshd, known_hosts=sshd["empty_known_hosts"]).check()
    assert "host key" in err.value.message and "ssh-keyscan" in err.value.hint
    assert "\n" not in str(err.value)


def test_ssh_unreachable_port_fails_fast(sshd):
    target = get_target(
        f"ssh://nobody@127.0.0.1:{free_port()}", known_hosts=sshd["known_hosts"], connect_timeout=3
    )
    start = time.monotonic()
    with pytest.raises(TargetError, match="cannot reach") as err:
        target.check()
    assert time.monotonic() - start < 10 and "\n" not in str(err.value)


def test_ssh_missing_remote_python_says_what_to_install(sshd):
    with pytest.raises(TargetError) as err:
        _ssh(sshd, remote_python="/nonexistent/python3").check()
    assert "install Python" in err.value.hint


# --- adb, through the fake adb in tests/fake_adb (no Android device) -------------------------------


@pytest.fixture
def fake_adb(tmp_path, monkeypatch) -> Path:
    device = tmp_path / "device-tmp"
    device.mkdir()
    monkeypatch.setenv("PATH", f"{FAKE_ADB}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(device))
    monkeypatch.setenv("FAKE_ADB_SERIAL", "fake-0001")
    return device


def test_adb_matches_local_and_cleans_up(fake_adb, models, batch, x86):
    target = get_target("adb:fake-0001", remote_python=sys.executable)
    target.check()
    result = target.run(models / "m_fp32.tflite", "litert", warmup=0, runs=2, inputs=batch["NHWC"])
    assert result["target"] == "adb:fake-0001" and len(result["latencies_ms"]) == 2
    np.testing.assert_allclose(result["outputs"], x86["m_fp32.tflite"], atol=1e-6)
    assert list(fake_adb.iterdir()) == []  # the working folder on the "device" is gone


def test_adb_device_errors(fake_adb, monkeypatch):
    with pytest.raises(TargetError, match="does not see device other"):
        get_target("adb:other").check()
    monkeypatch.setenv("FAKE_ADB_SERIAL", "")
    with pytest.raises(TargetError, match="does not see a device"):
        get_target("adb").check()
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent.parent / "no-such-dir"))
    with pytest.raises(TargetError) as err:
        get_target("adb").check()
    assert "platform-tools" in err.value.hint


# --- make pi-bench (emulated mode) on the tiny models ----------------------------------------------


@needs_rootfs
def test_pibench_emulated_rows_and_readme(models):
    from edgekit import formats
    from edgekit.manifest import FileEntry, Manifest, write_manifest
    from edgekit.studies import pibench

    manifest = Manifest(model={}, input={}, preprocess={"resolution": RES})
    for fmt, name in [("onnx-fp32", "m.onnx"), ("tflite-int8", "m_int8.tflite")]:
        manifest.files[fmt] = FileEntry.of(models, formats.get(fmt), {}, {}, filename=name)
    write_manifest(models, manifest)
    plan = {**pibench.EMULATED, "resolution": RES, "runs": 1}
    rows = pibench.bench_folder("tiny", models, get_target("pi4-emu"), plan)
    assert [r["format"] for r in rows] == ["onnx-fp32", "tflite-int8"]
    for row in rows:
        assert row["emulated"] and row["arm_vs_x86"]["top1_agreement"] == 1.0 and row["estimate_ms"] is None
    text = pibench.readme({"target": "pi4-emu", "emulated": True, "plan": plan, "rows": rows})
    head = text.split("| model |")[0]
    assert "ESTIMATES" in head and "not representative" in head and text.count("\n| tiny |") == 2


def test_eval_on_a_target_runs_the_engine_asked_and_skips_what_it_cannot(monkeypatch):
    """eval --target: an extra engine is planned on the target under its own name, and a format
    whose default engine the runner lacks is a skip with the reason, not a failed command."""
    from types import SimpleNamespace

    from edgekit.evaluate import Skip, runs

    pi = SimpleNamespace(name="pi4-emu")
    chosen = ["executorch-fp32", "onnx-fp32"]
    found = {key: engine for key, _, engine in runs(chosen, pi, ["openvino"])}
    assert found["executorch-fp32"] == "executorch"
    assert found["onnx-fp32"] == "onnxruntime" and found["onnx-fp32 (openvino)"] == "openvino"
    # A board runner without ExecuTorch (every built-in format's engine is in runner.py now).
    monkeypatch.setattr("runtimes.targets.ENGINES", ("onnxruntime", "openvino"))
    skip = {key: engine for key, _, engine in runs(chosen, pi)}["executorch-fp32"]
    assert isinstance(skip, Skip) and "runs onnxruntime, openvino only" in skip.reason


def test_the_emulated_pis_name_their_own_cores_int8_path() -> None:
    """The rootfs's cpuinfo is a Pi 4's; the int8 path beside a pi5-emu figure is the A76's."""
    from edgekit.machine import int8_path
    from runtimes.targets.qemu import QemuTarget

    pi4 = {"arch": "aarch64", "features": ["fp", "asimd"], "cpu": "Cortex-A72"}
    assert "without dot product" in int8_path(QemuTarget("pi4-emu")._describe(pi4))
    assert "dot product (SDOT/UDOT)" in int8_path(QemuTarget("pi5-emu")._describe(pi4))
