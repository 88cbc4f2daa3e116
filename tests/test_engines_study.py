"""docs/engines.md's table: every (format, engine) row with its accuracy, latency per thread count
and int8/fp32 ratio, from the eval and bench results of one folder (no engine run here)."""

from __future__ import annotations

from pathlib import Path

from edgekit.studies.engines import render


def _result() -> dict:
    row = {"top1": 82.8, "drop_top1": 0.0, "agreement_top1": 100.0}
    return {
        "pretrained": True,
        "fast_path": {"onnx-int8 openvino": "float: Reduce (f32) x1"},
        "eval": {
            "formats": [
                {"format": "onnx-fp32", "runtime": "openvino", **row},
                {"format": "onnx-int8", "runtime": "openvino", **row, "top1": 82.4, "drop_top1": 0.4},
            ],
            "measured": {"images": 250, "skipped": [{"format": "x", "runtime": "y", "reason": "z"}]},
        },
        "bench": {
            "machine": {"cpu": "Test CPU", "cores": 2},
            "results": [
                {"format": "onnx-fp32", "runtime": "openvino", "threads": 1, "p50_ms": 9.0, "p99_ms": 9.5},
                {"format": "onnx-int8", "runtime": "openvino", "threads": 1, "p50_ms": 3.5, "p99_ms": 3.9},
            ],
            "int8_vs_fp32": [
                {"int8_format": "onnx-int8", "runtime": "openvino", "threads": 1, "ratio": 0.389}
            ],
            "skipped": [],
        },
    }


def test_rows_per_format_and_engine() -> None:
    text = render({"mobilenet_v2": _result()}, Path("imagenet-sample"), [1, 2])
    assert "## mobilenet_v2 (ImageNet weights)" in text and "Test CPU" in text
    row = "| onnx-int8 | openvino | 82.4 | 0.4 | 100.0 | 3.50 / 3.90 | — | 0.389 | — | float: Reduce (f32) x1"
    assert row in text
    assert "| onnx-fp32 | openvino | 82.8 | 0.0 | 100.0 | 9.00 / 9.50 | — | — | — | — |" in text
    assert "- skipped: x / y: z" in text and "1 image = 0.4 points" in text


def test_regenerating_keeps_the_hand_written_tail(tmp_path):
    from edgekit.studies.engines import HAND_WRITTEN, hand_written

    page = tmp_path / "engines.md"
    assert hand_written(page) == ""
    page.write_text(f"# tables\n| a |\n{HAND_WRITTEN} (notes) -->\nThe Pi section.\n")
    assert hand_written(page) == f"\n{HAND_WRITTEN} (notes) -->\nThe Pi section.\n"
