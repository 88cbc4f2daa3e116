"""The report's plots: matplotlib's Agg backend, every figure from a stored result.

report.md's plots are PNG files beside it (:func:`draw`); the HTML pages' other figures are PNG
bytes put inline into the page (:func:`int8_vs_fp32`, :func:`sqnr_along`, :func:`pareto`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLOT_LATENCY = "report_latency.png"
PLOT_ACCURACY = "report_latency_accuracy.png"
PLOT_OPS = "report_op_share.png"
ENGINE_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DPI = 110


def draw(folder: Path, bench: dict, evaluation: Any) -> dict[str, str]:
    """The plots the results allow, written into ``folder``: {kind: file name}."""
    results = bench.get("results") or []
    if not results:
        return {}
    plt = _pyplot()
    made = {"latency": _plot_latency(plt, folder, results)}
    if any((r.get("profile") or {}).get("share") for r in results):
        made["ops"] = _plot_ops(plt, folder, results)
    drops = accuracy_drops(evaluation)
    if any(_drop(drops, r) is not None for r in results):
        made["accuracy"] = _plot_accuracy(plt, folder, results, drops)
    return made


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
    ax.set_xlabel("share of profiled op time (each engine's profiler)")
    ax.legend(fontsize=6, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    return _save(plt, fig, folder / PLOT_OPS)


def accuracy_drops(evaluation: Any) -> dict[tuple[str, str | None], float]:
    """(format, engine) -> top-1 drop, and (format, None) for the format's first row, when the eval
    result states one (eval's own numbers, not recomputed)."""
    rows = evaluation.get("formats", []) if isinstance(evaluation, dict) else evaluation or []
    drops: dict[tuple[str, str | None], float] = {}
    for r in rows:
        if isinstance(r, dict) and r.get("drop_top1") is not None and "format" in r:
            drops.setdefault((r["format"], r.get("runtime")), r["drop_top1"])
            drops.setdefault((r["format"], None), r["drop_top1"])
    return drops


def _drop(drops: dict[tuple[str, str | None], float], r: dict) -> float | None:
    """The drop eval measured in this row's engine, else in the format's default engine."""
    return drops.get((r["format"], r["runtime"]), drops.get((r["format"], None)))


def _plot_accuracy(plt: Any, folder: Path, results: list[dict], drops: dict) -> str:
    """One point per (format, engine, threads): p50 latency against the top-1 drop."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    engines = sorted({r["runtime"] for r in results})
    threads = sorted({r["threads"] for r in results})
    colors = plt.get_cmap("tab10")
    for r in results:
        drop = _drop(drops, r)
        if drop is None:
            continue
        ax.scatter(
            r["p50_ms"],
            drop,
            marker=ENGINE_MARKERS[engines.index(r["runtime"]) % len(ENGINE_MARKERS)],
            color=colors(threads.index(r["threads"]) % 10),
            s=36,
            zorder=3,
        )
        ax.annotate(
            f"{r['format']} {r['runtime']} x{r['threads']}",
            (r["p50_ms"], drop),
            fontsize=6,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.axhline(0, color="#999", linewidth=0.8)
    _legend(ax, engines, [f"{t} thread(s)" for t in threads], colors)
    ax.set_xlabel("p50 latency ms (batch 1)")
    ax.set_ylabel("top-1 drop vs PyTorch float (points)")
    ax.grid(alpha=0.3)
    return _save(plt, fig, folder / PLOT_ACCURACY)


def _legend(
    ax: Any, engines: Sequence[str], coloured: Sequence[str], colors: Any, front: bool = False
) -> None:
    """Marker = engine, colour = ``coloured[i]`` (threads or precision)."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker=ENGINE_MARKERS[i % len(ENGINE_MARKERS)], color="#555", linestyle="", label=e)
        for i, e in enumerate(engines)
    ] + [
        Line2D([], [], marker="o", color=colors(i % 10), linestyle="", label=c)
        for i, c in enumerate(coloured)
    ]
    if front:
        handles.append(Line2D([], [], color="#333", label="Pareto front"))
    ax.legend(handles=handles, fontsize=7, loc="best")


