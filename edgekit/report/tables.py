"""Rich tables for the CLI's human output (``--json`` is the machine output)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from edgekit import machine
from edgekit.manifest import Manifest

# A log file or a pipe is not an 80-column terminal: lay tables out at their natural width.
console = Console(width=None if sys.stdout.isatty() else 200)
KEY_COLUMNS = 2  # the first columns name what a row is (model, format, runtime): never cut


def render(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None
) -> None:
    """Print one table; numbers right-aligned, ``None`` as an em dash; the key columns are never
    shortened (other text folds onto more lines rather than being cut)."""
    table = Table(title=title, caption=caption, caption_justify="left")
    raw = [list(r) for r in rows]
    cells = [["—" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for v in r] for r in raw]
    for i, col in enumerate(columns):
        numeric = bool(cells) and all(isinstance(r[i], int | float) or r[i] is None for r in raw)
        width = max([len(col), *(len(r[i]) for r in cells)])
        if numeric:  # a number is never folded or cut
            table.add_column(col, justify="right", no_wrap=True, min_width=width)
        elif i < KEY_COLUMNS:
            table.add_column(col, no_wrap=True, min_width=width)
        else:
            table.add_column(col, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)


def print_models(rows: list[dict[str, Any]]) -> None:
    """The zoo: one row per model at its default width and resolution (papers: --json)."""
    render(
        "edgekit model zoo",
        ["model", "params (M)", "MACs (M)", "res", "pretrained"],
        [
            [
                r["name"],
                round(r["params"] / 1e6, 3),
                round(r["macs"] / 1e6, 1),
                r["resolution"],
                "yes" if r["pretrained"] else "no",
            ]
            for r in rows
        ],
        caption="Counted, not measured: MACs = conv + linear multiply-accumulates at batch 1, bias excluded "
        "(torch FlopCounterMode). Per-layer detail: edgekit info NAME.",
    )


def print_info(result: dict[str, Any]) -> None:
    """Per-layer table with totals, then the split by layer kind."""
    side = result["resolution"]
    options = "".join(f", {k}={v}" for k, v in result["options"].items())
    table = Table(
        title=f"{result['model']} (width {result['width']}, input 3x{side}x{side}{options})",
        caption=f"Counted, not measured. {result['convention']}.",
        caption_justify="left",
    )
    table.add_column("layer", overflow="fold", min_width=24)  # qualified names are the point: never cut
    table.add_column("kind")
    table.add_column("output")
    for col in ("params", "MACs", "memory access"):
        table.add_column(col, justify="right")
    for layer in result["layers"]:
        shape = "x".join(map(str, layer["out_shape"][1:])) or "—"  # batch (1) left out
        numbers = (layer["params"], layer["macs"], layer["memory_access"])
        table.add_row(layer["name"], layer["kind"], shape, *(f"{v:,}" for v in numbers))
    table.add_section()
    table.add_row("total", "", "", *(f"{result[k]:,}" for k in ("params", "macs", "mac_memory")))
    console.print(table)
    render(
        "by kind",
        ["kind", "layers", "params", "MACs", "MAC share", "memory access"],
        [
            [kind, k["layers"], k["params"], k["macs"], f"{k['share']:.1%}", k["memory_access"]]
            for kind, k in result["by_kind"].items()
        ],
    )


def xnnpack_coverage(info: dict[str, Any]) -> str | None:
    """What XNNPACK takes of a file: TFLite's delegated ops, or ExecuTorch's partitioning."""
    xnn, delegation = info.get("xnnpack"), info.get("delegation")
    if xnn:
        if xnn["fully_delegated"]:
            return "all ops"
        return f"{xnn['delegated_ops']}/{xnn['ops']} (not: {', '.join(xnn['not_delegated'])})"
    if delegation:
        if delegation["all_delegated"]:
            return f"all ops ({delegation['xnnpack_subgraphs']} subgraph)"
        return f"portable: {', '.join(f'{op} x{n}' for op, n in delegation['portable_by_op'].items())}"
    return None


def print_export(manifest: Manifest) -> None:
    """One row per written file: size, layout, verification against PyTorch, XNNPACK coverage."""
    from edgekit.report import random_weights_note
    from edgekit.verify import method

    rows = []
    for fmt, entry in manifest.files.items():
        ver = entry.verification
        worst = max((ver[k]["max_rel_err"] for k in ("random", "images") if k in ver), default=None)
        cosine = min((ver[k]["cosine_min"] for k in ("random", "images") if k in ver), default=None)
        agree = ver.get("images", {}).get("top1_agreement")
        xnn_text = xnnpack_coverage(entry.info)
        rows.append(
            [
                fmt,
                f"{entry.size / 1e6:.2f} MB",
                entry.layout,
                None if worst is None else f"{worst:.1e}",
                None if cosine is None else f"{cosine:.6f}",
                None if agree is None else f"{agree:.0%}",
                xnn_text,
            ]
        )
    model = manifest.model
    render(
        f"{model['name']} -> {manifest.folder or ''}",
        ["format", "size", "layout", "max rel err", "cosine min", "top-1 agree", "XNNPACK"],
        rows,
        caption=f"{model['params']:,} params, {model['macs']:,} MACs at {manifest.input['shape']}. "
        f"Verified: {method(list(manifest.files))}; max rel err = max|out-ref| / max|ref|."
        + random_weights_note(manifest),
    )


def print_eval(result: dict[str, Any]) -> None:
    measured = result["measured"]
    labelled = measured["labelled"]
    columns = [
        "format",
        "runtime",
        *(["top-1 %", "top-5 %", "drop"] if labelled else []),
        "agree top-1 %",
        "top-5 overlap %",
        "cosine",
        "SQNR dB",
        "worst image",
    ]
    rows = [
        [
            r["format"],
            r["runtime"],
            *([r["top1"], r["top5"], r["drop_top1"]] if labelled else []),
            r["agreement_top1"],
            r["top5_overlap"],
            r["cosine"],
            r["sqnr_db"],
            r["worst"][0]["image"] if r["worst"] else None,
        ]
        for r in result["formats"]
    ]
    caption = (
        f"{measured['images']} images from {measured['data']}; {measured['threads']} thread(s), "
        f"target {measured['target']}; agreement/cosine/SQNR vs {measured['reference']}"
        f"{_int8_cpu(result['formats'])}"
        + (f". {measured['labels_note']}" if measured.get("labels_note") else "")
        + ("; SQNR — = identical outputs" if any(r["sqnr_db"] is None for r in result["formats"]) else "")
    )
    render("Accuracy vs PyTorch float", columns, rows, caption)
    if result.get("classes"):
        print_classes(result)


def print_classes(result: dict[str, Any]) -> None:
    """Top-1 per class and format (all classes up to 50, else the float reference's worst)."""
    formats = list(result["classes"][0]["top1"])  # the rows' keys: format, or "format (engine)"
    rows = [[c["class"], c["images"], *(c["top1"][f] for f in formats)] for c in result["classes"]]
    caption = f"{result['measured']['per_class']}; an image's class is its folder's name"
    render("Top-1 % per class", ["class", "images", *formats], rows, caption)


def _int8_cpu(rows: list[dict[str, Any]]) -> str:
    """Where the int8 rows ran: an int8 figure is a figure of one CPU's int8 kernels."""
    seen = {(r.get("cpu"), r["int8_path"]) for r in rows if r.get("int8_path")}
    return "".join(f"; int8 on {cpu}: {path}" for cpu, path in sorted(seen, key=str))


def print_bench(result: dict[str, Any]) -> None:
    """Latency table (ms), then one line per skipped runtime and per op off the fast path."""
    cols = ["format", "runtime", "thr", "p50", "p90", "p99", "CV", "runs", "RSS MB", "eff."]
    rows = [
        [
            r["format"],
            r["runtime"],
            r["threads"],
            *(_ms(r[k]) for k in ("p50_ms", "p90_ms", "p99_ms")),
            f"{r['cv']:.0%}" + ("!" if r["unstable"] else ""),
            r["runs"],
            r.get("rss_delta_mb"),
            None if r.get("efficiency") is None else f"{r['efficiency']:.0%}",
        ]
        for r in result["results"]
    ]
    m = result["machine"]
    caption = (
        f"ms per inference, batch 1, target {result.get('target', 'local')} ({m['cpu']}, "
        f"{m['cores']} cores); ! = CV > 10% (unstable); eff. = MAC/s over this host's GEMM peak"
        f"{_int8_cpu(result['results'])}"
    )
    render("edgekit bench", cols, rows, caption)
    for skip in result["skipped"]:
        console.print(f"skipped {skip['runtime']} ({skip['format'] or 'any format'}): {skip['reason']}")
    for r in result["results"]:
        for slow in (r.get("profile") or {}).get("slow_path", []):
            console.print(
                f"{r['format']}/{r['runtime']}: off the fast path: {slow['op']} x{slow['count']} "
                f"({slow['why']})"
            )


def _ms(value: float) -> float:
    return round(value, 3) if value < 10 else round(value, 1)


def print_peers(result: dict[str, Any]) -> None:
    """edgekit's int8 file against the peer's, per engine: p50s, their ratio, agreement, size."""
    cols = ["engine", "thr", "edgekit", "peer", "edgekit p50", "peer p50", "ratio", "agree", "peer agree"]
    rows = [
        [
            r["runtime"],
            r["threads"],
            r["ours"],
            r["peer"],
            _ms(r["ours_p50_ms"]),
            _ms(r["peer_p50_ms"]),
            r["ratio"],
            f"{r['ours_agreement']:.1%}",
            f"{r['peer_agreement']:.1%}",
        ]
        for r in result["rows"]
    ]
    cpu = machine.label(result["machine"])
    caption = f"ms per inference; ratio = edgekit p50 / peer p50; {result['method']}; {cpu}"
    render("edgekit bench --peers", cols, rows, caption)
    for r in result["rows"]:
        console.print(f"{r['peer']}: {r['recipe']}")


def print_estimate(result: dict[str, Any]) -> None:
    """Estimated per-layer latency (executed layers only; BN/activations are fused), the total with its
    expected error, then the published or measured figures beside it."""
    dev = result["device_profile"]
    rows = [
        [
            layer["name"],
            layer["kind"],
            layer["macs"],
            layer["bytes"],
            f"{layer['compute_ms']:.3f}",
            f"{layer['memory_ms']:.3f}",
            f"{layer['overhead_ms']:.3f}",
            f"{layer['ms']:.3f}",
            layer["bound"],
        ]
        for layer in result["layers"]
        if layer["bound"] != "fused"
    ]
    total = f"{result['total_ms']:.2f} ± {result['expected_error_pct']:.0f}%"
    rows.append(["total (estimate)", "", result["macs"], None, None, None, None, total, ""])
    published = result["published"]
    beside = (
        [f"Published: {published['ms']} ms ({published['source']}); estimate {published['error_pct']:+.1f}%."]
        if published
        else []
    )
    beside += [
        f"Measured on {m['target']} ({m['format']}/{m['runtime']}, p50): {m['p50_ms']} ms; "
        f"estimate {m['estimate_vs_measured_pct']:+.1f}%."
        for m in result["measured"]
    ]
    render(
        f"ESTIMATE: {result['model']} on {dev['label']} ({dev['core']} {dev['clock_ghz']} GHz), "
        f"{result['threads']} thread(s), {result['precision']} model, {result['kernels']} kernels",
        ["layer", "kind", "MACs", "bytes", "compute ms", "memory ms", "overhead ms", "ms", "largest"],
        rows,
        caption=f"{result['method']}. Expected error ±{result['expected_error_pct']:.0f}% "
        f"({result['expected_error']}). " + " ".join(beside),
    )


def _db(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


def _spread(value: float | None) -> str:
    return "∞" if value is None else f"{value:,.0f}x"


def print_analysis(result: dict[str, Any]) -> None:
    """`edgekit analyze`: flagged layers, medians by kind, then the end-to-end int8 table."""
    bits = result["bits"]
    flagged = [layer for layer in result["layers"] if layer["flag"]]
    render(
        f"ANALYZE: {result['model']}, {bits}-bit weights, layers that break ({len(flagged)} of "
        f"{len(result['layers'])})",
        ["layer", "kind", "spread", "<1% ch", "W SQNR tensor", "W SQNR channel", "out SQNR tensor", "reason"],
        [
            [
                layer["name"],
                layer["kind"],
                _spread(layer["range_spread"]),
                layer["channels_below_1pct"],
                _db(layer["weight_sqnr_per_tensor"]),
                _db(layer["weight_sqnr_per_channel"]),
                _db(layer.get("output_sqnr_per_tensor")),
                layer["flag"],
            ]
            for layer in flagged
        ],
        caption=result["method"],
    )
    render(
        "by kind (medians, dB)",
        [
            "kind",
            "layers",
            "W tensor",
            "W channel",
            "gain",
            "spread median",
            "spread max",
            "out tensor",
            "out channel",
            "flagged",
        ],
        [
            [
                kind,
                s["layers"],
                _db(s["weight_sqnr_per_tensor"]),
                _db(s["weight_sqnr_per_channel"]),
                _db(s["per_channel_gain"]),
                _db(s["range_spread_median"]),
                _db(s["range_spread_max"]),
                _db(s["output_sqnr_per_tensor"]),
                _db(s["output_sqnr_per_channel"]),
                s["flagged"],
            ]
            for kind, s in result["by_kind"].items()
        ],
        caption=f"out = logits SQNR with only that layer quantised, on {result['sensitivity_images']} images "
        f"of {result['images']}",
    )
    if result["end_to_end"]:
        render(
            "end to end (real int8 files)",
            ["config", "runtime", "top-1 %", "top-5 %", "agree top-1 %", "note"],
            [
                [
                    r["config"],
                    r["runtime"],
                    _db(r["top1"]),
                    _db(r["top5"]),
                    _db(r["agreement_top1"]),
                    r.get("error"),
                ]
                for r in result["end_to_end"]
            ],
            caption=result.get("end_to_end_method"),
        )
