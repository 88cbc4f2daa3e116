"""The report's plots: PNGs beside report.md, matplotlib's Agg backend, every figure from a result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLOT_LATENCY = "report_latency.png"
PLOT_ACCURACY = "report_latency_accuracy.png"
PLOT_OPS = "report_op_share.png"


def draw(folder: Path, bench: dict, evaluation: Any) -> dict[str, str]:
    """The plots the results allow, written into ``folder``: {kind: file name}."""
    results = bench.get("results") or []
    if not results:
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = {"latency": _plot_latency(plt, folder, results)}
    if any((r.get("profile") or {}).get("share") for r in results):
        made["ops"] = _plot_ops(plt, folder, results)
    drops = _accuracy_drops(evaluation)
    if drops:
        made["accuracy"] = _plot_accuracy(plt, folder, results, drops)
    return made


def _label(r: dict) -> str:
    return f"{r['format']}\n{r['runtime']} x{r['threads']}"


def _plot_latency(plt: Any, folder: Path, results: list[dict]) -> str:
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(results)), 3.5))
    p50 = [r["p50_ms"] for r in results]
    ax.bar(
        range(len(results)),
        p50,
        yerr=[[0] * len(results), [r["p99_ms"] - r["p50_ms"] for r in results]],
        capsize=4,
        color="#4c72b0",
    )
    ax.set_xticks(range(len(results)), [_label(r) for r in results], fontsize=7)
    ax.set_ylabel("latency ms (p50, whisker to p99)")
    ax.set_title(
        f"batch 1, {results[0]['target']} ({'emulated' if results[0]['emulated'] else 'real'})", fontsize=9
    )
    return _save(plt, fig, folder / PLOT_LATENCY)


def _plot_ops(plt: Any, folder: Path, results: list[dict]) -> str:
    from runtimes.base import CATEGORIES

    rows = [r for r in results if (r.get("profile") or {}).get("share")]
    fig, ax = plt.subplots(figsize=(6, 0.6 * len(rows) + 1.5))
    left = [0.0] * len(rows)
    for cat in CATEGORIES:
        share = [r["profile"]["share"].get(cat, 0.0) for r in rows]
        ax.barh(range(len(rows)), share, left=left, label=cat)
        left = [a + b for a, b in zip(left, share, strict=True)]
    ax.set_yticks(range(len(rows)), [_label(r).replace("\n", " ") for r in rows], fontsize=7)
    ax.set_xlabel("share of profiled op time (ONNX Runtime profiler)")
    ax.legend(fontsize=6, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return _save(plt, fig, folder / PLOT_OPS)


def _accuracy_drops(evaluation: Any) -> dict[str, float]:
    """format -> top-1 drop, when the eval result states one (eval's own numbers, not recomputed)."""
    rows = evaluation.get("formats", []) if isinstance(evaluation, dict) else evaluation or []
    return {
        r["format"]: r["drop_top1"]
        for r in rows
        if isinstance(r, dict) and r.get("drop_top1") is not None and "format" in r
    }


def _plot_accuracy(plt: Any, folder: Path, results: list[dict], drops: dict[str, float]) -> str:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in results:
        if r["format"] in drops:
            ax.scatter(r["p50_ms"], drops[r["format"]])
            ax.annotate(_label(r).replace("\n", " "), (r["p50_ms"], drops[r["format"]]), fontsize=6)
    ax.set_xlabel("p50 latency ms")
    ax.set_ylabel("top-1 drop vs PyTorch float")
    return _save(plt, fig, folder / PLOT_ACCURACY)


def _save(plt: Any, fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
