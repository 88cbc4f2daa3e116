"""int8 export of both formats: files run in their engines, agree with float, are reproducible."""

from __future__ import annotations

import pytest
from conftest import manifest_json

from calibration.preprocess import PreprocessSpec

RESOLUTION = 64
OPTIONS = {"calib": "builtin", "calib_samples": 16}


@pytest.fixture(scope="module")
def int8_dir(tmp_path_factory):
    """A small mobilenet_v2 (trained-like BN statistics are not needed: agreement is relative)."""
    from edgekit import pipeline

    out = tmp_path_factory.mktemp("int8") / "mobilenet_v2"
    pipeline.export("mobilenet_v2", out_dir=out, resolution=RESOLUTION, int8=True, **OPTIONS)
    return out


def test_int8_files_and_manifest(int8_dir):
    manifest = manifest_json(int8_dir)
    files = manifest["files"]
    assert {"onnx-int8", "tflite-int8"} <= set(files)
    tfl = files["tflite-int8"]
    assert tfl["input"]["dtype"] == "int8" and tfl["output"]["dtype"] == "int8"
    assert tfl["input"]["scale"] > 0 and -128 <= tfl["input"]["zero_point"] <= 127
    # ORT fuses the QDQ pairs: integer convolutions, but for the stem, which reads the float image
    # and is kept float (ORT's int8 kernel at 3 input channels is slower than its float one).
    fused = files["onnx-int8"]["fused_ops"]
    assert fused.get("QLinearConv", 0) > 30 and fused.get("Conv", 0) == 1
    assert files["onnx-int8"]["rewrites"]["stem Conv (reads the image) kept float"] == 1
    # The logits stay float: the classifier runs as QGemm with a float output, no Q/DQ after it.
    import onnx

    graph = onnx.load(str(int8_dir / files["onnx-int8"]["path"])).graph
    producer = {out: node.op_type for node in graph.node for out in node.output}
    assert producer[graph.output[0].name] == "Gemm" and fused.get("QGemm") == 1
    calib = manifest["calibration"]
    assert calib["source"] == "builtin" and calib["samples"] == 16 and calib["per_channel"] is True
    assert len(calib["activation_ranges"]["onnx"]) > 50 and len(calib["activation_ranges"]["tflite"]) > 30
    for lo, hi in calib["activation_ranges"]["onnx"].values():
        assert lo <= 0.0 <= hi
    # Stream equalisation and bias correction run by default: MobileNetV2's 7 linear streams (the
    # residual stages and the last block's link to the head), every conv/linear's bias (52 + 1),
    # once per weight grid (ONNX Runtime's keeps same-sign pairs within 128, LiteRT's does not).
    streams, *biases = calib["remedies"]
    assert streams["name"] == "equalize_streams" and streams["streams"] == 7
    assert [b["formats"] for b in biases] == [["onnx-int8"], ["tflite-int8"]]
    for bias in biases:
        assert bias["name"] == "bias_correct" and bias["layers"] == 53 and bias["max_abs_shift"] > 0
    # The export's report says how the int8 files were made and what each remedy changed.
    report = (int8_dir / "report.md").read_text()
    assert "calibration: builtin, 16 samples" in report
    assert "remedy equalize_streams: 7 streams" in report
    assert "remedy bias_correct (onnx-int8): 53 layers" in report
    assert "remedy bias_correct (tflite-int8): 53 layers" in report


def test_gptq_export_lists_the_remedy(tmp_path):
    """`--gptq`: the weights are rounded by GPTQ before bias correction; the manifest and the
    report say so, and the int8 file still agrees with float."""
    from edgekit import pipeline

    out = tmp_path / "gptq"
    pipeline.export(
        "mobilenet_v2", out_dir=out, resolution=RESOLUTION, formats=["onnx"], int8=True, gptq=True, **OPTIONS
    )
    manifest = manifest_json(out)
    remedies = manifest["calibration"]["remedies"]
    assert [r["name"] for r in remedies] == ["equalize_streams", "gptq", "bias_correct"]
    gptq = remedies[1]
    assert gptq["layers"] == 53 and gptq["weight_bits"] == 8 and gptq["per_channel"] is True
    assert gptq["error_ratio_median"] < 0.9  # per layer, output error on the calibration data vs nearest
    report = (out / "report.md").read_text()
    assert "remedy gptq (onnx-int8): 53 layers rounded onto the 8-bit per-channel grid" in report
    # GPTQ's codes are what the file stores, within the pair limit.
    assert manifest["files"]["onnx-int8"]["exactness"]["max_pair_sum"] <= 128
    assert manifest["files"]["onnx-int8"]["verification"]["images"]["cosine_min"] > 0.6


