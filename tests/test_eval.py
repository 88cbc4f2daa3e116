"""`edgekit eval`: JSON keys, labelled accuracy, and the pretrained int8 accuracy targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import manifest_json
from PIL import Image

from edgekit import evaluate
from edgekit.cli import cli
from edgekit.errors import UsageError
from edgekit.manifest import read_results


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    from edgekit import pipeline

    out = tmp_path_factory.mktemp("eval") / "mobilenet_v2"
    pipeline.export("mobilenet_v2", out_dir=out, resolution=64, formats=["onnx"])
    return out


def test_eval_json_keys(float_dir):
    result = CliRunner().invoke(cli, ["eval", str(float_dir), "--limit", "6", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {r["format"]: r for r in data["formats"]}
    assert set(rows) == {"torch", "onnx-fp32"}
    for row in rows.values():
        for key in (
            "format",
            "runtime",
            "agreement_top1",
            "top5_overlap",
            "cosine",
            "sqnr_db",
            "images",
            "worst",
        ):
            assert key in row, key
        assert row["images"] == 6
    assert data["measured"]["labelled"] is False and data["measured"]["threads"] == 1
    # Identical to itself: no noise to measure, written as null (strict JSON), never Infinity.
    assert rows["torch"]["agreement_top1"] == 100.0 and rows["torch"]["sqnr_db"] is None
    # fp32 ONNX vs PyTorch: same function up to summation order.
    assert rows["onnx-fp32"]["cosine"] > 0.9999 and rows["onnx-fp32"]["sqnr_db"] > 40
    assert read_results(float_dir)["eval"]["measured"]["images"] == 6


def test_eval_runs_a_file_in_its_other_engines_on_request(float_dir):
    result = CliRunner().invoke(cli, ["eval", str(float_dir), "--limit", "4", "--runtime", "all", "--json"])
    assert result.exit_code == 0, result.output
    rows = [(r["format"], r["runtime"]) for r in json.loads(result.output)["formats"]]
    assert rows == [("torch", "torch"), ("onnx-fp32", "onnxruntime"), ("onnx-fp32", "openvino")]
    openvino = json.loads(result.output)["formats"][2]
    # the same fp32 file in another engine (f32 forced): the same function up to summation order
    assert openvino["cosine"] > 0.9999 and openvino["sqnr_db"] > 40 and openvino["version"]


def test_eval_labelled_folder(float_dir, tmp_path):
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):
        for i in range(2):
            img = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)
            (tmp_path / wnid).mkdir(exist_ok=True)
            Image.fromarray(img).save(tmp_path / wnid / f"{i}.png")
    result = evaluate.evaluate(float_dir, data=tmp_path).to_dict()
    torch_row = result["formats"][0]
    assert result["measured"]["labelled"] and torch_row["format"] == "torch"
    assert 0.0 <= torch_row["top1"] <= torch_row["top5"] <= 100.0
    assert all(r["drop_top1"] == pytest.approx(torch_row["top1"] - r["top1"]) for r in result["formats"])


def test_eval_unknown_target_is_a_usage_error(float_dir):
    with pytest.raises(UsageError, match="target"):
        evaluate.evaluate(float_dir, target="pi9-emu")


PI_ROOTFS = Path.home() / ".cache" / "edgekit" / "pi-rootfs"


@pytest.mark.skipif(not PI_ROOTFS.is_dir(), reason="needs the emulated Pi rootfs (scripts/test-deps.sh)")
def test_eval_on_emulated_pi_matches_local(tmp_path):
    """The same files on pi4-emu (one runner call per file) give the logits they give here."""
    from edgekit import pipeline

    out = tmp_path / "tiny"
    pipeline.export("mobilenet_v2", out_dir=out, width=0.35, resolution=64, int8=True, calib_samples=8)
    manifest = manifest_json(out)
    for fmt in [f for f in manifest["files"] if f not in ("torch", "onnx-int8", "tflite-int8")]:
        manifest["files"].pop(fmt)  # one int8 file per engine keeps the emulated calls to two
    (out / "manifest.json").write_text(json.dumps(manifest))
    local = {r["format"]: r for r in evaluate.evaluate(out, limit=4).to_dict()["formats"]}
    remote = evaluate.evaluate(out, limit=4, target="pi4-emu").to_dict()
    rows = {r["format"]: r for r in remote["formats"]}
    assert remote["measured"]["emulated"] is True and "note" in rows["torch"]
    for fmt in ("onnx-int8", "tflite-int8"):
        assert rows[fmt]["target"] == "pi4-emu" and rows[fmt]["images"] == 4
        # The integer sums are the same on ARM and on every x86 int8 path (the ONNX file keeps its
        # weight pairs within int16, calibration.grid); only float32 rescales may round apart.
        assert rows[fmt]["cosine"] == pytest.approx(local[fmt]["cosine"], abs=1e-3), (rows[fmt], local[fmt])


def test_metrics_on_known_values():
    from edgekit import verify

    ref = np.array([[1.0, 2.0, 3.0, 0.0, -1.0, 5.0]])
    assert verify.sqnr_db(ref, ref * 1.1) == pytest.approx(20.0)
    assert verify.cosine(ref, 2 * ref)[0] == pytest.approx(1.0)
    assert verify.top5_overlap(ref, ref) == 1.0
    assert verify.compare(ref, 2 * ref)["cosine_min"] == pytest.approx(1.0)


@pytest.mark.slow
def test_pretrained_mobilenet_v2_int8_targets(tmp_path, imagenet_sample):
    """Built-in calibration, per-channel: within 1 top-1 point of float and >= 93% agreement."""
    from edgekit import pipeline

    out = tmp_path / "mobilenet_v2"
    try:
        pipeline.export("mobilenet_v2", out_dir=out, pretrained=True, int8=True)
    except Exception as exc:  # no network / weights package unavailable: not this test's subject
        if type(exc).__name__ == "WeightsError":
            pytest.skip(f"pretrained weights unavailable: {exc}")
        raise
    result = evaluate.evaluate(out, data=imagenet_sample).to_dict()
    rows = {r["format"]: r for r in result["formats"]}
    assert rows["torch"]["images"] == 250
    shutil.rmtree(out)
    assert rows["onnx-int8"]["drop_top1"] <= 1.0, rows["onnx-int8"]
    assert rows["onnx-int8"]["agreement_top1"] >= 93.0, rows["onnx-int8"]
    tflite = rows["tflite-int8"]
    if tflite["drop_top1"] > 1.0 or tflite["agreement_top1"] < 93.0:
        # Measured 1.2 points / 90.0 % (docs/int8.md): the TFLite half of the target is still open.
        pytest.xfail(f"tflite-int8 misses it: drop {tflite['drop_top1']}, agree {tflite['agreement_top1']}")
