"""The zoo dashboard: every model x format x engine x threads of a `make bench` results.json on one
self-contained page (a sortable table, Pareto plots, where int8 lost and why).

    write_dashboard("bench/results.json")            # -> bench/dashboard.html

Accuracy is shown where it is known: an ``eval.json`` that `edgekit eval` left beside a benched
model (``artifacts/MODEL/`` next to results.json, where `make bench` exports).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError, UsageError
from edgekit.manifest import check_path, read_results, write_text

PAGE = "dashboard.html"


@dataclass(frozen=True)
class Point:
    """One measured (model, format, engine, threads), with what the page compares it on."""

    model: str
    format: str
    precision: str
    runtime: str
    threads: int
    p50_ms: float
    p99_ms: float
    cv: float
    runs: int
    size_mb: float
    mmacs: float | None
    target: str
    measured: str
    int8_ratio: float | None = None  # int8 p50 / float32 p50, same model, engine and threads
    top1: float | None = None
    drop_top1: float | None = None
    front_size: bool = False  # on the Pareto front of latency and file size
    front_accuracy: bool = False  # ... of latency and top-1 drop


@dataclass(frozen=True)
class Plot:
    key: str
    title: str
    caption: str
    png: bytes

    @property
    def src(self) -> str:
        from edgekit.report.html import data_uri

        return data_uri(self.png)


def read_zoo(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A `make bench` results.json; one clear error when the file is anything else."""
    file = Path(path)
    hint = "pass the results.json that `make bench` wrote (bench/results.json)"
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read {file} as JSON ({exc})", hint) from exc
    if not isinstance(summary, dict) or not isinstance(summary.get("results"), list):
        raise ArtifactError(f"{file} is not a zoo benchmark (no 'results' list)", hint)
    if not summary["results"]:
        raise ArtifactError(f"{file} holds no results (every model failed?)", "re-run `make bench`")
    return summary


def points(summary: dict[str, Any], folder: Path) -> list[Point]:
    """Every result row as a Point, with int8/fp32, accuracy where known, and both Pareto fronts."""
    ratios = {(c["model"], c["runtime"], c["threads"]): c["ratio"] for c in summary.get("int8_vs_fp32") or []}
    models = {r["model"] for r in summary["results"]}
    accuracy = {model: _accuracy(folder / "artifacts" / model) for model in models}
    made = []
    for r in summary["results"]:
        known = accuracy[r["model"]]  # eval in this row's engine, else in the format's default one
        top1, drop = known.get((r["format"], r["runtime"])) or known.get((r["format"], None)) or (None, None)
        int8 = r["precision"] == "int8"
        made.append(
            Point(
                model=r["model"],
                format=r["format"],
                precision=r["precision"],
                runtime=r["runtime"],
                threads=r["threads"],
                p50_ms=r["p50_ms"],
                p99_ms=r["p99_ms"],
                cv=r["cv"],
                runs=r["runs"],
                size_mb=r["size_bytes"] / 1e6,
                mmacs=None if r.get("macs") is None else r["macs"] / 1e6,
                target=f"{r['target']} ({'emulated' if r['emulated'] else 'real'})",
                measured=r["measured"],
                int8_ratio=ratios.get((r["model"], r["runtime"], r["threads"])) if int8 else None,
                top1=top1,
                drop_top1=drop,
            )
        )
    size_front = pareto_front([(p.p50_ms, p.size_mb) for p in made])
    made = [replace(p, front_size=on) for p, on in zip(made, size_front, strict=True)]
    known = [i for i, p in enumerate(made) if p.drop_top1 is not None]
    acc_front = pareto_front([(made[i].p50_ms, made[i].drop_top1) for i in known])
    for i, on in zip(known, acc_front, strict=True):
        made[i] = replace(made[i], front_accuracy=on)
    return made


