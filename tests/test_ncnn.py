"""ncnn as a format and an engine: pnnx converts the verified ONNX file; the .param/.bin pair is
verified, hashed, evaluated and benchmarked like the other files (fp32: PyTorch's top-1 within
one image, as every fp32 file)."""

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
    }  # pnnx's side files stay in its temp folder
    entry = json.loads((ncnn_dir / "manifest.json").read_text())["files"]["ncnn-fp32"]
    assert set(entry["companions"]) == {"model.ncnn.bin"}
    assert entry["verification"]["random"]["max_rel_err"] < 1e-4
    assert entry["layers"]["ConvolutionDepthWise"] == 17  # MobileNetV2's depthwise convs


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
    assert abs(rows["ncnn-fp32"].top1 - rows["torch"].top1) <= 100 / digits["val_images"] + 0.01
    assert rows["ncnn-fp32"].runtime == "ncnn" and rows["ncnn-fp32"].cosine > 0.9999
    result = bench(ncnn_dir, formats=["ncnn"], runs=5, warmup=2).to_dict()
    assert [(r["format"], r["runtime"]) for r in result["results"]] == [("ncnn-fp32", "ncnn")]
