"""report.md (+ report.html) for an artifact folder: reads the manifest and results, computes nothing.

Every figure carries how it was measured (runtime, threads, runs, emulated or real), copied from
the result that produced it. Plots are PNGs made with matplotlib's Agg backend beside the report.
"""

from __future__ import annotations

import html as html_lib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError
from edgekit.manifest import check_path, read_manifest, read_results, stale_files, write_text

PLOT_LATENCY = "report_latency.png"
PLOT_ACCURACY = "report_latency_accuracy.png"
PLOT_OPS = "report_op_share.png"


@dataclass
class Written:
    """What ``write_report`` wrote, and the files of the folder found stale (edited since export)."""

    path: Path
    stale: list[str] = field(default_factory=list)


def write_report(
    artifact_dir: str | os.PathLike[str], html: bool = False, out_dir: str | os.PathLike[str] | None = None
) -> Written:
    """Write ``report.md`` (and ``report.html``) into ``out_dir`` (default: the folder itself)."""
    folder = Path(artifact_dir)
    manifest = read_manifest(folder, check_hashes=False)
    out = check_path(out_dir, "--out") if out_dir else folder
    if not os.access(out if out.exists() else out.parent, os.W_OK):
        raise ArtifactError(f"{out} is read-only: the report cannot be written there", "pass --out DIR")
    out.mkdir(parents=True, exist_ok=True)
    stale = stale_files(folder, manifest)
    results = {**manifest.get("results", {}), **read_results(folder)}
    bench = results.get("bench") or {}
    plots = _plots(out, bench, results.get("eval"))
    text = "\n".join(_sections(manifest, bench, results.get("eval"), plots, stale)) + "\n"
    path = write_text(out / "report.md", text)
    if html:
        write_text(out / "report.html", to_html(text, manifest.get("model", {}).get("name", folder.name)))
    return Written(path, [f"{fmt} ({manifest['files'][fmt]['path']})" for fmt in stale])


def _sections(
    manifest: dict, bench: dict, evaluation: Any, plots: dict[str, str], stale: list[str]
) -> list[str]:
    model = manifest.get("model", {})
    lines = [f"# {model.get('name', 'model')}", ""]
    if stale:
        names = ", ".join(f"{fmt} ({manifest['files'][fmt]['path']})" for fmt in stale)
        lines += [
            f"**Stale: {names} no longer match the sha256 recorded at export; the figures below "
            "describe the exported files, not these. Re-run `edgekit export`.**",
            "",
        ]
    lines += [f"- {k}: {v}" for k, v in model.items() if not isinstance(v, dict | list)]
    lines += [
        "",
        "## Files",
        "",
        "| format | file | size (bytes) | precision | layout | sha256 |",
        "|---|---|---:|---|---|---|",
    ]
    for fmt, e in manifest.get("files", {}).items():
        lines.append(
            f"| {fmt} | {e['path']} | {e['size']:,} | {e.get('precision', '')} | {e.get('layout', '')} "
            f"| `{e['sha256'][:12]}` |"
        )
    lines += [
        "",
        *int8_section(manifest),
        *_verification(manifest),
        *_accuracy(evaluation, plots),
        *_latency(bench, plots),
        *_int8_vs_fp32(bench),
        *_profile(bench, plots),
        *_machine(bench),
    ]
    return lines


def random_weights_note(manifest: dict) -> str:
    """Said wherever int8 figures of a randomly initialised network are shown."""
    weights = manifest.get("model", {}).get("weights") or {}
    if not str(weights.get("init", "")).startswith("random") or "calibration" not in manifest:
        return ""
    return (
        " RANDOM WEIGHTS: the int8 rows describe the quantiser on an untrained network, not a model's "
        "accuracy; export with --pretrained (or your own weights) for figures that mean something."
    )


def int8_section(manifest: dict) -> list[str]:
    """How the int8 files were made: calibration data, range method, and each remedy with what it
    changed (from ``manifest["calibration"]``); nothing when the folder has no int8 files."""
    calib = manifest.get("calibration")
    if not calib:
        return []
    weights = "per-channel" if calib.get("per_channel") else "per-tensor"
    acts = "symmetric" if calib.get("symmetric_activations") else "asymmetric"
    lines = [
        "## int8",
        "",
        f"- calibration: {calib['source']}, {calib['samples']} samples (seed {calib.get('seed', 0)}), "
        f"ranges: {calib['method']}; weights int8 symmetric {weights}, activations {acts}",
    ]
    if random_weights_note(manifest):
        lines.append(f"- **{random_weights_note(manifest).strip()}**")
    remedies = calib.get("remedies") or []
    if not remedies:
        lines.append(
            "- remedies: none (stream equalisation and bias correction were switched off; "
            "`--equalize` and `--gptq` add more)"
        )
    for remedy in remedies:
        formats = f" ({', '.join(remedy['formats'])})" if remedy.get("formats") else ""
        lines.append(f"- remedy {remedy['name']}{formats}: {_remedy_change(remedy)}")
    rewritten = (calib.get("rewrites") or {}).get("rewritten") or {}
    if rewritten:
        formulas = calib["rewrites"].get("formulation", {})
        shown = ", ".join(f"{op} x{n} as {formulas.get(op, '?')}" for op, n in rewritten.items())
        lines.append(f"- rewritten for the int8 fast paths: {shown}")
    ranges = calib.get("activation_ranges") or {}
    counts = ", ".join(f"{fmt} {len(r)}" for fmt, r in ranges.items())
    if counts:
        lines.append(f"- activation ranges recorded in manifest.json: {counts} tensors")
    return [*lines, ""]


