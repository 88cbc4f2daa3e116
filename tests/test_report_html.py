"""report.html and the zoo dashboard in a real browser: Debian's Chromium, headless, 1280 px wide.

Each page must show no Markdown syntax in its text, load every image, fetch nothing from the
network and never be wider than the window (wide tables scroll inside their wrapper). A
screenshot of each page is kept in the test's tmp folder.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.report import browser

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "bench" / "results.json"
WIDTH = 1280
NARROW = 500  # headless Chromium's narrowest window: a phone's layout (the page has one breakpoint)
# What Markdown leaves in a page's text when it is not rendered: bold, code spans, list items,
# table rules
MARKDOWN_LEFT = re.compile(r"\*\*|`|^- |\|\s*-{3}", re.M)
# Labelled photographs for a real top-1: scikit-image's cat and coffee under their ImageNet synsets
PHOTOS = {"n02123045": "chelsea.png", "n07920052": "coffee.png"}

needs_chromium = pytest.mark.skipif(
    browser.find_chromium() is None,
    reason="Chromium is not installed (scripts/test-deps.sh installs Debian's `chromium`)",
)


def edgekit(*args: str) -> str:
    """Run the CLI in this process; its stdout (failing the test on a non-zero exit)."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def labelled_photos(folder: Path) -> Path:
    import skimage

    for synset, name in PHOTOS.items():
        (folder / synset).mkdir(parents=True)
        shutil.copy(Path(skimage.__file__).parent / "data" / name, folder / synset / name)
    return folder


