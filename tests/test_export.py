"""edgekit export: the artifact folder, NHWC TFLite, verification gates, failures, user modules.

Everything runs the real converters and engines; the session's ``small_artifact`` (conftest) is
the one full export, the other tests export ONNX only or a tiny user network.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import manifest_json

from calibration.preprocess import PreprocessSpec
from edgekit import pipeline, verify
from edgekit.build import build
from edgekit.errors import UsageError

TINY = {"width": 0.35, "resolution": 64}
EXPECTED_FILES = {
    "torch": "model.pt2",
    "onnx-fp32": "model.onnx",
    "tflite-fp32": "model_fp32.tflite",
    "tflite-fp16": "model_fp16.tflite",
}


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def _model(name: str = "mobilenet_v2"):
    # The pipeline's own build: seeded weights and batch-norm statistics from the built-in photos.
    return build(name, width=TINY["width"], resolution=TINY["resolution"]).model


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "edgekit", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


# --- the artifact folder -------------------------------------------------------------------------


def test_artifact_folder_and_manifest(small_artifact: Path) -> None:
    manifest = manifest_json(small_artifact, check_hashes=True)  # raises on any hash mismatch
    assert {fmt: e["path"] for fmt, e in manifest["files"].items()} == EXPECTED_FILES
    hashes = _hashes(small_artifact)
    for entry in manifest["files"].values():
        assert hashes[entry["path"]] == entry["sha256"]
        assert (small_artifact / entry["path"]).stat().st_size == entry["size"]
    assert {"manifest.json", "report.md"} <= set(hashes)
    assert not list(small_artifact.parent.glob(".mobilenet_v2.*")), "staging folder left behind"

    model = manifest["model"]
    assert model["source"] == "zoo" and model["args"]["resolution"] == 64
    assert model["args"]["num_classes"] == 1000
    assert model["params"] == sum(p.numel() for p in _model().parameters())
    assert 1e6 < model["macs"] < 2e7  # MobileNetV2-0.35 at 64 px: ~5.6 M MACs
    assert manifest["input"] == {"shape": [1, 3, 64, 64], "dtype": "float32", "layout": "NCHW"}
    assert manifest["preprocess"]["resolution"] == 64 and manifest["preprocess"]["resize"] == 73
    tools = ("python", "torch", "onnx", "onnxruntime", "onnxslim", "litert-torch")
    assert all(manifest["tools"][k] for k in tools)
    onnx_entry = manifest["files"]["onnx-fp32"]
    assert onnx_entry["opset"] >= 18 and onnx_entry["ops"]["Conv"] == 52
    assert onnx_entry["inputs"][0]["name"] == "input" and onnx_entry["outputs"][0]["name"] == "logits"


def test_tflite_files_take_nhwc(small_artifact: Path) -> None:
    """Fed an NHWC photo directly (no edgekit code in the loop), TFLite matches PyTorch on NCHW."""
    import torch
    from ai_edge_litert.interpreter import Interpreter

    manifest = manifest_json(small_artifact)
    images = verify.sample_images(PreprocessSpec.from_dict(manifest["preprocess"]), 2)
    with torch.inference_mode():
        float_ref = _model()(torch.from_numpy(images)).numpy()
        fp16_ref = verify.fp16_reference(_model())(torch.from_numpy(images)).numpy()
    for fmt, reference in (("tflite-fp32", float_ref), ("tflite-fp16", fp16_ref)):
        entry = manifest["files"][fmt]
        assert entry["layout"] == "NHWC" and entry["inputs"][0]["shape"] == [1, 64, 64, 3]
        interpreter = Interpreter(model_path=str(small_artifact / entry["path"]))
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        assert list(inp["shape"]) == [1, 64, 64, 3]
        outputs = []
        for image in images:
            interpreter.set_tensor(inp["index"], np.ascontiguousarray(image.transpose(1, 2, 0)[None]))
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(out["index"])[0])
        figures = verify.compare(reference, np.stack(outputs))
        assert figures["max_rel_err"] <= verify.GATES[entry["precision"]]["max_rel_err"], (fmt, figures)


def test_verification_figures_within_gates(small_artifact: Path) -> None:
    files = manifest_json(small_artifact)["files"]
    for fmt, entry in files.items():
        ver = entry["verification"]
        assert ver["passed"], (fmt, ver["failures"])
        gate = verify.GATES[entry["precision"]]
        for kind in ("random", "images"):
            assert ver[kind]["max_rel_err"] <= gate["max_rel_err"], (fmt, kind)
            assert ver[kind]["cosine_min"] >= gate["min_cosine"], (fmt, kind)
    # fp16 weights are really fp16: against float32 a visibly larger error than fp32 (recorded, not
    # gated), about half the bytes; and the file computes what fp16-rounded weights compute in PyTorch.
    fp32, fp16 = files["tflite-fp32"], files["tflite-fp16"]
    cost = fp16["verification"]["vs_float32"]["images"]["max_rel_err"]
    assert cost > 10 * fp32["verification"]["images"]["max_rel_err"]
    assert fp16["verification"]["images"]["max_rel_err"] < cost / 10
    assert 0.4 < fp16["size"] / fp32["size"] < 0.6


def test_report_names_files_and_xnnpack(small_artifact: Path) -> None:
    report = (small_artifact / "report.md").read_text()
    manifest = manifest_json(small_artifact)
    for entry in manifest["files"].values():
        assert entry["path"] in report and entry["sha256"][:12] in report
    for fmt in ("tflite-fp32", "tflite-fp16"):
        xnn = manifest["files"][fmt]["xnnpack"]
        assert xnn["fully_delegated"] and xnn["delegated_ops"] == xnn["ops"] > 0
    assert "XNNPACK takes every op" in report and "1 thread" in report
    # The fp16 file's cost against float32 is stated (ungated), with its figures.
    cost = manifest["files"]["tflite-fp16"]["verification"]["vs_float32"]["images"]
    line = next(x for x in report.splitlines() if "tflite-fp16 against PyTorch float32" in x)
    assert f"{cost['max_rel_err']:.2e}" in line and "not gated" in line


# --- dynamic batch, failures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_dynamic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dyn") / "mnv2"
    pipeline.export("mobilenet_v2", out_dir=out, formats=["onnx"], dynamic_batch=True, **TINY)
    return out


def test_dynamic_batch_runs_batch_of_three(onnx_dynamic: Path) -> None:
    import onnxruntime as ort
    import torch

    manifest = manifest_json(onnx_dynamic)
    assert set(manifest["files"]) == {"torch", "onnx-fp32"}
    assert manifest["input"]["shape"][0] == "batch"
    session = ort.InferenceSession(str(onnx_dynamic / "model.onnx"), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic
    batch = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)
    logits = session.run(None, {"input": batch})[0]
    with torch.inference_mode():
        reference = _model()(torch.from_numpy(batch)).numpy()
    assert logits.shape == (3, 1000)
    assert verify.compare(reference, logits)["max_rel_err"] <= verify.GATES["fp32"]["max_rel_err"]


def test_failed_verification_keeps_earlier_folder(
    onnx_dynamic: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from edgekit.cli import main

    out = tmp_path / "good"
    shutil.copytree(onnx_dynamic, out)
    before = _hashes(out)
    source = tmp_path / "tiny_net.py"  # a tiny network re-exported over the good folder: fast
    source.write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.setitem(verify.GATES, "fp32", {"max_rel_err": 0.0, "min_cosine": 1.0})
    monkeypatch.setattr(
        sys, "argv", ["edgekit", "export", f"{source}:make", "--formats", "onnx", "--out", str(out)]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "disagrees with PyTorch" in err and "max_rel_err" in err
    assert _hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "tiny_net.py"]  # no staging left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuchnet"], "unknown model 'nosuchnet'"),
        (["mobilenet_v2", "--resolution", "50"], "resolution 50 is not supported"),
        (["mobilenet_v2", "--formats", "coreml"], "unknown format coreml"),
    ],
)
def test_cli_usage_errors_are_one_line(args: list[str], message: str) -> None:
    result = _run_cli("export", *args, "--out", "/nonexistent-never-written")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# --- a user's own module --------------------------------------------------------------------------

USER_MODULE = """
import torch
from torch import nn


