"""report.md: sections, and every figure's measurement note, from a real benchmark of a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
from _bench_models import build

from edgekit import bench, evaluate, report
from edgekit.manifest import read_results
from edgekit.report import plots


@pytest.fixture(scope="module")
def art(tmp_path_factory) -> Path:
    folder = build(tmp_path_factory.mktemp("report") / "tiny", act="hardswish", res=32)
    bench.bench(folder, runtimes=["onnxruntime", "litert"], warmup=2, runs=10, profile=True)
    return folder


def test_sections_and_notes(art):
    path = report.write_report(art, html=True).path
    text = path.read_text()
    for section in (
        "# tiny_hardswish",
        "## Files",
        "## Verification",
        "## Accuracy",
        "## Latency",
        "## Where the time goes",
        "## Machine",
        "How measured:",
    ):
        assert section in text, section
    stored = read_results(art)["bench"]["results"]
    rows = [line for line in text.splitlines() if line.startswith("| onnx-") or line.startswith("| tflite-")]
    latency_rows = [line for line in rows if "thread(s)" in line]
    assert len(latency_rows) == len(stored)  # one row per result, each with its measurement note
    for r in stored:
        assert r["measured"] in text and "(real, " in r["measured"]
    assert "HARD_SWISH x3" in text  # the op evidence for the int8 slowdown
    for png in (plots.PLOT_LATENCY, plots.PLOT_OPS):
        assert f"]({png})" in text and (art / png).stat().st_size > 1000
    html = (art / "report.html").read_text()  # one page: the plots inline, the int8 one only there
    assert "<table>" in html and f"]({plots.PLOT_LATENCY})" not in html
    assert '<figure id="fig-int8">\n<img src="data:image/png;base64,' in html


def test_reads_a_real_eval_without_recomputing(art):
    """`edgekit eval` then `edgekit report`: the report's accuracy table is eval's own rows."""
    result = evaluate.evaluate(art, limit=4).to_dict()
    text = report.write_report(art).path.read_text()
    for row in result["formats"]:
        assert f"| {row['format']} |" in text
    assert f"- images: {result['measured']['images']}" in text
    int8 = next(r for r in result["formats"] if r["format"] == "onnx-int8")
    assert f"| {int8['agreement_top1']:.4g} |" in text or f"| {int8['agreement_top1']} |" in text


def test_without_bench(tmp_path):
    folder = build(tmp_path / "nb", res=16, int8=False)
    text = report.write_report(folder).path.read_text()
    assert "Not benchmarked" in text and "Not evaluated" in text
