"""`make bench`: export every zoo network, benchmark float32 and int8 in ONNX Runtime and LiteRT.

    python -m edgekit.studies.benchzoo --out bench [--models a,b] [--resolution 64] [--threads 1,2]

Writes ``OUT/results.json`` (every bench result, machine included) and ``OUT/README.md`` (one
table; every figure labelled with runtime, threads, runs and real/emulated). Slow on a small host.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import bench, machine
from edgekit.errors import EdgekitError
from edgekit.manifest import write_json, write_text

BENCHED = ("onnx", "tflite")  # the format families `make bench` exports, float32 and int8
# Their default engines only: OpenVINO 2026 (which also reads ONNX) crashes natively compiling
# CondenseNet's int8 ONNX file, and docs/engines.md compares the other engines.
ENGINES = ["onnxruntime", "litert"]


def run(
    out: str | Path,
    models: list[str] | None = None,
    resolution: int | None = None,
    threads: list[int] | None = None,
    min_time: float = 1.0,
    calib_samples: int = 16,
    workers: int | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Export + bench each model; a model that fails is recorded with its error and the run goes on.

    With ``workers``/``ray_address`` the exports run in parallel on Ray and each model's timed runs
    follow on the node that exported it, one model at a time per node (edgekit.scale.run_timed)."""
    from edgekit.lanes import default_jobs
    from edgekit.zoo import list_models

    out = Path(out)
    names = models or list_models()
    local = workers is None and ray_address is None
    items = [
        {
            "name": n,
            "folder": out / "artifacts" / n,
            "resolution": resolution,
            "calib_samples": calib_samples,
            "jobs": default_jobs() if local else 1,  # lanes fork: never inside a Ray worker
        }
        for n in names
    ]
    timing = functools.partial(bench_model, threads=threads or [1, 2], min_time=min_time)
    if local:
        scheduling = (
            "one model after the other: its export in a fresh process (lanes side by side), "
            "its timed runs in this one"
        )
        outcomes = []
        for item in items:
            outcomes.append(timing(_in_fresh_process(export_model, **item)))
            _write(out, *_gather(outcomes), scheduling)  # after every model: a long run is readable midway
        return _write(out, *_gather(outcomes), scheduling)
    from edgekit import scale

    cpus = max(threads or [1, 2])
    outcomes = scale.run_timed(export_model, timing, items, workers, ray_address, "zoo bench", cpus=cpus)
    scheduling = (
        f"exports in parallel on Ray; each model's timed runs on the node that exported it, one model at a "
        f"time per node (Ray resource {scale.TIMING_SLOT}: 1, {cpus} CPU(s) held; other exports may run on "
        "the node's other cores meanwhile)"
    )
    return _write(out, *_gather(outcomes), scheduling)


def export_model(
    name: str, folder: Path, resolution: int | None, calib_samples: int, jobs: int = 1
) -> dict[str, Any]:
    """Export one zoo model (float32 and int8 ONNX/TFLite): {"name", "folder"} or {"name", "error"}."""
    from edgekit import pipeline

    try:
        pipeline.export(
            name,
            out_dir=folder,
            # float32 and int8 by name: the int8 files and the float32 ones they are compared with
            # (float32 names alone wrote no int8 file: formats.resolve adds int8 per family or name)
            formats=_columns(),
            int8=True,
            resolution=resolution,
            calib_samples=calib_samples,
            jobs=jobs,
        )
    except Exception as exc:  # a bug in one model's export must not end an hours-long zoo run
        return {"name": name, "error": str(exc) if isinstance(exc, EdgekitError) else _bug(exc)}
    return {"name": name, "folder": str(folder)}