def _remedy_change(remedy: dict) -> str:
    if remedy["name"] == "cross_layer_equalize":
        spread = ""
        if remedy.get("spread_before") is not None and remedy.get("spread_after") is not None:
            spread = (
                f"; median channel-range spread of the first convs {remedy['spread_before']:.3g}x -> "
                f"{remedy['spread_after']:.3g}x"
            )
        return (
            f"{remedy['pairs']} conv pairs in {remedy['sweeps']} sweeps, scales "
            f"{remedy['scale_min']:.3g}..{remedy['scale_max']:.3g} (ReLU6: {remedy['relu6']}){spread}"
        )
    if remedy["name"] == "equalize_streams":
        if not remedy["streams"]:
            return "no linear stream in this network (nothing changed)"
        return (
            f"{remedy['streams']} streams ({remedy['tensors']} tensors) rescaled per channel "
            f"(alpha {remedy['alpha']}); worst channel-range spread (max/median) "
            f"{remedy['spread_before_max']:.3g}x -> {remedy['spread_after_max']:.3g}x"
        )
    if remedy["name"] == "gptq":
        grid = "per-channel" if remedy["per_channel"] else "per-tensor"
        pairs = f" (same-sign pairs <= {remedy['pair_limit']})" if remedy.get("pair_limit") else ""
        return (
            f"{remedy['layers']} layers rounded onto the {remedy['weight_bits']}-bit {grid} grid{pairs} "
            "by GPTQ; "
            f"layer output error on the calibration data vs nearest rounding: median "
            f"{remedy['error_ratio_median']:.2f}x, worst {remedy['error_ratio_max']:.2f}x"
        )
    if remedy["name"] == "bias_correct":
        return (
            f"{remedy['layers']} layers' biases shifted by the expected int8 weight error on the "
            f"{remedy.get('grid', '8-bit')} grid "
            f"(mean |shift| {remedy['mean_abs_shift']:.3g}, max {remedy['max_abs_shift']:.3g})"
        )
    return ", ".join(f"{k}={v}" for k, v in remedy.items() if k != "name")


def _verification(manifest: dict) -> list[str]:
    rows = [(fmt, e["verification"]) for fmt, e in manifest.get("files", {}).items() if "verification" in e]
    rows += [
        (fmt, v)
        for fmt, v in (manifest.get("results", {}).get("verification") or {}).items()
        if isinstance(v, dict)
    ]
    if not rows:
        return ["## Verification", "", "No verification recorded.", ""]
    lines = ["## Verification against PyTorch", ""]
    for fmt, v in rows:
        shown = ", ".join(f"{k}={v[k]}" for k in v if k != "measured" and not isinstance(v[k], dict | list))
        figures = "; ".join(
            _figures(kind, v[kind]) for kind in ("random", "images") if isinstance(v.get(kind), dict)
        )
        lines.append(
            f"- **{fmt}**: {shown}"
            + (f"; {figures}" if figures else "")
            + (f" — measured: {v['measured']}" if v.get("measured") else "")
        )
    return [*lines, *fp16_cost(manifest), ""]


def _figures(kind: str, fig: dict) -> str:
    return f"{kind}: max rel err {fig['max_rel_err']:.2e}, cosine min {fig['cosine_min']:.6f}"


def fp16_cost(manifest: dict) -> list[str]:
    """What fp16 weights cost against float32: recorded, not gated (it depends on the network;
    the gate compares fp16 files with PyTorch running the same fp16 weights)."""
    lines = []
    for fmt, entry in manifest.get("files", {}).items():
        cost = entry.get("verification", {}).get("vs_float32")
        if cost:
            shown = "; ".join(_figures(kind, cost[kind]) for kind in ("random", "images") if kind in cost)
            lines.append(f"- {fmt} against PyTorch float32 (the fp16 cost, not gated): {shown}")
    return ["", *lines] if lines else []