def test_remedies_default_and_switches():
    """One QuantConfig holds the int8 defaults; None (an option not given) keeps them."""
    from calibration.config import QuantConfig

    defaults = {"equalize": False, "equalize_streams": True, "gptq": False, "bias_correct": True}
    assert QuantConfig.from_options().remedies() == defaults
    asked = QuantConfig.from_options(bias_correct=None, equalize=True)
    assert asked.remedies() == {**defaults, "equalize": True}
    off = QuantConfig.from_options(bias_correct=False, equalize_streams=False)
    assert off.remedies() == {
        "equalize": False,
        "gptq": False,
        "bias_correct": False,
        "equalize_streams": False,
    }
    with pytest.raises(TypeError, match="unknown int8 options"):
        QuantConfig.from_options(bias_corect=False)


@pytest.mark.parametrize("fmt", ["onnx-int8", "tflite-int8"])
def test_int8_runs_and_agrees_with_float(int8_dir, fmt):
    from edgekit import evaluate, verify

    manifest = manifest_json(int8_dir)
    images, _, _, _ = evaluate.load_eval_images(PreprocessSpec.from_dict(manifest["preprocess"]), None, 24)
    from edgekit import formats
    from edgekit.manifest import read_manifest

    typed = read_manifest(int8_dir)
    ref, _ = evaluate.run_local(typed, formats.get("torch"), "torch", images, threads=1)
    out, how = evaluate.run_local(typed, formats.get(fmt), formats.get(fmt).engine, images, threads=1)
    assert out.shape == ref.shape == (24, 1000)
    cos = verify.cosine(ref, out)
    # Random weights (BN statistics from photos) quantise worse than trained ones: measured mean
    # cosine 0.87 (onnx, float logits) / 0.83 (tflite, int8 logits) at 64 px with 16 samples.
    assert float(cos.mean()) > 0.75, (fmt, how, float(cos.mean()))
    assert manifest["files"][fmt]["verification"]["images"]["cosine_min"] > 0.6


def test_same_command_same_files(int8_dir, tmp_path):
    """The same export gives byte-identical files, int8 included, whatever torch's thread count and
    however many processes write them: the fixture ran in this process (one lane), the CLI here
    writes the TFLite files in a forked second process (edgekit.lanes)."""
    import subprocess
    import sys

    again = tmp_path / "again"
    command = [sys.executable, "-m", "edgekit", "export", "mobilenet_v2", "--resolution", str(RESOLUTION)]
    command += ["--int8", "--calib", "builtin", "--calib-samples", "16", "--jobs", "2", "--out", str(again)]
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    first, second = manifest_json(int8_dir), manifest_json(again)
    for fmt in ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"):
        assert first["files"][fmt]["sha256"] == second["files"][fmt]["sha256"], fmt
    assert any("(second process)" in step for step in second["timings"])


@pytest.mark.slow
def test_every_zoo_network_quantises(tmp_path):
    """Both int8 formats for every network (random weights: agreement only)."""
    from edgekit import evaluate, pipeline
    from edgekit.zoo.registry import list_models

    failures = {}
    for name in list_models():
        out = tmp_path / name
        try:
            pipeline.export(name, out_dir=out, resolution=96, int8=True, calib="builtin", calib_samples=8)
            result = evaluate.evaluate(out, limit=16).to_dict()
        except Exception as exc:  # collect every failing network, not only the first
            failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        rows = {r["format"]: r for r in result["formats"]}
        for fmt in ("onnx-int8", "tflite-int8"):
            if rows[fmt]["cosine"] < 0.8:
                failures[name] = f"{fmt} cosine {rows[fmt]['cosine']}"
    assert not failures, failures