def _in_fresh_process(fn: Any, **kwargs: Any) -> Any:
    """``fn(**kwargs)`` in a spawned interpreter: an export's lanes fork, and a fork of this
    process, whose engine thread pools (ONNX Runtime's, XNNPACK's) the previous model's timed runs
    started, deadlocked on a lock one of those threads held (edgekit.lanes)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, **kwargs).result()


def bench_model(prepared: dict[str, Any], threads: list[int], min_time: float) -> dict[str, Any]:
    """Bench an exported model: ``prepared`` with its bench result, or as it came (an error)."""
    if "error" in prepared:
        return prepared
    try:
        result = bench.bench(
            prepared["folder"], ENGINES, formats=list(BENCHED), threads=threads, min_time=min_time
        )
        paired = interleaved_ratios(Path(prepared["folder"]))
    except Exception as exc:
        return {**prepared, "error": str(exc) if isinstance(exc, EdgekitError) else _bug(exc)}
    return {**prepared, "result": result.to_dict(raw=False), "interleaved": paired}


def interleaved_ratios(folder: Path, threads: int = 1) -> list[dict[str, Any]]:
    """int8 p50 over float32 p50 per engine, both files timed in one interleaved run
    (:func:`edgekit.peers.interleaved`): a busy host slows both alike, unlike the table's runs."""
    import os

    from edgekit import formats
    from edgekit.manifest import read_manifest
    from edgekit.peers import ROUNDS, RUNS_PER_ROUND, interleaved

    files = read_manifest(folder).files
    rows = []
    for family in BENCHED:
        pair = {p: f"{family}-{p}" for p in ("fp32", "int8")}
        if not all(name in files for name in pair.values()):
            continue
        runtime = formats.get(pair["int8"]).engine
        load = os.getloadavg()[0]
        times = interleaved({p: folder / files[name].path for p, name in pair.items()}, runtime, threads)
        p50 = {p: float(np.median(t)) for p, t in times.items()}
        rows.append(
            {
                "runtime": runtime,
                "threads": threads,
                "fp32_p50_ms": round(p50["fp32"], 4),
                "int8_p50_ms": round(p50["int8"], 4),
                "ratio": round(p50["int8"] / p50["fp32"], 3),
                "load_avg": round(load, 2),
                "measured": f"{ROUNDS} rounds of {RUNS_PER_ROUND} invokes per file, order alternating",
            }
        )
    return rows


