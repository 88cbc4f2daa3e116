"""ExecuTorch as a format and an engine: a trained model (the digits fixture) exported to .pte,
fp32 and int8 from edgekit's calibration, verified, evaluated and benchmarked like the others.

Tolerances as in test_user_model: the fp32 .pte computes PyTorch's function (max rel err ~1e-6),
so its top-1 is PyTorch's within one image of the 360; int8 within 2 points.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch")

PREPROCESS = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "resize": 64}


@pytest.fixture(scope="module")
def pte(digits: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit import pipeline

    out = tmp_path_factory.mktemp("executorch") / "digits"
    root = digits["root"]
    pipeline.export(
        "mobilenet_v2", out_dir=out, width=0.35, resolution=64, weights=root / "checkpoint.pt",
        preprocess=PREPROCESS, formats=["executorch"], int8=True, calib=str(root / "train"),
        calib_samples=64,
    )  # fmt: skip
    return out


def test_files_are_verified_and_fully_delegated(pte: Path) -> None:
    manifest = json.loads((pte / "manifest.json").read_text())
    assert set(manifest["files"]) == {"torch", "executorch-fp32", "executorch-int8"}
    for fmt in ("executorch-fp32", "executorch-int8"):
        delegation = manifest["files"][fmt]["delegation"]
        assert delegation["xnnpack_subgraphs"] >= 1 and delegation["portable_ops"] == 0, delegation
    assert manifest["files"]["executorch-fp32"]["verification"]["random"]["max_rel_err"] < 1e-4
    assert manifest["tools"]["executorch"]
    assert "executorch-int8" in manifest["calibration"]["weight_grids"]


def test_eval_gives_pytorchs_top1(pte: Path, digits: dict) -> None:
    from edgekit.evaluate import evaluate

    rows = {r.format: r for r in evaluate(pte, digits["root"] / "val").formats}
    one_image = 100 / digits["val_images"] + 0.01
    assert abs(rows["executorch-fp32"].top1 - rows["torch"].top1) <= one_image
    assert rows["executorch-int8"].drop_top1 <= 2.0, rows["executorch-int8"]
    assert rows["executorch-int8"].runtime == "executorch"


def test_bench_times_both_files(pte: Path) -> None:
    from edgekit.bench import bench

    result = bench(pte, formats=["executorch"], runs=5, warmup=2).to_dict()
    rows = {(r["format"], r["runtime"]): r for r in result["results"]}
    assert set(rows) == {("executorch-fp32", "executorch"), ("executorch-int8", "executorch")}
    assert all(r["p50_ms"] > 0 for r in rows.values())
    assert [c for c in result["int8_vs_fp32"] if c["runtime"] == "executorch"]


def test_engine_runs_any_batch_and_threads(pte: Path) -> None:
    from runtimes import get_runtime, run_file

    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    one = run_file(pte / "model.pte", x, engine="executorch", threads=1)
    two = get_runtime("executorch").load(pte / "model.pte", threads=2).run(x)
    reference = run_file(pte / "model.pt2", x)
    assert one.shape == (3, 10)
    assert np.abs(one - reference).max() <= 1e-4 * max(1.0, float(np.abs(reference).max()))
    assert np.abs(two - one).max() <= 1e-4 * max(1.0, float(np.abs(one).max()))