class Tiny(nn.Module):
    resolution = 32

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        # A cumulative sum: converts to TFLite's CUMSUM, which XNNPACK does not take.
        x = torch.cumsum(x, dim=1).mean((2, 3))
        return self.fc(x)


def make():
    return Tiny()
"""


def test_user_module_file_factory(tmp_path: Path) -> None:
    source = tmp_path / "tiny_net.py"
    source.write_text(textwrap.dedent(USER_MODULE))
    manifest = pipeline.export(f"{source}:make", out_dir=tmp_path / "out", argv=["pytest"])
    model = manifest.model
    assert model["source"] == "file" and model["name"] == "tiny_net:make"
    assert model["args"]["resolution"] == 32 and model["args"]["num_classes"] == 10
    assert model["params"] == 3 * 8 * 9 + 8 + 8 * 10 + 10
    files = manifest_json(tmp_path / "out")["files"]
    assert set(files) == set(EXPECTED_FILES) and all(e["verification"]["passed"] for e in files.values())
    xnn = files["tflite-fp32"]["xnnpack"]
    assert not xnn["fully_delegated"] and xnn["not_delegated"] == {"CUMSUM": 1}
    assert "off the fast path: CUMSUM x1" in (tmp_path / "out" / "report.md").read_text()
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["command"] == ["pytest"]


def test_user_module_needs_resolution(tmp_path: Path) -> None:
    source = tmp_path / "nores.py"
    source.write_text("from torch import nn\n\ndef make():\n    return nn.Sequential(nn.Flatten())\n")
    with pytest.raises(UsageError, match="resolution unknown"):
        build(f"{source}:make")
    with pytest.raises(UsageError, match="has no function"):
        build(f"{source}:missing", resolution=64)


def test_converter_failure_names_the_op(tmp_path: Path) -> None:
    import torch

    from edgekit.errors import ExportError
    from exporters import tflite

    class ErfInv(torch.nn.Module):  # litert-torch 0.10 has no lowering for erfinv
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.erfinv(x.clamp(-0.5, 0.5)).mean((2, 3))

    with pytest.raises(ExportError, match=r"tflite conversion failed at op aten\.erfinv"):
        tflite.export(ErfInv(), torch.zeros(1, 3, 32, 32), tmp_path / "m.tflite")


def test_onnx_route_whose_file_computes_wrongly_gives_way(tmp_path: Path, monkeypatch) -> None:
    """A route whose file passes the checker but computes something else (onnxslim 0.1.98 folds the
    TorchScript exporter's "SAME" pad arithmetic of EfficientNet-Lite wrongly) is not written: the
    next route is, and the reason is recorded; with no route left, the error names the mismatch."""
    import copy

    import torch

    from edgekit.errors import ExportError
    from exporters import onnx as onnx_exporter

    def negated(module: torch.nn.Module, example: torch.Tensor, dynamic: bool):
        other = copy.deepcopy(module)
        conv = next(m for m in other.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            conv.weight.neg_()
        return onnx_exporter._to_onnx_torchscript(other, example, dynamic)

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    example = torch.randn(1, 3, 16, 16)
    routes = (("torchscript", negated), ("dynamo", onnx_exporter._to_onnx))
    monkeypatch.setattr(onnx_exporter, "_ROUTES", routes)
    info = onnx_exporter.export(net.eval(), example, tmp_path / "m.onnx")
    assert info["exporter"] == "dynamo"
    assert info["fallback_reason"].startswith("onnx (torchscript exporter): the file's logits differ")
    monkeypatch.setattr(onnx_exporter, "_ROUTES", (("torchscript", negated),))
    with pytest.raises(ExportError, match=r"logits differ from PyTorch's by \d\.\de[+-]\d\d of their scale"):
        onnx_exporter.export(net.eval(), example, tmp_path / "n.onnx")
    assert not (tmp_path / "n.onnx").exists()


def test_efficientnet_lite_same_pads_export_to_onnx(tmp_path: Path) -> None:
    """EfficientNet-Lite's "SAME" pads are computed in Python from the input's shape; the TorchScript
    route's file computed something else after onnxslim, so the dynamo route's file is written."""
    pipeline.export("efficientnet_lite0", out_dir=tmp_path / "e", formats=["onnx"], width=0.5, resolution=64)
    entry = manifest_json(tmp_path / "e")["files"]["onnx-fp32"]
    assert entry["verification"]["passed"], entry["verification"]["failures"]
    assert entry["verification"]["images"]["max_rel_err"] < 1e-4
    if entry["exporter"] == "dynamo":
        assert "logits differ from PyTorch's" in entry["fallback_reason"]


def test_quant_options_need_int8() -> None:
    with pytest.raises(UsageError, match="int8 options without --int8: --calib-method"):
        pipeline.export("mobilenet_v2", calib_method="mse")


def test_unwritable_output_folder(tmp_path: Path) -> None:
    from edgekit.errors import ArtifactError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ArtifactError, match="file is a file, not a folder"):
        pipeline.export("mobilenet_v2", out_dir=blocker / "out", formats=["onnx"], **TINY)


# --- the whole zoo (make test-slow) ---------------------------------------------------------------


def _zoo() -> list[str]:
    from edgekit.zoo import list_models

    return list_models()


@pytest.mark.slow
@pytest.mark.parametrize("name", _zoo())
def test_zoo_exports_and_verifies(name: str, tmp_path: Path) -> None:
    manifest = pipeline.export(name, out_dir=tmp_path / name, resolution=64)
    assert set(manifest.files) == set(EXPECTED_FILES)
    assert all(e.verification["passed"] for e in manifest.files.values())


def test_manifest_records_each_steps_time(small_artifact: Path) -> None:
    from edgekit.manifest import read_manifest

    manifest = read_manifest(small_artifact)
    times = manifest.timings
    for name, entry in manifest.files.items():
        step = times[f"{name} ({entry.path})"]
        inner = times[f"{name}: write"] + times[f"{name}: verify"]
        assert 0 < inner <= step + 0.02  # write and verify happen inside the step (2 decimals each)
    assert times["build mobilenet_v2"] > 0
