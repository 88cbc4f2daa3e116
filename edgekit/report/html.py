"""report.html: the Markdown report as a page (a plain rendering; see edgekit.report)."""

from __future__ import annotations

import html as html_lib


def to_html(markdown: str, title: str) -> str:
    """A plain, dependency-free rendering: headings, tables, images; the rest as paragraphs."""
    out, table = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-:") for c in cells):
                continue
            tag = "th" if not table else "td"
            out.append(
                ("<table>" if not table else "")
                + "<tr>"
                + "".join(f"<{tag}>{html_lib.escape(c)}</{tag}>" for c in cells)
                + "</tr>"
            )
            table = True
            continue
        if table:
            out.append("</table>")
            table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html_lib.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            out.append(f'<img alt="{html_lib.escape(alt)}" src="{html_lib.escape(src.rstrip(")"))}">')
        elif line.strip():
            out.append(f"<p>{html_lib.escape(line)}</p>")
    if table:
        out.append("</table>")
    body = "\n".join(out)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html_lib.escape(title)}</title>"
        "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
        f"</head><body>\n{body}\n</body></html>\n"
    )
