"""What the HTML pages share: the Jinja2 templates (with the CSS and script they inline) and
opening a page in the user's browser."""

from __future__ import annotations

import os
import sys
import webbrowser
from functools import cache
from pathlib import Path
from typing import Any


@cache
def _inline_renderer() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False})


def inline(text: str) -> str:
    """One line of Markdown (code spans, emphasis) as HTML; raw HTML in it escaped. The results'
    own prose (a bench row's "why", a caption) is written in Markdown for report.md."""
    return _inline_renderer().renderInline(text)


@cache
def environment() -> Any:
    """The Jinja2 templates of ``edgekit/report/templates``; every value escaped unless marked safe."""
    import jinja2
    from markupsafe import Markup

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("edgekit.report", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, not an empty cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["markdown"] = lambda text: Markup(inline(text))
    return env


def has_display() -> bool:
    """A browser can show a window here: macOS, Windows, or an X11/Wayland session."""
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def open_page(path: Path) -> bool:
    """Open ``path`` in the default browser; False when there is no display or no browser."""
    return has_display() and webbrowser.open(path.resolve().as_uri())
