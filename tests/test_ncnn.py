"""ncnn as a format and an engine: pnnx converts the verified ONNX file; the .param/.bin pair is
verified, hashed, evaluated and benchmarked like the other files (fp32: PyTorch's top-1 within
one image, as every fp32 file; fp16: float16 weights run with ncnn's fp16 storage, within the
fp16 gate every fp16 file meets)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")


@pytest.fixture(scope="module")
def ncnn_dir(digits: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit import pipeline

    out = tmp_path_factory.mktemp("ncnn") / "digits"
    pipeline.export(
        "mobilenet_v2", out_dir=out, width=0.35, resolution=64, weights=digits["root"] / "checkpoint.pt",
        preprocess={"mean": (0.5,) * 3, "std": (0.5,) * 3, "resize": 64}, formats=["ncnn"],
    )  # fmt: skip
    return out


def test_the_pair_is_written_verified_and_hashed(ncnn_dir: Path) -> None:
    assert {p.name for p in ncnn_dir.iterdir()} == {
        "manifest.json",
        "report.md",
        "model.pt2",
        "model.onnx",
        "model.ncnn.param",
        "model.ncnn.bin",
        "model_fp16.ncnn.param",
        "model_fp16.ncnn.bin",
    }  # pnnx's side files stay in its temp folder
    entry = json.loads((ncnn_dir / "manifest.json").read_text())["files"]["ncnn-fp32"]
    assert set(entry["companions"]) == {"model.ncnn.bin"}
    assert entry["verification"]["random"]["max_rel_err"] < 1e-4
    assert entry["layers"]["ConvolutionDepthWise"] == 17  # MobileNetV2's depthwise convs
    # The Input layer carries the export shape (pnnx writes none): what a latency run feeds.
    assert "Input in0 0 1 in0 0=64 1=64 2=3" in " ".join((ncnn_dir / "model.ncnn.param").read_text().split())


def test_fp16_is_half_the_weights_and_within_the_fp16_gate(ncnn_dir: Path) -> None:
    from edgekit.verify import GATES
    from runtimes import get_runtime

    entry = json.loads((ncnn_dir / "manifest.json").read_text())["files"]["ncnn-fp16"]
    assert entry["precision"] == "fp16" and entry["verification"]["passed"]
    assert entry["verification"]["gate"] == GATES["fp16"]
    for kind in ("random", "images"):
        assert entry["verification"][kind]["max_rel_err"] < GATES["fp16"]["max_rel_err"]
    # Every conv/linear weight in 2 bytes instead of 4 (the small biases stay float32).
    fp32, fp16 = (
        (ncnn_dir / "model.ncnn.bin").stat().st_size,
        (ncnn_dir / "model_fp16.ncnn.bin").stat().st_size,
    )
    assert 0.49 < fp16 / fp32 < 0.52
    sessions = {
        name: get_runtime("ncnn").load(ncnn_dir / name)
        for name in ("model.ncnn.param", "model_fp16.ncnn.param")
    }
    assert [s.describe()["fp16_storage"] for s in sessions.values()] == [False, True]


def test_an_edited_bin_is_stale(ncnn_dir: Path, tmp_path: Path) -> None:
    import shutil

    from edgekit.errors import ArtifactError
    from edgekit.manifest import read_manifest

    copy = tmp_path / "copy"
    shutil.copytree(ncnn_dir, copy)
    with (copy / "model.ncnn.bin").open("r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactError, match="ncnn-fp32"):
        read_manifest(copy)


def test_eval_and_bench(ncnn_dir: Path, digits: dict) -> None:
    from edgekit.bench import bench
    from edgekit.evaluate import evaluate

    rows = {r.format: r for r in evaluate(ncnn_dir, digits["root"] / "val").formats}
    for name in ("ncnn-fp32", "ncnn-fp16"):
        assert abs(rows[name].top1 - rows["torch"].top1) <= 100 / digits["val_images"] + 0.01
        assert rows[name].runtime == "ncnn" and rows[name].cosine > 0.9999
    result = bench(ncnn_dir, formats=["ncnn"], runs=5, warmup=2).to_dict()
    assert [(r["format"], r["runtime"]) for r in result["results"]] == [
        ("ncnn-fp32", "ncnn"),
        ("ncnn-fp16", "ncnn"),
    ]