@pytest.fixture(scope="module")
def report_page(small_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edgekit report --html` of MobileNetV2-0.35 at 64 px after a real bench (--profile), a
    labelled eval and `edgekit analyze`: every plot the folder's data allows."""
    from edgekit import bench, evaluate
    from edgekit.manifest import write_json
    from edgekit.studies import depthwise

    root = tmp_path_factory.mktemp("report_html")
    folder = root / "mobilenet_v2"
    shutil.copytree(small_artifact, folder)  # the session's artifact stays read-only
    bench.bench(folder, runtimes=["onnxruntime", "litert"], threads=[1], warmup=2, runs=10, profile=True)
    evaluate.evaluate(folder, data=labelled_photos(root / "photos"))
    analysis = depthwise.analyze("mobilenet_v2", resolution=32, end_to_end=False, limit=1)
    write_json(folder / "analyze.json", analysis)
    out = edgekit("report", str(folder), "--html")
    assert out.splitlines() == [f"wrote {folder / 'report.md'}", f"wrote {folder / 'report.html'}"]
    return folder / "report.html"


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    page = tmp_path_factory.mktemp("dashboard") / "dashboard.html"
    assert edgekit("report", "--zoo", str(ZOO), "--out", str(page)).strip() == f"wrote {page}"
    return page


def check_page(page: Path, images: int, shots: Path, before: str = "") -> browser.PageView:
    """The page at 1280 px and at the narrowest window; a screenshot of each kept in ``shots``."""
    view = browser.inspect(page, WIDTH, 2000, before)
    left = [line for line in view.text.splitlines() if MARKDOWN_LEFT.search(line)]
    assert not left, f"Markdown syntax in the page's text: {left[:3]}"
    assert len(view.images) == images and all(i["complete"] and i["width"] > 0 for i in view.images), (
        view.images
    )
    assert view.requests == [], "a self-contained page fetches nothing"
    for width in (WIDTH, NARROW):
        at = view if width == WIDTH else browser.inspect(page, width, 1000)
        assert at.viewport == width and at.scroll_width <= at.viewport, (width, at.scroll_width, at.wide)
        png = browser.screenshot(page, shots / f"{page.stem}_{width}.png", width, 2000)
        assert png.stat().st_size > 20_000  # a rendered page, not a blank one
    return view


@needs_chromium
def test_report_in_chromium(report_page: Path, tmp_path: Path) -> None:
    html = report_page.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    view = check_page(report_page, images=4, shots=tmp_path)  # latency, accuracy, op share, SQNR
    print(f"screenshots: {tmp_path}")
    text = view.text
    for heading in ("Files", "Verification against PyTorch", "Accuracy", "Latency", "Where the time goes"):
        assert f"\n{heading}\n" in text, heading
    # each drawn plot says how it was measured; the one without data names its command
    assert "Bars: p50; whiskers: p50 to p99" in text
    assert "edgekit analyze mobilenet_v2 at 32 px, random weights: BN folded" in text
    assert "Shaded, with a red marker: depthwise layers." in text
    export = "edgekit export mobilenet_v2 --resolution 64 --width 0.35 --int8"
    assert f"int8 vs float32 per engine: not drawn; {export}, then edgekit bench " in text
    assert [i["alt"] for i in view.images] == [
        "latency vs accuracy drop",
        "latency per format and runtime",
        "op-type time share",
        "Per-layer int8 error (SQNR) along the network",
    ]


@needs_chromium
def test_dashboard_in_chromium(dashboard: Path, tmp_path: Path) -> None:
    rows = json.loads(ZOO.read_text())["results"]
    sort_then_filter = """
      const table = document.getElementById("measurements");
      const p50 = [...table.tHead.rows[0].cells].findIndex((c) => c.textContent.startsWith("p50"));
      table.tHead.rows[0].cells[p50].querySelector("button").click();
      const sorted = [...table.tBodies[0].rows].map((r) => Number(r.cells[p50].dataset.v));
      const filter = document.querySelector('input[data-filters="measurements"]');
      filter.value = "int8 litert";
      filter.dispatchEvent(new Event("input"));
      const shown = [...table.tBodies[0].rows].filter((r) => !r.hidden).length;
      return {sorted, shown, count: document.querySelector('[data-counts="measurements"]').textContent};
    """
    view = check_page(dashboard, images=1, shots=tmp_path, before=sort_then_filter)  # latency vs size
    print(f"screenshots: {tmp_path}")
    sorted_p50 = view.result["sorted"]
    assert sorted_p50 == sorted(r["p50_ms"] for r in rows)  # every row, fastest first
    int8_litert = sum(r["format"] == "tflite-int8" and r["runtime"] == "litert" for r in rows)
    assert (
        view.result["shown"] == int8_litert and view.result["count"] == f"{int8_litert} of {len(rows)} rows"
    )
    pairs = json.loads(ZOO.read_text())["int8_vs_fp32"]
    faster = sum(c["int8_faster"] for c in pairs)
    assert f"int8 faster than float32 in {faster} of {len(pairs)} (model, engine, threads) pairs" in view.text
    assert "Latency vs accuracy drop: no accuracy recorded" in view.text


def test_open_without_display(dashboard: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = CliRunner().invoke(cli, ["report", "--zoo", str(ZOO), "--out", str(dashboard), "--open"])
    assert result.exit_code == 0
    assert f"wrote {dashboard}" in result.output and "cannot open" in result.output


def test_pareto_front() -> None:
    from edgekit.report.dashboard import pareto_front

    # (latency, size): the third is beaten by the first on both, the fourth ties the first on one
    # axis and loses on the other
    assert pareto_front([(1.0, 5.0), (2.0, 1.0), (3.0, 6.0), (1.0, 7.0)]) == [True, True, False, False]


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ([], "give an artifact folder or --zoo results.json"),
        (["--zoo", "{other}"], "is not a zoo benchmark (no 'results' list)"),
        (["--zoo", str(ZOO), "--out", "dashboard.txt"], "--out dashboard.txt is not an .html file"),
    ],
)
def test_bad_input(args: list[str], error: str, tmp_path: Path) -> None:
    from edgekit.errors import EdgekitError

    other = tmp_path / "other.json"  # JSON, but not what `make bench` writes
    other.write_text('{"mobilenet_v2": {"rows": []}}')
    result = CliRunner().invoke(cli, ["report", *(a.format(other=other) for a in args)])
    assert isinstance(result.exception, EdgekitError) and error in str(result.exception)


def test_dashboard_reads_accuracy_beside_the_results(report_page: Path, tmp_path: Path) -> None:
    """An eval.json in artifacts/MODEL/ next to results.json (where `make bench` exports) adds top-1
    and the latency vs accuracy Pareto plot; here the report fixture's real eval stands for
    mobilenet_v2's."""
    results = tmp_path / "results.json"
    shutil.copy(ZOO, results)
    (tmp_path / "artifacts" / "mobilenet_v2").mkdir(parents=True)
    evaluation = json.loads((report_page.parent / "eval.json").read_text())
    shutil.copy(report_page.parent / "eval.json", tmp_path / "artifacts" / "mobilenet_v2" / "eval.json")
    page = Path(edgekit("report", "--zoo", str(results)).split()[-1])
    assert page == tmp_path / "dashboard.html"
    html = page.read_text()
    assert '<figure id="pareto-accuracy">' in html and "top-1 %" in html
    onnx = next(r for r in evaluation["formats"] if r["format"] == "onnx-fp32")
    rows = [r for r in json.loads(ZOO.read_text())["results"] if r["model"] == "mobilenet_v2"]
    shown = re.findall(r"<td>mobilenet_v2</td><td>onnx-fp32</td>.*?</tr>", html, re.S)
    assert len(shown) == sum(r["format"] == "onnx-fp32" for r in rows)
    assert all(f'data-v="{onnx["top1"]}"' in row for row in shown)
