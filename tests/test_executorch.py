"""ExecuTorch as a format and an engine: a trained model (the digits fixture) exported to .pte,
fp32 and int8 from edgekit's calibration, verified, evaluated and benchmarked like the others.

Tolerances as in test_user_model: the fp32 .pte computes PyTorch's function (max rel err ~1e-6),
so its top-1 is PyTorch's within one image of the 360; int8 within 2 points.
"""

from __future__ import annotations

import getpass
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import arm64_python

from runtimes.targets.qemu import EXECUTORCH_SITE, rootfs_dir

pytest.importorskip("executorch")

PREPROCESS = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "resize": 64}
PI_IMAGES = 24  # the emulated runs: one runner call per file with every image
needs_pi = pytest.mark.skipif(
    shutil.which("qemu-aarch64-static") is None
    or not (rootfs_dir() / EXECUTORCH_SITE / ".edgekit-stamp").exists(),
    reason="qemu-user-static or the rootfs's ExecuTorch layer is missing (run `make pi-rootfs`)",
)


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


# --- on the emulated Pi: ExecuTorch's runtime through edgekit's C API, no torch on the board -------


@needs_pi
def test_eval_on_the_emulated_pis_matches_here(pte: Path, digits: dict) -> None:
    """Both files on the A72 (pi4-emu) and the A76 (pi5-emu), scored against PyTorch float on the
    same images as here. fp32: summation order only, so the float gate (cosine, 40 dB). int8:
    XNNPACK's sums are exact int32 on both ISAs and requantise through the same fp32 multiply, so
    only a rounding tie could differ (measured: identical logits); the tolerance is test_eval's."""
    from edgekit.evaluate import evaluate

    val = digits["root"] / "val"
    here = {r.format: r for r in evaluate(pte, val, limit=PI_IMAGES).formats}
    one_image = 100 / PI_IMAGES + 0.01
    for target in ("pi4-emu", "pi5-emu"):
        result = evaluate(pte, val, limit=PI_IMAGES, target=target)
        rows = {r.format: r for r in result.formats}
        for fmt in ("executorch-fp32", "executorch-int8"):
            row = rows[fmt]
            assert row.target == target and row.emulated and row.images == PI_IMAGES
            assert row.runtime == "executorch" and row.version == "1.5.1" and row.machine["arch"] == "aarch64"
            assert abs(row.agreement_top1 - here[fmt].agreement_top1) <= one_image, (target, row, here[fmt])
            assert row.cosine == pytest.approx(here[fmt].cosine, abs=1e-3), (target, row, here[fmt])
        assert rows["executorch-fp32"].cosine_min > 0.9999 and rows["executorch-fp32"].sqnr_db > 40


@needs_pi
def test_bench_on_the_emulated_pi_times_both_files(pte: Path) -> None:
    from edgekit.bench import bench

    result = bench(pte, formats=["executorch"], target="pi5-emu", runs=3, warmup=1, record=False).to_dict()
    rows = {r["format"]: r for r in result["results"]}
    assert set(rows) == {"executorch-fp32", "executorch-int8"}, result["skipped"]
    for row in rows.values():
        assert row["runtime"] == "executorch" and row["emulated"] and row["runs"] == 3 and row["p50_ms"] > 0
    assert result["skipped"] == []


@needs_pi
def test_ssh_to_an_arm64_python_runs_the_int8_pte(sshd: dict, pte: Path, tmp_path: Path) -> None:
    """A real sshd on 127.0.0.1 logging in to the rootfs's Python under qemu (a Pi as far as SSH can
    tell): the runner and the .pte go over scp, the logits come back as they are here."""
    from edgekit.verify import cosine
    from runtimes import get_runtime
    from runtimes.targets import get_target

    target = get_target(
        f"ssh://{getpass.getuser()}@127.0.0.1:{sshd['port']}",
        key_file=sshd["key_file"],
        known_hosts=sshd["known_hosts"],
        remote_python=str(arm64_python(tmp_path)),
    )
    x = np.random.default_rng(2).standard_normal((3, 3, 64, 64)).astype(np.float32)
    result = target.run(pte / "model_int8.pte", "executorch", warmup=0, runs=2, inputs=x)
    here = get_runtime("executorch").load(pte / "model_int8.pte").run(x)
    assert result["machine"]["arch"] == "aarch64" and len(result["latencies_ms"]) == 2
    assert (result["outputs"].argmax(1) == here.argmax(1)).all()
    assert cosine(here, result["outputs"]).min() > 1 - 1e-3
