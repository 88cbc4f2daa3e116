"""report.html: report.md as one self-contained page (CSS and plots inline; works offline).

The body is report.md itself rendered by markdown-it-py (CommonMark + tables), so the page and the
Markdown never disagree; Jinja2 lays out the page and adds the figures only a page carries inline
(int8 vs float32, per-layer SQNR). Every figure has a caption saying how it was measured; a figure
whose data is absent is listed with the command that produces it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from edgekit.manifest import Manifest
from edgekit.report import plots

# report.md's own plots: the anchor each gets in the page, so the figure list can link to it
MARKDOWN_FIGURES = {
    plots.PLOT_LATENCY: "fig-latency",
    plots.PLOT_ACCURACY: "fig-accuracy",
    plots.PLOT_OPS: "fig-ops",
}

LONG_CELL = 32  # characters: a table cell longer than this wraps, shorter ones never do


@dataclass(frozen=True)
class Figure:
    """One plot of a page: drawn (``png``) or not (``missing`` names the command that draws it)."""

    key: str  # the anchor id in the page
    title: str
    caption: str = ""  # how it was measured
    png: bytes | None = None
    missing: str = ""
    section: str = ""  # the report.md section it closes ("" = a section of its own)

    @property
    def src(self) -> str:
        return data_uri(self.png or b"")


@dataclass(frozen=True)
class Section:
    """One ``## `` section of report.md, rendered."""

    key: str
    title: str
    html: str
    figures: tuple[Figure, ...] = ()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def markdown_renderer(folder: Path) -> MarkdownIt:
    """CommonMark + tables, raw HTML escaped; tables wrapped so wide ones scroll inside the page;
    images read from ``folder`` and put inline."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")

    def table_open(self: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
        return '<div class="table-wrap">' + self.renderToken(tokens, idx, options, env)

    def table_close(self: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
        return self.renderToken(tokens, idx, options, env) + "</div>"

    def cell_open(self: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
        if len(tokens[idx + 1].content) > LONG_CELL:  # prose may wrap; names and numbers stay whole
            tokens[idx].attrJoin("class", "long")
        return self.renderToken(tokens, idx, options, env)

    def image(self: Any, tokens: list, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        name = str(token.attrGet("src"))
        file = folder / name
        if "/" in name or not file.is_file():  # only the report's own plots, never another path
            return f"<span class='missing'>[{token.content}: {name} not found]</span>"
        token.attrSet("src", data_uri(file.read_bytes()))
        if name in MARKDOWN_FIGURES:
            token.attrSet("id", MARKDOWN_FIGURES[name])
        return self.image(tokens, idx, options, env)

    md.add_render_rule("table_open", table_open)
    md.add_render_rule("table_close", table_close)
    md.add_render_rule("td_open", cell_open)
    md.add_render_rule("image", image)
    return md


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def split_sections(markdown: str) -> tuple[str, list[tuple[str, str]]]:
    """report.md's head (the ``# `` title and its bullets) and its ``## `` sections (title, body)."""
    head, sections = [], []
    for line in markdown.splitlines():
        if line.startswith("## "):
            sections.append((line[3:].strip(), []))
        elif sections:
            sections[-1][1].append(line)
        else:
            head.append(line)
    return "\n".join(head), [(title, "\n".join(body)) for title, body in sections]


