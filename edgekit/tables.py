"""Rich tables for the CLI's human output (``--json`` is the machine output)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def render(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None) -> None:
    """Print one table; numbers right-aligned, ``None`` as an em dash."""
    table = Table(title=title, caption=caption, caption_justify="left")
    rows = [list(r) for r in rows]
    for i, col in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows)
        table.add_column(col, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*("—" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for v in row))
    console.print(table)


def print_models(rows: list[dict[str, Any]]) -> None:
    raise NotImplementedError  # owned by counting


def print_info(result: dict[str, Any]) -> None:
    raise NotImplementedError  # owned by counting


def print_export(manifest: dict[str, Any]) -> None:
    raise NotImplementedError  # owned by pipeline


def print_eval(result: dict[str, Any]) -> None:
    raise NotImplementedError  # owned by evaluate


def print_bench(result: dict[str, Any]) -> None:
    raise NotImplementedError  # owned by bench