def _bug(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _gather(outcomes: list[dict[str, Any]]) -> tuple[Any, list, list, list, list]:
    """(machine, rows, int8-vs-fp32 rows, interleaved int8/fp32 rows, failures) of the models done so far."""
    rows, compare, paired, failed, host = [], [], [], [], None
    for outcome in outcomes:
        name = outcome["name"]
        if "error" in outcome:
            failed.append({"model": name, "error": outcome["error"]})
            continue
        result = outcome["result"]
        host = result["machine"]
        compare += [{"model": name, **c} for c in result.get("int8_vs_fp32", [])]
        paired += [{"model": name, **c} for c in outcome.get("interleaved", [])]
        rows += [{"model": name, **r} for r in result["results"]]
    return host, rows, compare, paired, failed


def _write(
    out: Path, host: Any, rows: list, compare: list, paired: list, failed: list, scheduling: str
) -> dict[str, Any]:
    summary = {
        "machine": host,
        "method": {**bench.method(), "scheduling": scheduling},
        "results": rows,
        "int8_vs_fp32": compare,
        "int8_vs_fp32_interleaved": paired,
        "failed": failed,
    }
    write_json(out / "results.json", summary)
    write_text(out / "README.md", readme(summary))
    return summary


def _columns() -> list[str]:
    """The benched formats, float32 then int8 per family, in registry order."""
    from edgekit import formats

    return [
        f.name for f in formats.registry().values() if f.family in BENCHED and f.precision in ("fp32", "int8")
    ]


def readme(summary: dict[str, Any]) -> str:
    columns = _columns()
    lines = [
        "# Zoo benchmark",
        "",
        "p50 / p99 latency in ms per inference (batch 1) on this host, real hardware (not emulated); "
        "int8/fp32 = int8 p50 over float32 p50 of the same runtime and threads (>1: int8 is slower).",
        "",
        "Every row on one page, sortable, with a Pareto plot: [dashboard.html](dashboard.html) "
        "(`edgekit report --zoo results.json`).",
        "",
        *_host_line(summary),
        "| model | runtime | threads | " + " | ".join(f"{f} p50 (p99)" for f in columns) + " | int8/fp32 |",
        "|---|---|---:|" + "---:|" * (len(columns) + 1),
    ]
    groups: dict[tuple, dict[str, dict]] = {}
    for r in summary["results"]:
        groups.setdefault((r["model"], r["runtime"], r["threads"]), {})[r["format"]] = r
    for (model, runtime, threads), by_fmt in groups.items():
        cells = [
            f"{by_fmt[f]['p50_ms']:.3f} ({by_fmt[f]['p99_ms']:.3f})" if f in by_fmt else "" for f in columns
        ]
        fp32 = next((r for r in by_fmt.values() if r["precision"] == "fp32"), None)
        int8 = next((r for r in by_fmt.values() if r["precision"] == "int8"), None)
        ratio = f"{int8['p50_ms'] / fp32['p50_ms']:.2f}" if fp32 and int8 else ""
        lines.append(f"| {model} | {runtime} | {threads} | " + " | ".join(cells) + f" | {ratio} |")
    lines += _int8_lines(summary.get("int8_vs_fp32") or [])
    lines += _interleaved_lines(summary.get("int8_vs_fp32_interleaved") or [])
    lines += _thread_lines(summary["results"])
    lines += ["", "Measured (per runtime and threads; runs and warm-up ranges over its rows):", ""]
    lines += [f"- {n}" for n in _measured(summary["results"])]
    lines += ["", "Method: " + "; ".join(f"{k}: {v}" for k, v in summary["method"].items()) + "."]
    if summary.get("machine"):
        m = summary["machine"]
        lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {' '.join(m['features'])}, {m['os']}."]
    lines += [f"- failed: {f['model']}: {f['error']}" for f in summary["failed"]]
    return "\n".join(lines) + "\n"


def _measured(results: list[dict[str, Any]]) -> list[str]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        key = (r["runtime"], r["runtime_version"], r["provider"], r["threads"], r["target"], r["emulated"])
        groups.setdefault(key, []).append(r)
    lines = []
    for (runtime, version, provider, threads, target, emulated), rows in sorted(groups.items()):
        runs, warm = [r["runs"] for r in rows], [r["warmup"] for r in rows]
        lines.append(
            f"{runtime} {version} [{provider}], {threads} thread(s), {min(runs)}-{max(runs)} timed runs "
            f"after {min(warm)}-{max(warm)} warm-up, batch 1, {target} ({'emulated' if emulated else 'real'})"
        )
    return lines


def _int8_lines(compare: list[dict[str, Any]]) -> list[str]:
    """One line per (model, runtime, threads) where int8 is not faster than float32, with the reason."""
    slower = [c for c in compare if not c["int8_faster"]]
    lines = ["", "## int8 vs float32", ""]
    faster = len(compare) - len(slower)
    lines.append(f"int8 faster than float32 in {faster} of {len(compare)} (model, runtime, threads) pairs.")
    lines += [""] if slower else []
    lines += [
        f"- {c['model']} / {c['runtime']} / {c['threads']} thread(s): int8 {c['int8_p50_ms']:.3f} ms vs "
        f"float32 {c['fp32_p50_ms']:.3f} ms (x{c['ratio']:.2f}): {c['why']}"
        for c in slower
    ]
    return lines


def _host_line(summary: dict[str, Any]) -> list[str]:
    """The host's CPU and how loaded it was (1-minute load average before each timed row)."""
    loads = [r["load_avg"] for r in summary["results"] if r.get("load_avg") is not None]
    if not summary.get("machine") or not loads:
        return []
    cpu = machine.label(summary["machine"])
    return [f"Host: {cpu}, load average {min(loads):.2f}-{max(loads):.2f} before the rows.", ""]


def _thread_lines(results: list[dict[str, Any]]) -> list[str]:
    """More threads against 1: how many rows are no slower, each slower row with the reason its
    bench measured (edgekit.bench.flag_thread_scaling), and how many rows were unstable."""
    multi = [r for r in results if r["threads"] > 1]
    slower = [r for r in multi if "slower than 1" in (r.get("note") or "")]
    unstable = sum(bool(r.get("unstable")) for r in results)
    lines = [
        "",
        "## Threads",
        "",
        f"{len(multi) - len(slower)} of {len(multi)} rows with more than 1 thread are no slower than "
        f"the same file at 1 thread. {unstable} of {len(results)} rows had a CV over 10% (a shared "
        "host's outliers; the p50 stands, the note is in results.json).",
    ]
    lines += [""] if slower else []
    for r in slower:
        reason = r["note"][r["note"].index(f"{r['threads']} threads slower than 1") :]  # the last part
        lines.append(f"- {r['model']} / {r['runtime']} / {r['format']}: {reason}")
    return lines


def _interleaved_lines(paired: list[dict[str, Any]]) -> list[str]:
    """int8/fp32 from one interleaved run per model and engine: the figure to compare on a busy host."""
    if not paired:
        return []
    lines = [
        "",
        "## int8/fp32, interleaved",
        "",
        "Both files of an engine timed in one run, alternating (" + paired[0]["measured"] + "), "
        f"{paired[0]['threads']} thread, batch 1; the 1-minute load average before each pair.",
        "",
        "| model | runtime | fp32 p50 | int8 p50 | int8/fp32 | load |",
        "|---|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {c['model']} | {c['runtime']} | {c['fp32_p50_ms']:.3f} | {c['int8_p50_ms']:.3f} | "
        f"{c['ratio']:.2f} | {c['load_avg']:.2f} |"
        for c in paired
    ]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench")
    parser.add_argument("--models", help="comma list (default: the whole zoo)")
    parser.add_argument("--resolution", type=int, help="input side (default: each model's own)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--workers", type=int, help="exports in parallel on a local Ray with N CPUs")
    parser.add_argument("--ray", dest="ray_address", help="the Ray cluster at ADDRESS instead")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",")] if args.models else None
    threads = [int(t) for t in args.threads.split(",")]
    summary = run(
        args.out,
        models,
        args.resolution,
        threads,
        args.min_time,
        workers=args.workers,
        ray_address=args.ray_address,
    )
    done, failed = len(summary["results"]), len(summary["failed"])
    print(f"wrote {Path(args.out) / 'README.md'}: {done} results, {failed} failed")


if __name__ == "__main__":
    main()
