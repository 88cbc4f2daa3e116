"""``edgekit bench --peers``: the peers' default int8 files built from the same calibration, timed
interleaved with edgekit's (no timing asserts: only what the arithmetic fixes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit import peers
from edgekit.errors import UsageError


@pytest.fixture(scope="module")
def tiny_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit import pipeline

    out = tmp_path_factory.mktemp("peers") / "tiny"
    pipeline.export("mobilenet_v2", out_dir=out, width=0.35, resolution=64, int8=True, calib_samples=8)
    return out


@pytest.fixture(scope="module")
def compared(tiny_int8: Path) -> dict:
    return peers.compare(tiny_int8, threads=1, limit=8)


def test_one_row_per_engine_with_consistent_figures(compared: dict) -> None:
    rows = {r["runtime"]: r for r in compared["rows"]}
    assert set(rows) == {"onnxruntime", "litert"}
    assert rows["onnxruntime"]["ours"] == "onnx-int8" and rows["litert"]["ours"] == "tflite-int8"
    for r in rows.values():
        assert r["runs"] == peers.ROUNDS * peers.RUNS_PER_ROUND
        assert r["ratio"] == pytest.approx(r["ours_p50_ms"] / r["peer_p50_ms"], abs=1e-3)
        for key in ("ours_agreement", "peer_agreement"):
            assert r[key] * 8 == pytest.approx(round(r[key] * 8))  # a count out of the 8 images
    assert "8 images" in compared["method"]
    assert "same calibration tensors (builtin, 8 samples)" in compared["method"]


def test_stored_beside_the_manifest(tiny_int8: Path, compared: dict) -> None:
    stored = json.loads((tiny_int8 / "peers.json").read_text())
    assert stored["rows"] == compared["rows"]


def test_calibration_tensors_are_the_exports(tiny_int8: Path) -> None:
    """Regenerated from the manifest's record: the same seeded crops the int8 files were made from."""
    from calibration.preprocess import PreprocessSpec
    from calibration.sources import calibration_set
    from edgekit.manifest import read_manifest

    manifest = read_manifest(tiny_int8)
    again = calibration_set("builtin", PreprocessSpec.from_dict(manifest.preprocess), 8, 0).tensors
    np.testing.assert_array_equal(peers.calibration_tensors(manifest), again)


def test_ort_peer_is_the_default_recipe(tiny_int8: Path, tmp_path: Path) -> None:
    """quantize_static's default: per-tensor weights (one scale per weight tensor)."""
    import onnx
    from onnx import numpy_helper

    from edgekit.manifest import read_manifest

    manifest = read_manifest(tiny_int8)
    out = tmp_path / "peer.onnx"
    peers.PEERS["ort-quantize-static"].build(manifest, peers.calibration_tensors(manifest), out)
    model = onnx.load(out)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_scales = [
        inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]
    assert weight_scales and all(s.size == 1 for s in weight_scales)


def test_a_folder_without_int8_files_says_so(small_artifact: Path) -> None:
    with pytest.raises(UsageError, match="no int8 files"):
        peers.compare(small_artifact)


def test_zoo_bench_times_int8_against_float_interleaved(tiny_int8: Path) -> None:
    """`make bench`'s int8/fp32 per engine from one interleaved run, and its README section."""
    from edgekit.studies.benchzoo import _interleaved_lines, interleaved_ratios

    rows = interleaved_ratios(tiny_int8)
    assert [r["runtime"] for r in rows] == ["onnxruntime", "litert"]
    for r in rows:
        assert r["fp32_p50_ms"] > 0 and r["int8_p50_ms"] > 0 and r["threads"] == 1
        assert r["ratio"] == pytest.approx(r["int8_p50_ms"] / r["fp32_p50_ms"], abs=1e-3)
    text = "\n".join(_interleaved_lines([{"model": "tiny", **r} for r in rows]))
    assert "| tiny | litert |" in text and f"{peers.ROUNDS} rounds of {peers.RUNS_PER_ROUND} invokes" in text
