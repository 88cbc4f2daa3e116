"""Benchmark harness: JSON schema and invariants on real runtimes (no timing asserts)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _bench_models import build

from edgekit import bench as bench_mod
from edgekit.errors import ArtifactError, UsageError
from edgekit.manifest import read_results
from runtimes import get_runtime

RES = 32
FIELDS = {
    "format",
    "runtime",
    "target",
    "threads",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "mean_ms",
    "std_ms",
    "min_ms",
    "max_ms",
    "cv",
    "unstable",
    "runs",
    "warmup",
    "first_ms",
    "throughput",
    "size_bytes",
    "rss_delta_mb",
    "macs",
    "gmacs_per_s",
    "peak_gmacs_per_s",
    "efficiency",
    "emulated",
    "measured",
}


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("bench") / "hswish", act="hardswish", res=RES)


@pytest.fixture(scope="module")
def report(art, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("out") / "bench.json"
    return bench_mod.bench(
        art, runtimes=["onnxruntime", "litert"], threads=[1], warmup=3, runs=25, profile=True, out_file=out
    ).to_dict() | {"_out": out}


def test_schema_and_invariants(report):
    assert {"machine", "results", "skipped", "method"} <= set(report)
    assert {r["format"] for r in report["results"]} == {
        "onnx-fp32",
        "onnx-int8",
        "tflite-fp32",
        "tflite-int8",
    }
    for r in report["results"]:
        assert set(r) >= FIELDS, FIELDS - set(r)
        assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["runs"] == len(r["latencies_ms"]) == 25 and r["warmup"] == 3
        lat = np.asarray(r["latencies_ms"])
        assert r["cv"] == pytest.approx(lat.std() / lat.mean(), rel=1e-2, abs=1e-3)
        assert r["unstable"] == (r["cv"] > bench_mod.CV_LIMIT)
        assert r["throughput"] == pytest.approx(1000 / r["mean_ms"], rel=1e-2)
        assert r["efficiency"] == pytest.approx(r["gmacs_per_s"] / r["peak_gmacs_per_s"], rel=1e-2)
        assert r["emulated"] is False and "1 thread(s)" in r["measured"] and "25 runs" in r["measured"]
        assert r["size_bytes"] > 0


def test_int8_input_is_quantised(art):
    job = bench_mod.Job("tflite-int8", art / "model_int8.tflite", "litert")
    sess = get_runtime("litert").load(job.path)
    x = bench_mod.bench_input(sess, job)
    assert x.dtype == np.float32 and x.shape == (1, RES, RES, 3)
    native = sess.prepare(x)
    assert native.dtype == np.int8
    scale, zp = sess.input["scale"], sess.input["zero_point"]
    assert (
        np.abs(
            (native.astype(np.float32) - zp) * scale - np.clip(x, (-128 - zp) * scale, (127 - zp) * scale)
        ).max()
        <= scale / 2 + 1e-6
    )


def test_profile_names_the_slow_ops(report):
    by_fmt = {r["format"]: r for r in report["results"]}
    ort_int8 = by_fmt["onnx-int8"]["profile"]
    assert sum(ort_int8["share"].values()) == pytest.approx(1.0, abs=1e-3)
    slow = {s["op"] for s in ort_int8["slow_path"]}
    assert "HardSigmoid" in slow or "HardSwish" in slow  # h-swish stays float between Q/DQ pairs
    tfl = by_fmt["tflite-int8"]["profile"]
    assert [s["op"] for s in tfl["slow_path"]] == ["HARD_SWISH"] and tfl["slow_path"][0]["count"] == 3
    assert tfl["delegated_ops"] == tfl["total_ops"] - 3
    assert by_fmt["tflite-fp32"]["profile"]["slow_path"] == []


def test_recorded_and_written(report, art):
    stored = read_results(art)["bench"]  # bench.json beside the manifest, which is never rewritten
    assert len(stored["results"]) == len(report["results"])
    assert "latencies_ms" not in stored["results"][0]  # raw runs go to --out, not the folder
    written = json.loads(Path(report["_out"]).read_text())
    assert written["results"][0]["runs"] == len(written["results"][0]["latencies_ms"])


def test_single_file_and_skips(art):
    result = bench_mod.bench(
        art / "model.onnx", runtimes=["onnxruntime", "litert"], warmup=0, runs=3
    ).to_dict()
    assert [(r["format"], r["runtime"]) for r in result["results"]] == [("onnx-fp32", "onnxruntime")]
    assert result["skipped"] == [
        {"runtime": "litert", "format": None, "reason": "no file here that litert loads"}
    ]


def test_missing_runtime_is_skipped(art, monkeypatch):
    from runtimes.litert import LiteRTRuntime

    monkeypatch.setattr(LiteRTRuntime, "available", lambda self: (False, "pip install ai-edge-litert"))
    # Nothing could run: an error that carries each skip's reason (it was an empty table, exit 0).
    with pytest.raises(ArtifactError, match="tflite-fp32/litert: pip install ai-edge-litert"):
        bench_mod.bench(art / "model_fp32.tflite", warmup=0, runs=2)
    result = bench_mod.bench(art, runtimes=["onnxruntime", "litert"], warmup=0, runs=2).to_dict()
    assert {"runtime": "litert", "format": "tflite-fp32", "reason": "pip install ai-edge-litert"} in result[
        "skipped"
    ]


def test_bad_options(art):
    with pytest.raises(UsageError):
        bench_mod.bench(art, threads=[0])
    with pytest.raises(UsageError):
        bench_mod.bench(art, runtimes=["nope"])


def test_latency_stats():
    stats = bench_mod.latency_stats([1.0] * 9 + [3.0])
    assert stats["p50_ms"] == 1.0 and stats["max_ms"] == 3.0 and stats["runs"] == 10
    assert stats["cv"] == pytest.approx(np.std([1.0] * 9 + [3.0]) / 1.2, abs=1e-4)
    assert stats["unstable"] is True


def test_off_path_share_of_the_int8_gap():
    """The why of a slower int8 file says how much of the gap its off-path ops take (profiled)."""
    row = {
        "off_fast_path": [{"op": "ReduceMean", "count": 1}, {"op": "Softmax", "count": 1}],
        "op_ms": {"int8": {"QLinearConv": 6.5, "ReduceMean": 0.03}, "fp32": {"Conv": 4.3}},
    }
    share = bench_mod._off_path_share(row, 1.26)
    assert share == " (those ops take 0.03 ms of the 1.26 ms by which int8 is slower)"
    assert bench_mod._off_path_share({**row, "op_ms": None}, 1.26) == ""  # no profile: no share


def test_losing_layer_kinds_named_largest_loss_first():
    """The why of a slower int8 file names the layer kinds whose int8 kernels lose, by how much."""
    kinds = {
        "int8": {"conv": 3.8, "depthwise": 1.35, "pointwise": 0.25, "reshape/transpose": 0.6},
        "fp32": {"conv": 4.26, "depthwise": 0.56, "pointwise": 0.14, "reshape/transpose": 0.5},
    }
    assert bench_mod._losing_kinds(kinds) == (
        ". Layer kinds slower in int8 (ms, int8 vs float32): depthwise 1.35 vs 0.56, "
        "pointwise 0.25 vs 0.14, reshape/transpose 0.60 vs 0.50"
    )
    assert bench_mod._losing_kinds({"int8": {"conv": 1.0}, "fp32": {"conv": 2.0}}) == ""
    assert bench_mod._losing_kinds(None) == ""
    assert bench_mod._losing_kinds({"int8": {}, "fp32": {}}) == ""  # an engine without categories


def test_host_load_is_measured(report):
    for r in report["results"]:
        # One thread of work: the process ran at most ~1 CPU-s per s plus the engine's helpers.
        assert 0 < r["cpu_per_wall"] <= r["threads"] + 0.5
        # 25 runs of a 32 px net last < 0.5 s: too short for /proc/stat's 10 ms ticks.
        assert r["others_cpu"] is None
        assert r["load_avg"] >= 0


def _row(threads: int, p50: float, own: float, others: float | None) -> bench_mod.BenchRow:
    stats = bench_mod.latency_stats([p50] * 10)
    return bench_mod.BenchRow(
        format="onnx-fp32", runtime="onnxruntime", target="local", threads=threads, file="m.onnx",
        precision="fp32", **stats, warmup=0, first_ms=None, throughput=None, size_bytes=1, macs=None,
        runtime_version=None, provider="", input_dtype=None, emulated=False, cpu=None,
        cpu_per_wall=own, others_cpu=others, load_avg=1.0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("own", "others", "reason"),
    [
        (1.9, (os.cpu_count() or 1), "host busy"),
        (1.0, 0.0, "did not get the cores"),
        (1.95, 0.0, "split costs more than it saves"),
    ],
)
def test_more_threads_slower_is_flagged_with_its_reason(own, others, reason):
    rows = [_row(1, 5.0, 1.0, 0.0), _row(2, 6.0, own, others), _row(4, 4.0, own, others)]
    bench_mod.flag_thread_scaling(rows)
    assert rows[0].note is None and rows[2].note is None  # faster with more threads: no flag
    assert "2 threads slower than 1" in rows[1].note and reason in rows[1].note


def test_zoo_readme_lists_slower_thread_rows_with_their_reason() -> None:
    from edgekit.studies.benchzoo import _thread_lines

    row = dict(model="m", runtime="onnxruntime", format="onnx-int8")
    slower = "2 threads slower than 1 (p50 2 vs 1 ms): host busy: 1.20 of 2 cores; re-run on an idle host"
    noted = {"unstable": True, "note": f"unstable: CV 12%; {slower}"}
    rows = [{**row, "threads": 1}, {**row, "threads": 2, **noted}]
    text = "\n".join(_thread_lines(rows))
    assert "0 of 1 rows with more than 1 thread are no slower" in text and "1 of 2 rows had a CV" in text
    assert f"- m / onnxruntime / onnx-int8: {slower}" in text
