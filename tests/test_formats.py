"""The format registry: what an export writes, and a new format plugged in with one file + one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgekit import formats
from edgekit.errors import UsageError


def test_resolve_families_names_and_int8() -> None:
    names = [f.name for f in formats.resolve(None, int8=False)]
    assert names == ["torch", "onnx-fp32", "tflite-fp32", "tflite-fp16"]
    assert [f.name for f in formats.resolve(["onnx"], int8=True)] == ["torch", "onnx-fp32", "onnx-int8"]
    # A format made from another file brings its source along.
    assert [f.name for f in formats.resolve(["tflite-fp16"], int8=False)] == [
        "torch",
        "tflite-fp32",
        "tflite-fp16",
    ]
    with pytest.raises(UsageError, match="unknown format onxx"):
        formats.resolve(["onxx"], int8=False)


def test_select_by_name_family_and_precision() -> None:
    present = ["onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"]
    assert formats.select(present, ["int8"]) == ["onnx-int8", "tflite-int8"]
    assert formats.select(present, ["tflite"]) == ["tflite-fp32", "tflite-int8"]
    assert formats.select(present, ["onnx-int8", "tflite-fp32"]) == ["onnx-int8", "tflite-fp32"]
    assert formats.select(present, None) == present
    with pytest.raises(UsageError, match="none of fp16 is in this folder"):
        formats.select(present, ["fp16"])


def test_a_file_outside_a_manifest_gets_its_format_from_its_name() -> None:
    assert formats.for_file("x/model_int8.onnx").name == "onnx-int8"
    assert formats.for_file("other_int8.tflite").name == "tflite-int8"
    assert formats.for_file("net.onnx").name == "onnx-fp32"
    assert formats.for_file("model.pt2").name == "torch"


@pytest.fixture
def copy_format():
    from copy_format import FORMAT

    formats.register(FORMAT)  # the one registry line
    yield FORMAT
    formats.unregister(FORMAT.name)


def test_a_new_format_goes_through_every_step(copy_format, tmp_path: Path) -> None:
    """Exported, verified, evaluated, benchmarked and reported, no other file touched."""
    from edgekit import bench, evaluate, pipeline
    from edgekit.manifest import read_manifest, read_results
    from edgekit.report import write_report

    out = tmp_path / "m"
    pipeline.export("mobilenet_v2", out_dir=out, width=0.35, resolution=32, formats=["onnx", "onnx-copy"])
    entry = read_manifest(out).files["onnx-copy"]
    assert entry.path == "model_copy.onnx" and entry.info["copied_from"] == "model.onnx"
    assert entry.verification["passed"] and entry.verification["images"]["cosine_min"] > 0.99999
    rows = {r.format: r for r in evaluate.evaluate(out, limit=2).formats}
    assert rows["onnx-copy"].runtime == "onnxruntime" and rows["onnx-copy"].agreement_top1 == 100.0
    result = bench.bench(out, formats=["onnx-copy"], runs=3, warmup=0)
    # its declared engine, then every other engine that loads .onnx files (OpenVINO)
    assert [(r.format, r.runtime) for r in result.results] == [
        ("onnx-copy", "onnxruntime"),
        ("onnx-copy", "openvino"),
    ]
    assert read_results(out)["bench"]["results"][0]["format"] == "onnx-copy"
    text = write_report(out).path.read_text()
    assert "| onnx-copy | model_copy.onnx |" in text and "| onnx-copy | onnxruntime |" in text


def test_lanes_split_the_formats_across_processes() -> None:
    """Lanes with an int8 file get a process first, sources in their reader's lane, at most
    ``jobs`` lanes."""
    from edgekit.lanes import plan

    def names(chosen: list[formats.Format], jobs: int) -> list[list[str]]:
        return [[f.name for f in lane.formats] for lane in plan(chosen, jobs)]

    default = formats.resolve(["onnx", "tflite"], int8=True)
    assert names(default, 1) == [[f.name for f in default]]
    # Two cores: the TFLite int8 file (a calibration + litert-torch) beside all the others;
    # model.pt2, which nothing reads, goes to the lane with less work (by the registry's cost).
    assert names(default, 2) == [
        ["torch", "onnx-fp32", "tflite-fp32", "tflite-fp16", "onnx-int8"],
        ["tflite-int8"],
    ]
    assert names(default, 3)[1:] == [["torch", "tflite-fp32", "tflite-fp16"], ["tflite-int8"]]
    chosen = formats.resolve(["onnx", "tflite", "executorch", "ncnn"], int8=True)

    def without_torch(lanes: list[list[str]]) -> list[list[str]]:
        return [[n for n in lane if n != "torch"] for lane in lanes]

    main, executorch = without_torch(names(chosen, 2))
    assert executorch == ["executorch-fp32", "executorch-int8"]
    assert "ncnn-fp32" in main and "tflite-int8" in main  # ncnn reads model.onnx
    tflite = ["tflite-fp32", "tflite-fp16"]
    assert without_torch(names(chosen, 4))[1:] == [tflite, executorch, ["tflite-int8"]]
    for jobs in (2, 3, 4):
        lanes = plan(chosen, jobs)
        assert [f.name for lane in lanes for f in lane.formats].count("torch") == 1
        work = [sum(f.cost for f in lane.formats if f.name != "torch") for lane in lanes]
        assert "torch" in names(chosen, jobs)[work.index(min(work))]
    # The only lane, or one nothing else runs beside: the reference keeps its place, first.
    assert names(formats.resolve(["onnx"], int8=False), 2) == [["torch", "onnx-fp32"]]
    # A format of another lane that reads a main-lane file is written in the main lane.
    reader = dataclasses.replace(formats.get("tflite-fp16"), name="x", source="onnx-fp32")
    assert [f.name for f in plan([formats.get("onnx-fp32"), reader], 2)[0].formats] == ["onnx-fp32", "x"]


def test_a_failing_second_process_fails_the_export_in_one_line(tmp_path: Path) -> None:
    """The forked lane's error reaches the export unchanged; nothing is left in --out.

    In a fresh process, as the CLI forks: a fork copies no other thread, and this test process's
    other threads (Ray's, execnet's) may hold locks."""
    import subprocess
    import sys

    script = f"""
import dataclasses, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from copy_format import FORMAT
from edgekit import formats, pipeline
broken = dict(name="broken", lane="elsewhere", writer="copy_format:fail", source=None)
formats.register(dataclasses.replace(FORMAT, **broken))
try:
    pipeline.export("mobilenet_v2", out_dir={str(tmp_path / "m")!r}, width=0.35, resolution=32,
                    formats=["onnx", "broken"], jobs=2)
except Exception as exc:
    print(type(exc).__name__, exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert "ExportError copy failed on purpose" in done.stdout, done.stderr[-2000:]
    assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())