def _accuracy(folder: Path) -> dict[tuple[str, str | None], tuple[float, float | None]]:
    """(format, engine) and (format, None) -> (top-1, drop) from the folder's eval.json, if any."""
    evaluation = read_results(folder).get("eval") if folder.is_dir() else None
    rows = evaluation.get("formats", []) if isinstance(evaluation, dict) else []
    found: dict[tuple[str, str | None], tuple[float, float | None]] = {}
    for r in rows:
        if isinstance(r, dict) and r.get("top1") is not None:
            found.setdefault((r["format"], r.get("runtime")), (r["top1"], r.get("drop_top1")))
            found.setdefault((r["format"], None), (r["top1"], r.get("drop_top1")))
    return found


def pareto_front(values: list[tuple[float, float]]) -> list[bool]:
    """For each (a, b), lower better on both: True when no other pair is <= on both and < on one."""
    return [not any(c <= a and d <= b and (c < a or d < b) for c, d in values) for a, b in values]


def _measured_note(summary: dict[str, Any], pts: list[Point]) -> str:
    runs = [p.runs for p in pts]
    machine = summary.get("machine") or {}
    targets = ", ".join(sorted({p.target for p in pts}))
    return (
        f"p50 latency per (model, format, engine, threads) row: batch 1, {min(runs)}-{max(runs)} timed runs "
        f"each, target {targets}, on {machine.get('cpu', 'an unrecorded CPU')} "
        f"({machine.get('cores', '?')} cores)"
    )


def plots_for(summary: dict[str, Any], pts: list[Point]) -> tuple[list[Plot], list[str]]:
    """The Pareto plots the data allows, and a line for each one it does not."""
    from edgekit.report import plots

    note = _measured_note(summary, pts)
    drawn = [
        Plot(
            "pareto-size",
            "Latency vs file size",
            f"{note}; size = the model file's bytes. Joined and labelled: the Pareto front (no other row "
            "is both faster and smaller). Marker: engine; colour: precision.",
            plots.pareto([_plot_row(p, p.size_mb, p.front_size) for p in pts], "file size MB"),
        )
    ]
    known = [p for p in pts if p.drop_top1 is not None]
    if known:
        drawn.append(
            Plot(
                "pareto-accuracy",
                "Latency vs accuracy drop",
                f"{note}; top-1 drop vs PyTorch float from `edgekit eval` of each model's folder "
                f"({len(known)} of {len(pts)} rows have one). Joined: the Pareto front.",
                plots.pareto([_plot_row(p, p.drop_top1, p.front_accuracy) for p in known], "top-1 drop"),
            )
        )
        return drawn, []
    return drawn, [
        "Latency vs accuracy drop: no accuracy recorded; `edgekit eval bench/artifacts/MODEL --data IMAGES` "
        "for a model adds its rows (then `edgekit report --zoo` again)."
    ]


def _plot_row(p: Point, y: float, front: bool) -> dict[str, Any]:
    keys = ("model", "format", "precision", "runtime", "threads", "p50_ms")
    return {**{k: getattr(p, k) for k in keys}, "y": y, "front": front}


def write_dashboard(results: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the dashboard of a results.json to ``out`` (default: dashboard.html beside it; a folder:
    dashboard.html in it). Returns the page's path."""
    from edgekit.report.pages import environment

    source = Path(results)
    summary = read_zoo(source)
    page = check_path(out, "--out") if out else source.parent / PAGE
    if page.is_dir():
        page = page / PAGE
    if page.suffix.lower() not in (".html", ".htm"):
        raise UsageError(f"--out {page} is not an .html file", "pass e.g. --out bench/dashboard.html")
    pts = points(summary, source.parent)
    figures, missing = plots_for(summary, pts)
    slower = [c for c in summary.get("int8_vs_fp32") or [] if not c["int8_faster"]]
    text = (
        environment()
        .get_template("dashboard.html.j2")
        .render(
            title=f"edgekit zoo dashboard: {len({p.model for p in pts})} models, {len(pts)} measurements",
            source=source.name,
            points=pts,
            accuracy=any(p.top1 is not None for p in pts),
            figures=figures,
            missing=missing,
            slower=slower,
            compared=len(summary.get("int8_vs_fp32") or []),
            machine=summary.get("machine") or {},
            method=summary.get("method") or {},
            failed=summary.get("failed") or [],
        )
    )
    page.parent.mkdir(parents=True, exist_ok=True)
    return write_text(page, text)
