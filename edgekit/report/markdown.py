"""report.md: one renderer for every report of a folder (the export's and `edgekit report`'s).

It reads the manifest and the stored results and computes nothing: every figure carries how it
was measured (engine, threads, runs, emulated or real, CPU), copied from the result that made it.
"""

from __future__ import annotations

from typing import Any

from edgekit.manifest import Manifest
from edgekit.report.plots import PLOT_ACCURACY, PLOT_LATENCY, PLOT_OPS


def render(manifest: Manifest, evaluation: Any, bench: dict, plots: dict[str, str], stale: list[str]) -> str:
    """The whole report.md text."""
    lines = [
        *_header(manifest, stale),
        *_files(manifest),
        *int8_section(manifest),
        *_verification(manifest),
        *_accuracy(evaluation, plots),
        *_latency(bench, plots),
        *_int8_vs_fp32(bench),
        *_profile(bench, plots),
        *_ops(manifest),
        *_machine(bench),
    ]
    return "\n".join(lines) + "\n"


def _header(manifest: Manifest, stale: list[str]) -> list[str]:
    model, pre = manifest.model, manifest.preprocess
    lines = [f"# {model.get('name', 'model')}", ""]
    if stale:
        names = ", ".join(f"{fmt} ({manifest.files[fmt].path})" for fmt in stale)
        lines += [
            f"**Stale: {names} no longer match the sha256 recorded at export; the figures below "
            "describe the exported files, not these. Re-run `edgekit export`.**",
            "",
        ]
    args = ", ".join(f"{k}={v}" for k, v in (model.get("args") or {}).items() if v is not None)
    lines += [f"- source: {model.get('source', '')}; args: {args}"]
    if "params" in model:
        lines.append(
            f"- params: {model['params']:,}; MACs: {model['macs']:,} at {manifest.input.get('shape')}"
        )
    if pre:
        lines.append(
            f"- preprocess: resize {pre.get('resize')}, centre crop {pre.get('resolution')}, "
            f"mean {pre.get('mean')}, std {pre.get('std')}"
        )
    if model.get("weights"):
        lines.append("- weights: " + ", ".join(f"{v}" for v in model["weights"].values()))
    note = random_weights_note(manifest)
    return [*lines, *([f"- **{note.strip()}**"] if note else []), ""]


def _files(manifest: Manifest) -> list[str]:
    lines = [
        "## Files",
        "",
        "| format | file | size | sha256 | precision | layout | max rel err (random / photos) | cosine min "
        "| top-1 agree |",
        "|---|---|---:|---|---|---|---|---:|---:|",
    ]
    for fmt, e in manifest.files.items():
        rnd, img = e.verification.get("random", {}), e.verification.get("images", {})
        cos = min(rnd.get("cosine_min", 1.0), img.get("cosine_min", 1.0)) if e.verification else None
        agree = img.get("top1_agreement")
        lines.append(
            f"| {fmt} | {e.path} | {e.size / 1e6:.2f} MB | `{e.sha256[:12]}` | {e.precision} | {e.layout} | "
            f"{_sci(rnd.get('max_rel_err'))} / {_sci(img.get('max_rel_err'))} | "
            f"{'—' if cos is None else f'{cos:.6f}'} | {'—' if agree is None else f'{agree:.0%}'} |"
        )
    return [*lines, ""]


def _ops(manifest: Manifest) -> list[str]:
    lines = ["## Ops", ""]
    for fmt, entry in manifest.files.items():
        delegation = entry.info.get("delegation")
        if delegation:  # ExecuTorch: what the XNNPACK partitioner left to the portable kernels
            left = ", ".join(f"{op} x{n}" for op, n in delegation["portable_by_op"].items()) or "none"
            lines.append(
                f"- **{fmt}**: {delegation['xnnpack_subgraphs']} XNNPACK subgraph(s); "
                f"ops left to ExecuTorch's portable kernels: {left}"
            )
        ops = entry.info.get("ops")
        if not ops:
            continue
        lines.append(
            f"- **{fmt}** ({sum(ops.values())} ops): " + ", ".join(f"{op} x{n}" for op, n in ops.items())
        )
        xnn = entry.info.get("xnnpack")
        if xnn and xnn["fully_delegated"]:
            lines.append(
                f"  - XNNPACK takes every op ({xnn['delegated_ops']}/{xnn['ops']}, "
                f"{xnn['partitions']} partition)"
            )
        elif xnn:
            left = ", ".join(f"{op} x{n}" for op, n in xnn["not_delegated"].items())
            lines.append(
                f"  - XNNPACK takes {xnn['delegated_ops']}/{xnn['ops']} ops in {xnn['partitions']} "
                f"partitions; off the fast path: {left}"
            )
    return [*lines, ""] if len(lines) > 2 else []


def _sci(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


def random_weights_note(manifest: Manifest) -> str:
    """Said wherever int8 figures of a randomly initialised network are shown."""
    weights = manifest.model.get("weights") or {}
    if not str(weights.get("init", "")).startswith("random") or manifest.calibration is None:
        return ""
    return (
        " RANDOM WEIGHTS: the int8 rows describe the quantiser on an untrained network, not a model's "
        "accuracy; export with --pretrained (or your own weights) for figures that mean something."
    )


def int8_section(manifest: Manifest) -> list[str]:
    """How the int8 files were made: calibration data, range method, and each remedy with what it
    changed (from ``manifest.calibration``); nothing when the folder has no int8 files."""
    calib = manifest.calibration
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


def _verification(manifest: Manifest) -> list[str]:
    """How every file was checked against PyTorch, and where an int8 file computes its definition."""
    from edgekit.verify import GATES, method

    used = {e.precision for e in manifest.files.values()}
    gates = "; ".join(
        f"{p}: " + ", ".join(f"{k} {v}" for k, v in g.items()) for p, g in GATES.items() if p in used
    )
    lines = [
        "## Verification against PyTorch",
        "",
        f"Method: {method(list(manifest.files))}; max rel err = max|out - ref| / max|ref|. "
        f"Gates: {gates or 'none'} "
        "(int8 files are recorded, not gated: `edgekit eval` judges their accuracy).",
        *fp16_cost(manifest),
    ]
    for fmt, entry in manifest.files.items():
        exact = entry.info.get("exactness")
        if exact:
            paths = exact.get("paths", {})
            exact_on = [p for p, verdict in paths.items() if verdict == "exact"]
            host = exact.get("host") or {}
            lines.append(
                f"- **{fmt}** exact on {len(exact_on)} of {len(paths)} CPU int8 paths "
                f"({', '.join(exact_on)}): same-sign weight pairs up to {exact.get('max_pair_sum')} "
                f"(limit {exact.get('pair_limit')}) in {exact.get('layers_reading_pairs')} layers"
                + (
                    f"; node by node on {host.get('cpu')} ({host.get('int8_path')}): {host.get('nodes')} "
                    f"nodes within {host.get('max_lsb')} LSB of the QDQ definition"
                    if host
                    else ""
                )
            )
    return [*lines, ""]


def _figures(kind: str, fig: dict) -> str:
    return f"{kind}: max rel err {fig['max_rel_err']:.2e}, cosine min {fig['cosine_min']:.6f}"


def fp16_cost(manifest: Manifest) -> list[str]:
    """What fp16 weights cost against float32: recorded, not gated (it depends on the network;
    the gate compares fp16 files with PyTorch running the same fp16 weights)."""
    lines = []
    for fmt, entry in manifest.files.items():
        cost = entry.verification.get("vs_float32")
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
    if plots.get("accuracy"):
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
    if plots.get("latency"):
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
    if plots.get("ops"):
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
