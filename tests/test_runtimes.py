"""The engines: registry (built-ins and entry points), loading, agreement with PyTorch, int8 I/O."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
from _bench_models import build, calib_batches, int8_io_onnx, int8_io_tflite

import runtimes
from edgekit.errors import RuntimeUnavailableError, UsageError
from runtimes.base import Runtime, Session, dequantize, quantize

RES = 32


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("tiny") / "hswish", act="hardswish", res=RES)


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.concatenate(calib_batches(RES, 3))


@pytest.fixture(scope="module")
def reference(art: Path, x: np.ndarray) -> np.ndarray:
    return runtimes.get_runtime("torch").load(art / "model.pt2").run(x)


# --- registry ---------------------------------------------------------------------------------


def test_builtin_names_and_suffixes():
    assert runtimes.runtime_names()[:3] == ["torch", "onnxruntime", "litert"]
    assert runtimes.runtime_for_file("a/model.onnx") == "onnxruntime"
    assert runtimes.runtime_for_file("model_int8.tflite") == "litert"
    assert runtimes.runtime_for_file("model.pt2") == "torch"
    assert runtimes.get_runtime("ort").name == "onnxruntime"
    with pytest.raises(UsageError, match="no runtime loads"):
        runtimes.runtime_for_file("model.bin")
    with pytest.raises(UsageError, match="unknown runtime"):
        runtimes.get_runtime("tensorrt")


class EchoRuntime(Runtime):
    """A plug-in engine for ``.echo`` files: returns the per-sample mean of its input."""

    name = "echo"
    suffixes = (".echo",)

    def available(self):
        return True, ""

    def version(self):
        return "0"

    def load(self, path, threads=1, **opts):
        return EchoSession(path, threads)


class EchoSession(Session):
    runtime = "echo"

    def prepare(self, x):
        return x

    def invoke(self, native):
        return native.mean(axis=(1, 2, 3), keepdims=True)


class FakeEntryPoint:
    def __init__(self, name: str, obj: object) -> None:
        self.name, self._obj = name, obj

    def load(self) -> object:
        return self._obj


def test_entry_point_plugin(monkeypatch):
    real = importlib.metadata.entry_points

    def fake(**kw):
        if kw.get("group") == runtimes.ENTRY_POINT_GROUP:
            return [FakeEntryPoint("echo", EchoRuntime)]
        return real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    builtin = ["torch", "onnxruntime", "litert", "openvino", "executorch", "ncnn"]
    assert runtimes.runtime_names() == [*builtin, "echo"]
    assert runtimes.runtimes_for_file("m.echo") == ["echo"]
    sess = runtimes.get_runtime("echo").load("m.echo")
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(sess.run(data)[:, 0], data.reshape(2, -1).mean(axis=1))


def test_entry_point_not_a_runtime(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **kw: [FakeEntryPoint("bogus", object)])
    with pytest.raises(RuntimeUnavailableError, match=r"not a runtimes\.base\.Runtime"):
        runtimes.get_runtime("bogus")


def test_missing_runtime_reports_reason(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ort(name, *args, **kw):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    ok, reason = runtimes.get_runtime("onnxruntime").available()
    assert not ok and "pip install onnxruntime" in reason


@pytest.mark.parametrize("name", ["torch", "onnxruntime", "litert", "openvino"])
def test_available(name):
    ok, reason = runtimes.get_runtime(name).available()
    assert ok, reason


# --- engines agree with PyTorch ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "file", "atol"),
    [
        ("onnxruntime", "model.onnx", 1e-4),
        ("litert", "model_fp32.tflite", 1e-4),
        ("openvino", "model.onnx", 1e-4),  # f32 forced: its bf16 default on AMX would fail this
        # int8: random calibration on a random net; bounded by a few output quantisation steps
        ("onnxruntime", "model_int8.onnx", 0.05),
        ("litert", "model_int8.tflite", 0.05),
        ("openvino", "model_int8.onnx", 0.05),
    ],
)
def test_engine_agrees_with_torch(art, x, reference, name, file, atol):
    sess = runtimes.get_runtime(name).load(art / file, threads=1)
    xin = x if sess.layout == "NCHW" else x.transpose(0, 2, 3, 1)
    out = sess.run(xin)  # batch of 3 through a file with a static batch of 1
    assert out.shape == reference.shape == (3, 10)
    assert out.dtype == np.float32
    scale = float(np.abs(reference).max())
    assert np.abs(out - reference).max() <= atol * max(scale, 1.0)
    assert (out.argmax(1) == reference.argmax(1)).mean() >= 2 / 3


def test_describe(art):
    desc = runtimes.get_runtime("litert").load(art / "model_int8.tflite", threads=2).describe()
    assert desc["runtime"] == "litert" and desc["threads"] == 2 and desc["delegate"] == "XNNPACK"
    assert desc["input"]["shape"] == [1, RES, RES, 3]
    desc = runtimes.get_runtime("onnxruntime").load(art / "model.onnx", graph_optimization="basic").describe()
    assert desc["provider"] == "CPUExecutionProvider" and desc["graph_optimization"] == "basic"
    assert desc["input"]["dtype"] == "float32" and desc["input"]["shape"] == [1, 3, RES, RES]


@pytest.mark.parametrize("spin", [False, True])
def test_ort_worker_threads_sleep_unless_asked(art, spin):
    """Spinning workers made 2 threads slower than 1 on a shared host (runtimes/ort.py)."""
    kwargs = {"spin": True} if spin else {}
    session = runtimes.get_runtime("onnxruntime").load(art / "model.onnx", threads=2, **kwargs)
    options = session._sess.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == ("1" if spin else "0")
    assert session.describe()["spinning"] is spin


def test_openvino_runs_fp32_in_fp32_and_int8_in_int8(art):
    rt = runtimes.get_runtime("openvino")
    assert rt.load(art / "model.onnx").describe()["inference_precision"] == "<Type: 'float32'>"
    layers = rt.load(art / "model_int8.onnx").layers()
    convs = [layer for layer in layers if layer["type"] == "Convolution"]
    assert convs and all(layer["precision"] in ("u8", "i8") for layer in convs), convs[:3]
    # the global average pool runs in float, as in ONNX Runtime (ReduceMean has no int8 kernel there)
    assert [op["op"] for op in rt.slow_path(art / "model_int8.onnx")] == ["Reduce (f32)"]


def test_openvino_telemetry_is_not_installed():
    """openvino-telemetry sends usage data from a forked process when a model is read: edgekit
    installs OpenVINO without it (requirements-nodeps.lock), so nothing leaves the machine."""
    import importlib.util

    assert importlib.util.find_spec("openvino_telemetry") is None


def test_prepare_invoke_is_run(art, x):
    sess = runtimes.get_runtime("onnxruntime").load(art / "model_int8.onnx")
    np.testing.assert_array_equal(sess.finish(sess.invoke(sess.prepare(x[:1]))), sess.run(x[:1]))


# --- int8 I/O ---------------------------------------------------------------------------------


def test_quantize_roundtrip():
    values = np.array([-10.0, -0.26, 0.0, 0.25, 0.75, 10.0], np.float32)
    q = quantize(values, 0.5, 3, np.int8)
    assert q.dtype == np.int8
    assert q.tolist() == [-17, 2, 3, 3, 5, 23]  # round half to even, as the runtimes do
    np.testing.assert_allclose(dequantize(q, 0.5, 3), [-10.0, -0.5, 0.0, 0.0, 1.0, 10.0])
    assert quantize(np.array([1e6, -1e6], np.float32), 0.1, 0, np.uint8).tolist() == [255, 0]


def test_int8_io_tflite_quantises_inside(art, x, tmp_path):
    path = int8_io_tflite(art / "model_int8.tflite", tmp_path / "io8.tflite")
    sess = runtimes.get_runtime("litert").load(path)
    inp = sess.describe()["input"]
    assert inp["dtype"] == "int8" and inp["scale"] > 0
    xin = x[:1].transpose(0, 2, 3, 1)
    native = sess.prepare(xin)
    assert native.dtype == np.int8
    np.testing.assert_array_equal(native, quantize(xin, inp["scale"], inp["zero_point"], np.int8))
    assert sess.run(xin).dtype == np.float32


def test_int8_io_onnx_reads_scale_from_graph(tmp_path):
    sess = runtimes.get_runtime("onnxruntime").load(int8_io_onnx(tmp_path / "io8.onnx", res=8))
    assert (sess.input["dtype"], sess.input["zero_point"]) == ("uint8", 128)
    assert sess.input["scale"] == pytest.approx(0.05)
    assert sess.output["scale"] == pytest.approx(0.1) and sess.output["zero_point"] == 120
    data = np.random.default_rng(0).uniform(-1, 1, (2, 3, 8, 8)).astype(np.float32)
    assert sess.prepare(data)["q_in"].dtype == np.uint8
    out = sess.run(data)
    assert out.shape == (2, 4) and out.dtype == np.float32
    # outputs are whole multiples of the output scale: they were dequantised inside
    np.testing.assert_allclose(out / 0.1, np.rint(out / 0.1), atol=1e-4)


def test_litert_delegation_report(art):
    with_xnn = runtimes.get_runtime("litert").load(art / "model_int8.tflite").ops()
    without = runtimes.get_runtime("litert").load(art / "model_int8.tflite", xnnpack=False).ops()
    assert [o["op_name"] for o in with_xnn] == [o["op_name"] for o in without]
    assert not any(o["delegated"] for o in without)
    convs = [o for o in with_xnn if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == 3 and all(o["delegated"] for o in convs)
    # XNNPACK has no int8 HARD_SWISH: each one falls back to the TFLite kernel
    hswish = [o for o in with_xnn if o["op_name"] == "HARD_SWISH"]
    assert len(hswish) == 3 and not any(o["delegated"] for o in hswish)
