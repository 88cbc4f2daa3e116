"""Reports of an artifact folder: report.md (+ report.html) with plots; the zoo dashboard; the CLI's tables.

    written = write_report(folder, html=True)   # Written(path, stale files, html)
    page = write_dashboard("bench/results.json")  # bench/dashboard.html

One renderer (:mod:`edgekit.report.markdown`) writes every report.md: the export's (no results
yet) and `edgekit report`'s (with eval.json and bench.json). It reads, it computes nothing.
report.html is that Markdown as a self-contained page (:mod:`edgekit.report.html`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import ArtifactError, UsageError
from edgekit.manifest import check_path, read_manifest, read_results, stale_files, write_text
from edgekit.report.dashboard import write_dashboard
from edgekit.report.markdown import random_weights_note, render
from edgekit.report.pages import has_display, open_page

__all__ = [
    "Written",
    "has_display",
    "open_page",
    "random_weights_note",
    "render",
    "write_dashboard",
    "write_report",
]

ANALYSIS_FILE = "analyze.json"  # `edgekit analyze NAME --json > DIR/analyze.json`: the SQNR plot
ANALYZE_HINT = "`edgekit analyze NAME --json > FILE`"


@dataclass
class Written:
    """What ``write_report`` wrote (report.md, report.html when asked), and the folder's stale files."""

    path: Path
    stale: list[str] = field(default_factory=list)
    html: Path | None = None


def write_report(
    artifact_dir: str | os.PathLike[str],
    html: bool = False,
    out_dir: str | os.PathLike[str] | None = None,
    analysis: str | os.PathLike[str] | None = None,
) -> Written:
    """Write ``report.md`` (and ``report.html``) into ``out_dir`` (default: the folder itself).

    ``analysis``: an ``edgekit analyze --json`` output for the page's per-layer SQNR plot
    (default: the folder's ``analyze.json`` when there is one)."""
    from edgekit.report import plots
    from edgekit.report.html import render_page, report_figures

    folder = Path(artifact_dir)
    manifest = read_manifest(folder, check_hashes=False)
    out = check_path(out_dir, "--out") if out_dir else folder
    if out.is_file():
        raise UsageError(f"--out {out} is a file; the report is a folder of files", "pass --out DIR")
    if not os.access(out if out.exists() else out.parent, os.W_OK):
        raise ArtifactError(f"{out} is read-only: the report cannot be written there", "pass --out DIR")
    analysis_file = Path(analysis) if analysis else folder / ANALYSIS_FILE
    layers = read_analysis(analysis_file, required=analysis is not None) if html else None
    if layers and not _same_model(str(layers.get("model")), manifest.model.get("name", "")):
        raise UsageError(
            f"the analysis {analysis_file} is of {layers.get('model')}, "
            f"the folder holds {manifest.model.get('name')}",
            f"run `edgekit analyze {manifest.model.get('name')} --json` for it",
        )
    out.mkdir(parents=True, exist_ok=True)
    stale = stale_files(folder, manifest)
    results = read_results(folder)
    bench = results.get("bench") or {}
    drawn = plots.draw(out, bench, results.get("eval"))
    text = render(manifest, results.get("eval"), bench, drawn, stale)
    path = write_text(out / "report.md", text)
    page = None
    if html:
        figures = report_figures(manifest, folder, bench, results.get("eval"), drawn, layers)
        title = manifest.model.get("name", folder.name)
        page = write_text(out / "report.html", render_page(text, out, title, figures))
    return Written(path, [f"{fmt} ({manifest.files[fmt].path})" for fmt in stale], page)


def _same_model(analysed: str, name: str) -> bool:
    """The zoo's names and aliases (mobilenet_v3 is mobilenet_v3_large); other names as written."""
    from edgekit.errors import EdgekitError
    from edgekit.zoo.registry import get_entry

    try:
        return get_entry(analysed).name == get_entry(name).name
    except EdgekitError:
        return analysed == name


def read_analysis(path: str | os.PathLike[str], required: bool) -> dict | None:
    """An ``edgekit analyze --json`` result (None when absent and not ``required``)."""
    file = Path(path)
    if not file.is_file():
        if required:
            raise UsageError(
                f"--analysis {file} does not exist", "pass what `edgekit analyze NAME --json` wrote"
            )
        return None
    try:
        result = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{file} is not JSON ({exc})", f"write it with {ANALYZE_HINT}") from exc
    if not isinstance(result, dict) or not isinstance(result.get("layers"), list) or "bits" not in result:
        raise ArtifactError(
            f"{file} is not an `edgekit analyze --json` result (no 'layers' list)",
            f"write it with {ANALYZE_HINT}",
        )
    return result
