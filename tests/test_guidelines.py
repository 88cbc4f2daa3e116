"""ShuffleNetV2 guideline micro-benchmarks: fixed FLOPs by construction, MAC as the seed defines it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgekit.studies import guidelines as g


@pytest.mark.parametrize("gid", ["G1", "G2", "G3"])
def test_flops_are_held_fixed(gid: str) -> None:
    cases = [g.count(c) for c in g.EXPERIMENTS[gid](1)]
    macs = [c.macs for c in cases]
    # Channel counts are integers, so "fixed" means within the rounding of the paper's own pairs.
    assert max(macs) / min(macs) < 1.12, macs


def test_g1_memory_access_cost_matches_the_seed_formula() -> None:
    for case in map(g.count, g.g1_cases(1)):
        c1, c2, hw = case.extra["c1"], case.extra["c2"], g.SIDE * g.SIDE
        per_block = 2 * (hw * (c1 + c2) + c1 * c2)  # two 1x1 convs: c1->c2 and c2->c1
        assert case.memory == g.BLOCKS * per_block
    # The seed's inequality: at fixed FLOPs MAC is smallest when c1 == c2.
    mem = {c.extra["ratio"]: c.memory for c in map(g.count, g.g1_cases(1))}
    assert min(mem, key=mem.get) == "1:1"


def test_g4_variants_have_equal_flops_but_different_memory() -> None:
    cases = [g.count(c) for c in g.g4_cases(1)]
    assert len({c.macs for c in cases}) == 1
    plain = next(c for c in cases if not c.extra["relu"] and not c.extra["shortcut"])
    both = next(c for c in cases if c.extra["relu"] and c.extra["shortcut"])
    assert both.memory > plain.memory


def test_rank_correlation_handles_ties() -> None:
    assert g._spearman([1.0, 2.0, 3.0], [10.0, 20.0, 30.0]) == pytest.approx(1.0)
    assert g._spearman([3.0, 2.0, 1.0], [10.0, 20.0, 30.0]) == pytest.approx(-1.0)
    assert g._spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) != g._spearman(
        [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]
    )  # nan


def test_cli_measures_one_guideline_on_both_runtimes(tmp_path) -> None:
    plot = tmp_path / "g.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgekit",
            "guidelines",
            "--only",
            "G1",
            "--quick",
            "--json",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    runtimes = {r["runtime"] for r in result["rows"]}
    assert runtimes == {"onnxruntime", "litert"}
    assert len(result["rows"]) == 8  # four ratios x two runtimes
    assert all(r["p50_ms"] > 0 and r["runs"] >= 5 for r in result["rows"])
    assert {f["runtime"] for f in result["findings"]} == runtimes
    assert plot.stat().st_size > 1000


def test_cli_rejects_unknown_guideline() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgekit", "guidelines", "--only", "G9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "unknown guideline G9" in proc.stderr and "Traceback" not in proc.stderr


def test_figure2_time_shares_come_from_the_profiler() -> None:
    (row,) = g.time_shares(("mobilenet_v2",), resolution=64)
    assert row["runtime"] == "onnxruntime" and row["runs"] >= 20
    assert 0.0 < row["conv_time_share"] <= 1.0
    assert row["conv_time_share"] + row["other_time_share"] == pytest.approx(1.0)
    # MobileNetV2's MACs are all in convolutions but the classifier's.
    assert 0.9 < row["conv_flops_share"] < 1.0
    assert {"depthwise", "pointwise"} <= set(row["time_by_category_ms"])