def report_figures(
    manifest: Manifest,
    folder: Path,
    bench: dict,
    evaluation: Any,
    drawn: dict[str, str],
    analysis: dict | None,
) -> list[Figure]:
    """The report's four comparison plots, drawn or with the command that would draw them."""
    results = bench.get("results") or []
    accuracy_missing = _accuracy_missing(folder, results, evaluation)
    figures = [_markdown_figure(drawn, "accuracy", "Latency vs accuracy drop", accuracy_missing)]
    rows = bench.get("int8_vs_fp32") or []
    if rows:
        figures.append(
            Figure(
                "fig-int8",
                "int8 vs float32 per engine",
                "p50 of the Latency table's runs, float32 and int8 file in the same engine and threads "
                "(x = int8/fp32). Under a pair where int8 did not win: the int8 file's ops that ran off "
                "the int8 fast path (from the engine's profile with --profile, else read from the graph "
                "the engine executes).",
                plots.int8_vs_fp32(rows),
                section="int8 vs float32",
            )
        )
    else:
        figures.append(
            Figure(
                "fig-int8",
                "int8 vs float32 per engine",
                missing=f"`edgekit export {_model_command(manifest, 'width')} --int8`, then "
                f"`edgekit bench {folder}` "
                "(needs a float32 and an int8 file of one engine)",
            )
        )
    figures.append(_sqnr_figure(analysis, _model_command(manifest), folder))
    figures.append(
        _markdown_figure(drawn, "ops", "Time share by op type", f"`edgekit bench {folder} --profile`")
    )
    return figures


def _markdown_figure(drawn: dict[str, str], kind: str, title: str, missing: str) -> Figure:
    """A plot report.md shows itself: linked from the page's figure list, or its command."""
    if kind in drawn:
        return Figure(MARKDOWN_FIGURES[drawn[kind]], title)
    return Figure(f"fig-{kind}", title, missing=missing)


def _accuracy_missing(folder: Path, results: list, evaluation: Any) -> str:
    needed = [] if evaluation else [f"`edgekit eval {folder} --data IMAGES`"]
    needed += [] if results else [f"`edgekit bench {folder}`"]
    return " and ".join(needed) or f"`edgekit eval {folder} --data IMAGES` with labelled images"


def _model_command(manifest: Manifest, *options: str) -> str:
    """The zoo model of the folder as command-line arguments (``options``: more than resolution and
    pretrained, which every command takes)."""
    args = manifest.model.get("args") or {}
    flags = [f"--{k} {args[k]}" for k in ("resolution", *options) if args.get(k) is not None]
    flags += ["--pretrained"] if args.get("pretrained") else []
    return " ".join([manifest.model.get("name", "MODEL"), *flags])


def _sqnr_figure(analysis: dict | None, command: str, folder: Path) -> Figure:
    title = "Per-layer int8 error (SQNR) along the network"
    if not analysis:
        return Figure(
            "fig-sqnr",
            title,
            missing=f"`edgekit analyze {command} --json > {folder / 'analyze.json'}` "
            "(or `edgekit report DIR --analysis FILE`)",
        )
    images = analysis.get("images") if analysis.get("sensitivity_images") else None
    caption = (
        f"`edgekit analyze {analysis['model']}` at {analysis['resolution']} px, "
        f"{'pretrained' if analysis.get('pretrained') else 'random'} weights: {analysis['method']}"
        + (
            f". Lower panel: logits SQNR on {analysis['sensitivity_images']} images of {images} "
            "(a missing point: identical logits)"
            if images
            else ""
        )
        + ". Shaded, with a red marker: depthwise layers."
    )
    return Figure("fig-sqnr", title, caption, plots.sqnr_along(analysis), section="int8")


def render_page(markdown: str, folder: Path, title: str, figures: list[Figure]) -> str:
    """The whole report.html text."""
    from edgekit.report.pages import environment

    md = markdown_renderer(folder)
    head, raw_sections = split_sections(markdown)
    titles = {t for t, _ in raw_sections}
    sections = [
        Section(slug(t), t, md.render(body), tuple(f for f in figures if f.png and f.section == t))
        for t, body in raw_sections
    ]
    orphans = tuple(f for f in figures if f.png and f.section not in titles)  # e.g. SQNR without int8
    if orphans:
        sections.append(Section("more-figures", "More figures", "", orphans))
    return (
        environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            head=md.render(head),
            sections=sections,
            figures=figures,
        )
    )