def _save(plt: Any, fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def _png(plt: Any, fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _ops_text(ops: list[dict[str, Any]], limit: int = 3) -> str:
    """The ops that kept int8 from winning, short enough for an axis label."""
    shown = [f"{o['op']} x{o['count']}" for o in ops if not o["op"].startswith("QuantizeLinear+")]
    more = f" +{len(shown) - limit}" if len(shown) > limit else ""
    return "\n".join(shown[:limit]) + more


def int8_vs_fp32(rows: list[dict[str, Any]]) -> bytes:
    """float32 and int8 p50 side by side per (engine, threads); under a pair where int8 did not
    win, the ops of the int8 file that ran off the int8 fast path."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.5 * len(rows) + 1.5), 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["fp32_p50_ms"] for r in rows], 0.4, label="float32", color="#4c72b0")
    ax.bar([i + 0.2 for i in x], [r["int8_p50_ms"] for r in rows], 0.4, label="int8", color="#dd8452")
    for i, r in enumerate(rows):
        top = max(r["fp32_p50_ms"], r["int8_p50_ms"])
        ax.annotate(f"x{r['ratio']:.2f}", (i, top), ha="center", xytext=(0, 3), textcoords="offset points")
    labels = []
    for r in rows:
        label = f"{r['runtime']} x{r['threads']}"
        if not r["int8_faster"]:
            ops = _ops_text(r.get("off_fast_path") or [])
            label += "\n" + (f"off int8 path:\n{ops}" if ops else "all ops int8")
        labels.append(label)
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("p50 latency ms (batch 1)")
    ax.margins(y=0.15)
    ax.legend(fontsize=8)
    return _png(plt, fig)


def sqnr_along(analysis: dict[str, Any]) -> bytes:
    """Per-layer weight SQNR (per tensor, per channel) in network order and, when the analysis ran
    images, the logits SQNR with only that layer quantised (a panel of its own: its scale is
    another); depthwise layers shaded in both."""
    plt = _pyplot()
    layers = analysis["layers"]
    x = list(range(len(layers)))
    logits = [layer.get("output_sqnr_per_channel") for layer in layers]
    panels = 2 if any(v is not None for v in logits) else 1
    fig, axes = plt.subplots(panels, 1, figsize=(9, 2.4 * panels + 1), sharex=True, squeeze=False)
    depthwise = [i for i, layer in enumerate(layers) if layer["kind"] == "depthwise"]
    for ax in axes[:, 0]:
        for i in depthwise:
            ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.12, linewidth=0)
        ax.grid(alpha=0.3)
    top = axes[0, 0]
    per_tensor = [layer["weight_sqnr_per_tensor"] for layer in layers]
    top.plot(x, per_tensor, ".-", color="tab:gray", label="per tensor")
    top.plot(
        x, [layer["weight_sqnr_per_channel"] for layer in layers], ".-", color="tab:blue", label="per channel"
    )
    top.scatter(
        depthwise,
        [per_tensor[i] for i in depthwise],
        marker="v",
        color="tab:red",
        zorder=3,
        label="depthwise",
    )
    top.set_ylabel(f"weights, {analysis['bits']}-bit\nSQNR dB")
    top.legend(fontsize=7, ncols=3, loc="lower left")
    if panels == 2:
        bottom = axes[1, 0]
        shown = [float("nan") if v is None else v for v in logits]  # None: identical logits
        bottom.plot(x, shown, "o", color="tab:green", markersize=3, label="only this layer quantised")
        bottom.set_ylabel("logits SQNR dB")
        bottom.legend(fontsize=7, loc="lower left")
    axes[-1, 0].set_xlabel(f"layer in network order (of {len(layers)} conv/linear layers)")
    return _png(plt, fig)


def pareto(rows: list[dict[str, Any]], y_label: str) -> bytes:
    """p50 latency (x, log) against ``y`` for every row; the rows marked ``front`` (the Pareto
    front: no other row lower on both axes) joined and labelled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.2))
    engines = sorted({r["runtime"] for r in rows})
    precisions = sorted({r["precision"] for r in rows})
    colors = plt.get_cmap("tab10")
    for r in rows:
        ax.scatter(
            r["p50_ms"],
            r["y"],
            marker=ENGINE_MARKERS[engines.index(r["runtime"]) % len(ENGINE_MARKERS)],
            color=colors(precisions.index(r["precision"]) % 10),
            alpha=0.75,
            s=30,
        )
    front = sorted((r for r in rows if r["front"]), key=lambda r: r["p50_ms"])
    ax.step([r["p50_ms"] for r in front], [r["y"] for r in front], where="post", color="#333", linewidth=1)
    for i, r in enumerate(front):
        ax.annotate(
            f"{r['model']} {r['format']} {r['runtime']} x{r['threads']}",
            (r["p50_ms"], r["y"]),
            fontsize=6,
            xytext=(4, 4 if i % 2 else -9),  # neighbours on the front alternate above and below
            textcoords="offset points",
        )
    _legend(ax, engines, precisions, colors, front=True)
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelsize=8)
    ax.set_xlabel("p50 latency ms (batch 1, log scale)")
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3, which="both")
    return _png(plt, fig)
