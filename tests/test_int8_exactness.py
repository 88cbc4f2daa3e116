"""int8 ONNX files that compute the same on every CPU: the pair arithmetic, the weight grid, the
node-by-node check, and the AVX2 kernels themselves under emulation (qemu-x86_64 -cpu Haswell).

Tolerances come from the arithmetic: an exact integer kernel and the float definition of the graph
can round a value on a boundary one step apart (1 LSB per node); between CPUs the integer sums are
identical, so outputs agree within 2 output steps (measured: 0). A saturated int16 pair is off by
hundreds of steps.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import manifest_json

from calibration.grid import PAIR_LIMIT, WeightGrid, max_pair_sums, pair_safe_levels, reads_pairs
from calibration.onnx_check import layer_check, output_step, pair_report
from edgekit.machine import Int8Path, cpu_features, label

RESOLUTION = 64
needs_qemu_x86 = pytest.mark.skipif(
    shutil.which("qemu-x86_64-static") is None, reason="qemu-user-static is missing (scripts/test-deps.sh)"
)


# --- the arithmetic -----------------------------------------------------------------------------


@pytest.mark.parametrize("per_channel", [True, False])
def test_pair_safe_levels_keep_every_pair_and_are_the_most_that_do(per_channel: bool) -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((40, 72)).astype(np.float32) * rng.uniform(0.01, 3, (40, 1)).astype(np.float32)
    rows[3, :2] = [2.0, 2.0]  # two equal peaks: only 64 levels keep them
    rows[5] = 0.0
    grid = WeightGrid(8, per_channel, PAIR_LIMIT)
    levels, steps = grid.levels(rows), grid.steps(rows)
    codes = np.clip(np.round(rows / steps[:, None]), -levels[:, None], levels[:, None])
    assert max_pair_sums(codes).max() <= PAIR_LIMIT
    assert levels.min() >= PAIR_LIMIT // 2 and levels.max() <= 127
    if per_channel:
        assert levels[3] == 64
        # One level more would break a pair in every row that is not already at 127.
        peaks = np.abs(rows).max(axis=1)
        more = pair_safe_levels(rows, peaks, 127, PAIR_LIMIT)
        assert (more == levels).all()
        for i in np.flatnonzero((levels < 127) & (peaks > 0)):
            step = peaks[i] / (levels[i] + 1)
            assert max_pair_sums(np.round(rows[i : i + 1] / step)).max() > PAIR_LIMIT
    else:
        assert len(set(levels.tolist())) == 1


def test_which_layers_read_pairs() -> None:
    assert not reads_pairs((32, 1, 3, 3), groups=32)  # depthwise: kernels widen first
    assert reads_pairs((64, 1, 3, 3), groups=32)  # channel multiplier 2: ORT's grouped GEMM path
    assert reads_pairs((32, 8, 1, 1), groups=4)  # grouped 1x1
    assert reads_pairs((16, 3, 3, 3))  # the stem
    assert reads_pairs((1000, 1280))  # a classifier
    assert not reads_pairs((10, 1))  # a single input per output: nothing to pair


def test_int8_path_from_real_cpu_flags() -> None:
    xeon = "fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8"
    epyc = "fpu sse4_2 avx avx2 fma f16c sha_ni"
    skylake = "fpu sse4_2 avx avx2 avx512f avx512bw"
    cases = {
        xeon: Int8Path.X86_AMX,
        "sse4_2 avx avx2 avx512f avx512bw avx512_vnni": Int8Path.X86_VNNI,
        "sse4_2 avx avx2 avx_vnni": Int8Path.X86_VNNI,
        skylake: Int8Path.X86_AVX512BW,
        epyc: Int8Path.X86_AVX2,
    }
    for flags, path in cases.items():
        found = cpu_features({"flags": flags})
        assert Int8Path.from_features("x86_64", found) is path, (flags, found)
    assert {"avx512_vnni", "amx_int8", "avx_vnni"} <= set(cpu_features({"flags": xeon}))
    assert cpu_features({"flags": epyc}) == ["sse4_2", "avx", "avx2", "fma", "f16c"]
    assert Int8Path.from_features("aarch64", ["fp", "asimd", "asimddp"]) is Int8Path.ARM_DOT
    assert Int8Path.from_features("aarch64", ["fp", "asimd"]) is Int8Path.ARM_NEON
    assert Int8Path.X86_AVX2.saturates_pairs and not Int8Path.X86_VNNI.saturates_pairs


def test_cpu_label_tells_apart_cpus_a_vm_names_alike() -> None:
    # Both EPYC kinds this suite has run on show /proc/cpuinfo's model name as just "AMD EPYC"
    avx2_only = {"cpu": "AMD EPYC", "arch": "x86_64", "features": cpu_features({"flags": "avx avx2 fma"})}
    with_vnni = {**avx2_only, "features": cpu_features({"flags": "avx avx2 avx512f avx512bw avx512_vnni"})}
    assert label(avx2_only) == f"AMD EPYC (int8: {Int8Path.X86_AVX2.value})"
    assert label(with_vnni) == f"AMD EPYC (int8: {Int8Path.X86_VNNI.value})"


# --- real files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from edgekit import pipeline

    out = tmp_path_factory.mktemp("exact") / "mobilenet_v2"
    pipeline.export(
        "mobilenet_v2", out_dir=out, width=0.5, resolution=RESOLUTION, int8=True, calib_samples=16
    )
    return out


@pytest.fixture(scope="module")
def stock(exported: Path) -> Path:
    """The same float model through ONNX Runtime's quantize_static, U8S8 QDQ per channel (its
    recommended x86 format), calibrated on the same photos."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from calibration.preprocess import PreprocessSpec
    from calibration.sources import builtin_tensors

    spec = PreprocessSpec.from_dict(manifest_json(exported)["preprocess"])
    batches = iter(builtin_tensors(spec, 16, seed=0)[:, None])

    class Reader(CalibrationDataReader):
        def get_next(self):
            batch = next(batches, None)
            return None if batch is None else {"input": batch}

    path = exported.parent / "stock_int8.onnx"
    quantize_static(
        str(exported / "model.onnx"),
        str(path),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return path


def test_export_records_where_the_file_is_exact(exported: Path) -> None:
    entry = manifest_json(exported)["files"]["onnx-int8"]
    exact = entry["exactness"]
    assert (
        exact["pair_limit"] == PAIR_LIMIT and exact["max_pair_sum"] <= PAIR_LIMIT and not exact["over_limit"]
    )
    assert exact["layers_reading_pairs"] > 20
    assert set(exact["paths"].values()) == {"exact"} and len(exact["paths"]) == len(Int8Path)
    host = exact["host"]
    assert host["passed"] and host["max_lsb"] <= 1 and host["nodes"] > 40
    assert host["float_outputs_max_rel"] < 1e-4
    assert entry["weight_grid"] == "8-bit per-channel, same-sign pairs <= 128"
    # The file itself: every layer that reads pairs keeps them within the limit.
    assert pair_report(exported / entry["path"]).max_pair_sum <= PAIR_LIMIT


def test_stock_quantizer_files_exceed_the_pair_limit(stock: Path) -> None:
    """What the arithmetic says of ONNX Runtime's defaults, on any host: pairs up to 254."""
    report = pair_report(stock)
    assert report.max_pair_sum > 200 and len(report.over_limit) > 10


def test_layer_check_on_this_host(exported: Path) -> None:
    batch = np.random.default_rng(3).standard_normal((2, 3, RESOLUTION, RESOLUTION), dtype=np.float32)
    check = layer_check(exported / "model_int8.onnx", batch)
    assert check.passed and check.max_lsb <= 1 and check.images == 2


@pytest.fixture(scope="module")
def photos(exported: Path) -> Path:
    """Two of the built-in photographs, preprocessed: real images reach the large activation codes."""
    from calibration.preprocess import PreprocessSpec
    from edgekit.verify import sample_images

    path = exported.parent / "photos.npy"
    np.save(path, sample_images(PreprocessSpec.from_dict(manifest_json(exported)["preprocess"]), 2))
    return path


def _emulated_layer_check(path: Path, photos: Path) -> dict:
    cmd = ["qemu-x86_64-static", "-cpu", "Haswell-v4", sys.executable, "-m", "calibration.onnx_check"]
    proc = subprocess.run(
        [*cmd, str(path), "--input", str(photos)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_qemu_x86
def test_avx2_kernels_compute_the_file_exactly(exported: Path, stock: Path, photos: Path) -> None:
    """ONNX Runtime's AVX2 (no VNNI) kernels, whatever this host has: edgekit's file within 1 LSB
    per node; ONNX Runtime's stock file saturates (many steps off) on the same kernels."""
    ours = _emulated_layer_check(exported / "model_int8.onnx", photos)
    assert ours["passed"] and ours["max_lsb"] <= 1, ours
    theirs = _emulated_layer_check(stock, photos)
    assert not theirs["passed"] and theirs["max_lsb"] > 8, theirs


@needs_qemu_x86
@pytest.mark.parametrize(("fmt", "layout"), [("onnx-int8", "NCHW"), ("tflite-int8", "NHWC")])
def test_avx2_emu_gives_the_hosts_outputs(exported: Path, fmt: str, layout: str) -> None:
    from runtimes.targets import get_target

    manifest = manifest_json(exported)
    path = exported / manifest["files"][fmt]["path"]
    engine = "onnxruntime" if fmt.startswith("onnx") else "litert"
    x = np.random.default_rng(4).standard_normal((2, 3, RESOLUTION, RESOLUTION), dtype=np.float32)
    x = x if layout == "NCHW" else x.transpose(0, 2, 3, 1).copy()
    here = get_target("local").run(path, engine, warmup=0, runs=1, inputs=x)
    there = get_target("avx2-emu").run(path, engine, warmup=0, runs=1, inputs=x)
    assert there["emulated"] and "avx512f" not in there["machine"]["features"]
    step = output_step(path) if fmt.startswith("onnx") else manifest["files"][fmt]["output"]["scale"]
    diff = float(np.abs(here["outputs"] - there["outputs"]).max())
    assert diff <= 2 * step, f"{fmt}: AVX2 vs this host max |diff| {diff:.3g} (step {step:.3g})"


def test_bias_correction_runs_on_each_files_grid(exported: Path) -> None:
    remedies = manifest_json(exported)["calibration"]["remedies"]
    corrected = {tuple(r["formats"]): r["grid"] for r in remedies if r["name"] == "bias_correct"}
    assert corrected == {
        ("onnx-int8",): "8-bit per-channel, same-sign pairs <= 128",
        ("tflite-int8",): "8-bit per-channel",
    }


def test_gptq_levels_reach_the_onnx_file(tmp_path: Path) -> None:
    """With --gptq the ONNX file stores GPTQ's codes: the levels it was given, not re-rounded."""
    from calibration.fakequant import grid_step, levels_by_weight, quant_layers
    from calibration.onnx_check import weight_codes
    from calibration.onnx_int8 import ONNX_GRID, quantize_onnx
    from exporters import onnx as onnx_exporter

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 4)
    )
    # Weights already on a 6-bit grid: the file must keep exactly those codes.
    grid6 = WeightGrid(6, True, PAIR_LIMIT)
    with torch.no_grad():
        for _, m in quant_layers(net):
            step = grid_step(m, grid6)
            m.weight.copy_(torch.round(m.weight / step) * step)
    calib = np.random.default_rng(0).standard_normal((4, 3, 8, 8), dtype=np.float32)
    onnx_exporter.export(net.eval(), torch.from_numpy(calib[:1]), tmp_path / "m.onnx")
    quantize_onnx(
        tmp_path / "m.onnx", tmp_path / "q.onnx", calib, grid=ONNX_GRID, levels=levels_by_weight(net, grid6)
    )
    for _, rows, _ in weight_codes(tmp_path / "q.onnx"):
        assert np.abs(rows).max() == 31