def _accuracy(evaluation: Any, plots: dict[str, str]) -> list[str]:
    if not evaluation:
        return ["## Accuracy", "", "Not evaluated (run `edgekit eval DIR`).", ""]
    rows = evaluation.get("formats", []) if isinstance(evaluation, dict) else evaluation
    lines = ["## Accuracy", ""]
    if isinstance(evaluation, dict):
        lines += [
            f"- {k}: {v}" for k, v in (evaluation.get("measured") or {}).items() if not isinstance(v, dict)
        ]
        lines.append("")
    if rows:
        keys = [k for k in rows[0] if not isinstance(rows[0][k], dict | list)]
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    if PLOT_ACCURACY in plots.values():
        lines += [
            "",
            f"![latency vs accuracy drop]({PLOT_ACCURACY})",
            "",
            "*p50 latency (x, from the Latency table's runs) against the top-1 drop vs PyTorch float.*",
        ]
    return [*lines, ""]


def _latency(bench: dict, plots: dict[str, str]) -> list[str]:
    results = bench.get("results") or []
    if not results:
        return ["## Latency", "", "Not benchmarked (run `edgekit bench DIR`).", ""]
    lines = [
        "## Latency",
        "",
        "| format | runtime | threads | p50 ms | p90 ms | p99 ms | CV | GMAC/s | efficiency | RSS MB "
        "| measured |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        cv = f"{r['cv']:.1%}" + (" (unstable)" if r.get("unstable") else "")
        eff = "" if r.get("efficiency") is None else f"{r['efficiency']:.1%}"
        lines.append(
            f"| {r['format']} | {r['runtime']} | {r['threads']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} "
            f"| {r['p99_ms']:.3f} | {cv} | {_fmt(r.get('gmacs_per_s'))} | {eff} | "
            f"{_fmt(r.get('rss_delta_mb'))} | {r['measured']} |"
        )
    method = bench.get("method", {})
    lines += ["", "How measured: " + "; ".join(f"{k}: {v}" for k, v in method.items()) + "."]
    for s in bench.get("skipped", []):
        lines.append(f"- skipped {s['runtime']} ({s['format'] or 'any format'}): {s['reason']}")
    if PLOT_LATENCY in plots.values():
        lines += [
            "",
            f"![latency per format and runtime]({PLOT_LATENCY})",
            "",
            "*Bars: p50; whiskers: p50 to p99; same runs as the table (runtime, threads, runs in the "
            "measured column).*",
        ]
    return [*lines, ""]


def _int8_vs_fp32(bench: dict) -> list[str]:
    rows = bench.get("int8_vs_fp32") or []
    if not rows:
        return []
    lines = [
        "## int8 vs float32",
        "",
        "| runtime | threads | float32 p50 ms | int8 p50 ms | int8/fp32 | why int8 is not faster |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for c in rows:
        lines.append(
            f"| {c['runtime']} | {c['threads']} | {c['fp32_p50_ms']:.3f} | {c['int8_p50_ms']:.3f} "
            f"| {c['ratio']:.2f} | {c.get('why', '')} |"
        )
    lines += ["", "Same runs as the Latency table (p50 of each; measured column there)."]
    return [*lines, ""]


def _profile(bench: dict, plots: dict[str, str]) -> list[str]:
    profiled = [r for r in bench.get("results") or [] if r.get("profile")]
    if not profiled:
        return []
    lines = ["## Where the time goes", ""]
    for r in profiled:
        p = r["profile"]
        head = f"**{r['format']} / {r['runtime']}, {r['threads']} thread(s)** — {p['source']}"
        lines.append(head)
        if p.get("share"):
            lines.append("  - time share: " + ", ".join(f"{c} {s:.0%}" for c, s in p["share"].items()))
        if "p50_ms_xnnpack" in p:
            lines.append(
                f"  - whole graph p50: {p['p50_ms_xnnpack']} ms with XNNPACK, {p['p50_ms_builtin']} ms "
                f"with the builtin kernels; {p['delegated_ops']}/{p['total_ops']} ops delegated"
            )
        for s in p.get("slow_path", []):
            ms = "" if s.get("ms") is None else f", {s['ms']} ms per run"
            lines.append(f"  - off the fast path: {s['op']} x{s['count']}{ms} — {s['why']}")
        lines.append("")
    if PLOT_OPS in plots.values():
        lines += [
            "",
            f"![op-type time share]({PLOT_OPS})",
            "",
            "*ONNX Runtime profiler, per-node median over the profiled runs (LiteRT has no per-op timer).*",
        ]
    return [*lines, ""]


def _machine(bench: dict) -> list[str]:
    m = bench.get("machine")
    if not m:
        return []
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    return [
        "## Machine",
        "",
        f"- {m['cpu']} ({m['arch']}), {m['cores']} cores, features: {' '.join(m.get('features', []))}",
        f"- int8 path: {m.get('int8_path', 'unknown')}",
        f"- {m['os']}, Python {m['python']}",
        f"- {versions}",
        f"- target: {bench.get('target', 'local')}",
        "",
    ]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- plots -------------------------------------------------------------------------------------


def _plots(folder: Path, bench: dict, evaluation: Any) -> dict[str, str]:
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
    from edgekit.profiling import CATEGORIES

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


# --- html --------------------------------------------------------------------------------------


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
