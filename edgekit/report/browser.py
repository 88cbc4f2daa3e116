"""The pages in a real browser: headless Chromium driven by its command line (no driver library).

    python -m edgekit.report.browser PAGE PNG [PAGE PNG ...]   # screenshots (`make screenshots`)

:func:`inspect` loads a copy of a page with a probe script that writes what the page looks like
once loaded (viewport, scroll width, every image, the visible text, network requests) into the
DOM, which ``--dump-dom`` prints; :func:`screenshot` keeps a PNG of the viewport.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, RuntimeUnavailableError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 120
PROBE_ID = "edgekit-probe"
PROBE = """<script>
window.addEventListener("load", () => {
  const result = (() => { BEFORE })();
  const view = window.innerWidth;
  const wide = [...document.body.querySelectorAll("*")]
    .filter((e) => e.getBoundingClientRect().right > view + 1 && !e.closest(".table-wrap"))
    .slice(0, 5).map((e) => e.tagName.toLowerCase() + (e.className ? "." + e.className : ""));
  const probe = {
    viewport: view,
    scroll_width: document.documentElement.scrollWidth,
    images: [...document.images].map((i) => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
    requests: performance.getEntriesByType("resource").map((r) => r.name),
    wide: wide,
    text: document.body.innerText,
    result: result === undefined ? null : result,
  };
  const out = document.createElement("pre");
  out.id = "PROBE_ID";
  out.textContent = JSON.stringify(probe);
  document.body.appendChild(out);
});
</script>"""


@dataclass(frozen=True)
class PageView:
    """A page as Chromium laid it out at one window width."""

    viewport: int
    scroll_width: int  # the document's: wider than the viewport = the page scrolls sideways
    images: list[dict]  # alt, complete, width (naturalWidth: 0 = not loaded)
    requests: list[str]  # resources fetched (a self-contained page fetches none)
    wide: list[str]  # elements reaching past the viewport outside a scrolling table wrapper
    text: str  # document.body.innerText
    result: Any  # what the ``before`` script returned


def find_chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _run(url: str, extra: list[str], width: int, height: int) -> str:
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeUnavailableError(
            "no Chromium found (looked for " + ", ".join(BROWSERS) + ")",
            "install Debian's `chromium` (scripts/test-deps.sh does)",
        )
    with tempfile.TemporaryDirectory(prefix="edgekit-chromium-") as profile:
        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",  # a container has no user namespaces for the sandbox
            "--disable-gpu",
            "--disable-dev-shm-usage",  # a container's /dev/shm is small
            f"--user-data-dir={profile}",
            "--no-first-run",
            "--hide-scrollbars",
            "--run-all-compositor-stages-before-draw",  # a screenshot shows every image, fully painted
            f"--window-size={width},{height}",
            "--virtual-time-budget=10000",  # waits for load without sleeping
            *extra,
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if proc.returncode != 0:
        raise EdgekitError(f"chromium exited with {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def inspect(page: Path, width: int = 1280, height: int = 2000, before: str = "") -> PageView:
    """Load a copy of ``page`` with the probe appended and read what the probe wrote.

    ``before``: a JavaScript function body run once the page has loaded, before the probe looks
    (clicks, typing); what it returns is ``PageView.result``."""
    source = page.read_text(encoding="utf-8")
    probe = PROBE.replace("PROBE_ID", PROBE_ID).replace("BEFORE", before)
    with tempfile.TemporaryDirectory(prefix="edgekit-probe-") as tmp:
        probed = Path(tmp) / page.name
        probed.write_text(source.replace("</body>", probe + "</body>", 1), encoding="utf-8")
        dom = _run(probed.as_uri(), ["--dump-dom"], width, height)
    found = re.search(rf'<pre id="{PROBE_ID}">(.*?)</pre>', dom, re.S)
    if not found:
        raise EdgekitError(f"the probe did not run in {page} (no load event within the time budget?)")
    return PageView(**json.loads(html.unescape(found.group(1))))


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 2000) -> Path:
    """The top ``width`` x ``height`` pixels of ``page`` as a PNG."""
    png.parent.mkdir(parents=True, exist_ok=True)
    _run(page.resolve().as_uri(), [f"--screenshot={png.resolve()}"], width, height)
    if not png.is_file():
        raise EdgekitError(f"chromium wrote no screenshot of {page} to {png}")
    return png


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshots of edgekit's pages in headless Chromium.")
    parser.add_argument("pairs", nargs="+", metavar="PAGE PNG")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give pairs: PAGE PNG [PAGE PNG ...]")
    for page, png in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        print(f"wrote {screenshot(Path(page), Path(png), args.width, args.height)}")


if __name__ == "__main__":
    main()
