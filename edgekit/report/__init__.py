"""Reports of an artifact folder: report.md (+ report.html) with plots, and the CLI's tables.

    written = write_report(folder, html=True)   # Written(path, stale files)

One renderer (:mod:`edgekit.report.markdown`) writes every report.md: the export's (no results
yet) and `edgekit report`'s (with eval.json and bench.json). It reads, it computes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import ArtifactError
from edgekit.manifest import check_path, read_manifest, read_results, stale_files, write_text
from edgekit.report.markdown import random_weights_note, render

__all__ = ["Written", "random_weights_note", "render", "write_report"]


@dataclass
class Written:
    """What ``write_report`` wrote, and the files of the folder found stale (edited since export)."""

    path: Path
    stale: list[str] = field(default_factory=list)


def write_report(
    artifact_dir: str | os.PathLike[str], html: bool = False, out_dir: str | os.PathLike[str] | None = None
) -> Written:
    """Write ``report.md`` (and ``report.html``) into ``out_dir`` (default: the folder itself)."""
    from edgekit.report import plots
    from edgekit.report.html import to_html

    folder = Path(artifact_dir)
    manifest = read_manifest(folder, check_hashes=False)
    out = check_path(out_dir, "--out") if out_dir else folder
    if not os.access(out if out.exists() else out.parent, os.W_OK):
        raise ArtifactError(f"{out} is read-only: the report cannot be written there", "pass --out DIR")
    out.mkdir(parents=True, exist_ok=True)
    stale = stale_files(folder, manifest)
    results = read_results(folder)
    bench = results.get("bench") or {}
    drawn = plots.draw(out, bench, results.get("eval"))
    text = render(manifest, results.get("eval"), bench, drawn, stale)
    path = write_text(out / "report.md", text)
    if html:
        write_text(out / "report.html", to_html(text, manifest.model.get("name", folder.name)))
    return Written(path, [f"{fmt} ({manifest.files[fmt].path})" for fmt in stale])
