"""Latency harness: every (format, runtime, threads) of an artifact folder or one model file.

How a figure is measured (also written into every result's ``measured`` field):
- input: one seeded random batch of 1 in the file's layout and dtype, converted once by the
  session's ``prepare`` (int8 inputs quantised with the file's scale/zero point) outside the timing;
- warm-up: ``--warmup N`` runs, or windows of 10 runs until two consecutive window medians agree
  within 2% (at most 20 windows / 10 s);
- timed runs: ``--runs N``, or as many as fit in ``--min-time`` seconds (at least 10); each run is
  one ``invoke`` timed with ``time.perf_counter_ns``; CV = std/mean (population std) of those runs,
  a result with CV > 10% is flagged ``unstable``;
- memory: peak RSS growth during load + warm-up + runs (Linux VmHWM, reset through
  /proc/self/clear_refs before loading, minus VmRSS before loading), in this process;
- efficiency: manifest MACs / p50 against the host's peak GEMM rate measured now
  (:mod:`edgekit.machine`) at the same thread count, float32 or int8.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import machine
from edgekit.errors import ArtifactError, EdgekitError, UsageError
from edgekit.manifest import (
    MANIFEST,
    check_writable,
    read_manifest,
    record_result,
    select_formats,
    write_json,
)

CV_LIMIT = 0.10
SETTLE = 0.02
WINDOW = 10
MAX_WINDOWS = 20
MAX_WARMUP_S = 10.0
MIN_RUNS = 10
MAX_RUNS = 100_000
SEED = 0
PROFILE_RUNS = 50
OP_TIME_RUNS = 20  # profiled runs behind the int8-vs-float32 explanation


@dataclass
class Job:
    """One file to benchmark with one runtime."""

    fmt: str
    path: Path
    runtime: str
    entry: dict[str, Any] = field(default_factory=dict)  # the manifest's files[fmt]
    macs: int | None = None


def bench(
    path: str | os.PathLike[str],
    runtimes: list[str] | None = None,
    threads: list[int] | None = None,
    warmup: int | None = None,
    runs: int | None = None,
    min_time: float = 1.0,
    target: str = "local",
    no_xnnpack: bool = False,
    profile: bool = False,
    out_file: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    formats: list[str] | None = None,
) -> dict[str, Any]:
    """Benchmark an artifact folder (every file x every runtime that loads it) or one model file."""
    threads = threads or [1]
    _check_options(threads, warmup, runs, min_time)
    if out_file:
        check_writable(Path(out_file).parent, need_bytes=1 << 20)
    folder, jobs, skipped = plan(path, runtimes)
    if formats:
        chosen = select_formats(list(dict.fromkeys(j.fmt for j in jobs)), formats)
        jobs = [j for j in jobs if j.fmt in chosen]
    if target != "local":
        jobs, skipped = _runnable_on(target, jobs, skipped)
    results = []
    for job in jobs:
        for n in threads:
            try:
                if target == "local":
                    results.append(measure(job, n, warmup, runs, min_time, not no_xnnpack, profile))
                else:
                    results.append(measure_remote(job, n, target, warmup, runs, not no_xnnpack, timeout))
            except _LoadError as exc:
                skipped.append({"runtime": job.runtime, "format": job.fmt, "reason": str(exc)})
                break
    if not results:
        reasons = "; ".join(f"{s['format'] or 'any'}/{s['runtime']}: {s['reason']}" for s in skipped)
        raise ArtifactError(f"nothing in {path} could be benchmarked ({reasons})", "re-export the files")
    report = {
        "machine": machine.facts(),
        "target": target,
        "method": method(),
        "results": results,
        "skipped": skipped,
        "int8_vs_fp32": int8_vs_fp32(results, jobs),
    }
    if out_file:
        write_json(out_file, report)
    if folder is not None:
        stored = record_result(folder, "bench", _without_raw(report))
        report["stored"] = str(stored) if stored else None
        if stored is None:
            report["note"] = f"{folder} is read-only: results not stored there (use --out FILE to keep them)"
    return report


def _runnable_on(target: str, jobs: list[Job], skipped: list[dict]) -> tuple[list[Job], list[dict]]:
    """Only the engines the target's runner has; the rest are skipped with the reason."""
    from runtimes.targets import ENGINES

    kept = [job for job in jobs if job.runtime in ENGINES]
    skipped = skipped + [
        {
            "runtime": job.runtime,
            "format": job.fmt,
            "reason": f"{target} runs {', '.join(ENGINES)} only; {job.path.name} is measured locally",
        }
        for job in jobs
        if job.runtime not in ENGINES
    ]
    return kept, skipped


def _check_options(threads: list[int], warmup: int | None, runs: int | None, min_time: float) -> None:
    if any(t < 1 for t in threads):
        raise UsageError(f"--threads must be >= 1, got {threads}", "e.g. --threads 1,2")
    if warmup is not None and warmup < 0:
        raise UsageError(
            f"--warmup must be >= 0, got {warmup}", "omit it to warm up until the median settles"
        )
    if runs is not None and runs < 1:
        raise UsageError(f"--runs must be >= 1, got {runs}", "omit it to run for --min-time seconds")
    if min_time < 0:
        raise UsageError(f"--min-time must be >= 0, got {min_time}", "e.g. --min-time 1")


def method() -> dict[str, str]:
    return {
        "latency": "one invoke per run, batch 1, input prepared outside the timing; time.perf_counter_ns",
        "warmup": f"--warmup N, or {WINDOW}-run windows until consecutive medians agree within "
        f"{SETTLE:.0%} (max {MAX_WINDOWS} windows)",
        "runs": f"--runs N, or enough for --min-time seconds (at least {MIN_RUNS})",
        "cv": f"std/mean of the timed runs (population std); unstable when > {CV_LIMIT:.0%}",
        "throughput": "1000 / mean_ms: single stream, batch 1",
        "memory": "peak RSS growth during load+warm-up+runs: VmHWM (reset via /proc/self/clear_refs) minus "
        "VmRSS before load, same process",
        "efficiency": "manifest MACs / p50, over the peak GEMM rate timed in ONNX Runtime in this run "
        "(float32 MatMul or uint8 x int8 MatMulInteger, same threads)",
    }


# --- what to run -------------------------------------------------------------------------------


def plan(path: str | os.PathLike[str], wanted: list[str] | None) -> tuple[Path | None, list[Job], list[dict]]:
    """(artifact folder or None, jobs, skipped): each file with each available runtime that loads it."""
    from runtimes import get_runtime, runtime_names, runtimes_for_file

    path = Path(path)
    names = [get_runtime(w).name for w in wanted or []]  # an unknown name is a usage error, not a skip
    folder, files, macs = _files(path)
    jobs, skipped, used = [], [], set()
    for fmt, (file, entry) in files.items():
        for name in runtimes_for_file(file):
            if names and name not in names:
                continue
            used.add(name)
            ok, reason = get_runtime(name).available()
            if ok:
                jobs.append(Job(fmt, file, name, entry, macs))
            else:
                skipped.append({"runtime": name, "format": fmt, "reason": reason})
    for name in names:
        if name not in used:
            skipped.append({"runtime": name, "format": None, "reason": f"no file here that {name} loads"})
    if not jobs and not skipped:
        raise ArtifactError(f"nothing to benchmark in {path}", f"runtimes: {', '.join(runtime_names())}")
    return folder, jobs, skipped


def _files(path: Path) -> tuple[Path | None, dict[str, tuple[Path, dict]], int | None]:
    if path.is_dir():
        manifest = read_manifest(path)
        files = {fmt: (path / e["path"], e) for fmt, e in manifest["files"].items()}
        return path, files, manifest.get("model", {}).get("macs")
    if not path.is_file():
        raise UsageError(f"{path} is neither an artifact folder nor a model file", "pass a folder or a file")
    manifest = read_manifest(path.parent, check_hashes=False) if (path.parent / MANIFEST).is_file() else {}
    for fmt, entry in manifest.get("files", {}).items():
        if entry["path"] == path.name:
            return None, {fmt: (path, entry)}, manifest.get("model", {}).get("macs")
    return None, {format_of(path): (path, {})}, None


def format_of(path: Path) -> str:
    """The format name of a file outside a manifest, from its suffix and name."""
    name = path.name.lower()
    if name.endswith(".pt2"):
        return "torch"
    precision = "int8" if "int8" in name else "fp16" if "fp16" in name else "fp32"
    if name.endswith(".onnx"):
        return f"onnx-{'int8' if precision == 'int8' else 'fp32'}"
    if name.endswith(".tflite"):
        return f"tflite-{precision}"
    raise UsageError(f"unknown model file type: {path.name}", "expected .onnx, .tflite or .pt2")


def precision_of(job: Job) -> str:
    return job.entry.get("precision") or ("int8" if job.fmt.endswith("int8") else "fp32")


# --- measuring ---------------------------------------------------------------------------------


class _LoadError(EdgekitError):
    """The runtime could not load this file: reported as skipped, not fatal."""


def measure(
    job: Job,
    threads: int,
    warmup: int | None,
    runs: int | None,
    min_time: float,
    xnnpack: bool = True,
    profile: bool = False,
) -> dict[str, Any]:
    """One configuration, in this process: load, warm up, time, and the numbers around it."""
    from runtimes import get_runtime

    opts = {"xnnpack": xnnpack} if job.runtime == "litert" else {}
    gc.collect()
    tracked = _reset_peak_rss()
    rss_before = _status_kb("VmRSS")
    start = time.perf_counter()
    try:
        sess = get_runtime(job.runtime).load(job.path, threads=threads, **opts)
    except Exception as exc:  # a file the engine rejects is a skip with its reason, not a crash
        raise _LoadError(f"{job.runtime} cannot load {job.path.name}: {type(exc).__name__}: {exc}") from exc
    load_ms = (time.perf_counter() - start) * 1e3
    native = sess.prepare(bench_input(sess, job))
    first_ms = _time(sess, native, 1)[0]
    warmed = _warm_up(sess, native, warmup)
    latencies = _timed_runs(sess, native, runs, min_time)
    rss_delta = (_status_kb("VmHWM") - rss_before) / 1024 if tracked and rss_before else None
    desc = sess.describe()
    result = _result(job, threads, latencies, warmed, first_ms, desc)
    result.update(load_ms=round(load_ms, 3), rss_delta_mb=None if rss_delta is None else round(rss_delta, 2))
    if profile:
        result["profile"] = _profile(job, threads, native, xnnpack)
    del sess
    return result


def measure_remote(
    job: Job,
    threads: int,
    target: str,
    warmup: int | None,
    runs: int | None,
    xnnpack: bool = True,
    timeout: float | None = None,
) -> dict[str, Any]:
    """One configuration on a target (emulated Pi, SSH, adb) through the standalone runner."""
    from runtimes.targets import get_target

    raw = get_target(target, **({"timeout": timeout} if timeout else {})).bench(
        job.path,
        job.runtime,
        threads=threads,
        warmup=3 if warmup is None else warmup,
        runs=runs or 30,
        layout=job.entry.get("layout"),
        no_xnnpack=not xnnpack,
    )
    raw = raw[0] if isinstance(raw, list) else raw
    desc = {
        "runtime": job.runtime,
        "version": raw.get("engine_version"),
        "delegate": "XNNPACK" if raw.get("xnnpack") else None,
        "input": raw.get("input", {}),
    }
    result = _result(
        job,
        threads,
        raw["latencies_ms"],
        raw.get("warmup", 0),
        raw.get("first_ms"),
        desc,
        target=raw.get("target", target),
        emulated=bool(raw.get("emulated")),
        remote=raw,
    )
    result.update(load_ms=raw.get("load_ms"), rss_delta_mb=None)
    return result


def bench_input(sess: Any, job: Job) -> np.ndarray:
    """A seeded standard-normal float32 batch of 1 in the session's layout."""
    shape = list(sess.input.get("shape") or [])
    if not shape or any(d is None for d in shape[1:]):
        shape = list(job.entry.get("input", {}).get("shape") or [])
    if not shape or any(d is None for d in shape[1:]):
        raise ArtifactError(f"{job.path.name}: input shape unknown", "re-export with a static input shape")
    shape[0] = 1
    return np.random.default_rng(SEED).standard_normal(shape, dtype=np.float32)


def _time(sess: Any, native: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        start = time.perf_counter_ns()
        sess.invoke(native)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return times


def _warm_up(sess: Any, native: Any, warmup: int | None) -> int:
    """Run until the median settles (or exactly ``warmup`` runs); returns the runs used."""
    if warmup is not None:
        _time(sess, native, warmup)
        return warmup
    done, previous, start = 0, None, time.perf_counter()
    for _ in range(MAX_WINDOWS):
        median = statistics.median(_time(sess, native, WINDOW))
        done += WINDOW
        if previous is not None and abs(median - previous) <= SETTLE * previous:
            break
        if time.perf_counter() - start > MAX_WARMUP_S:
            break
        previous = median
    return done


def _timed_runs(sess: Any, native: Any, runs: int | None, min_time: float) -> list[float]:
    if runs is not None:
        return _time(sess, native, runs)
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < MIN_RUNS or (time.perf_counter() - start < min_time and len(latencies) < MAX_RUNS):
        latencies += _time(sess, native, 1)
    return latencies


def latency_stats(latencies_ms: list[float]) -> dict[str, Any]:
    """Percentiles (linear interpolation), mean, population std, CV and the stability flag."""
    a = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    mean, std = float(a.mean()), float(a.std())
    cv = std / mean if mean > 0 else 0.0
    stats = {
        "p50_ms": p50,
        "p90_ms": p90,
        "p99_ms": p99,
        "mean_ms": mean,
        "std_ms": std,
        "min_ms": float(a.min()),
        "max_ms": float(a.max()),
    }
    stats = {k: round(float(v), 4) for k, v in stats.items()}
    cv = round(cv, 4)  # the flag follows the figure shown: a CV printed as 10.00% is not "> 10%"
    return {**stats, "cv": cv, "unstable": cv > CV_LIMIT, "runs": len(a)}


def _result(
    job: Job,
    threads: int,
    latencies: list[float],
    warmup: int,
    first_ms: float | None,
    desc: dict[str, Any],
    target: str = "local",
    emulated: bool = False,
    remote: dict[str, Any] | None = None,
) -> dict[str, Any]:
    stats = latency_stats(latencies)
    precision = precision_of(job)
    result: dict[str, Any] = {
        "format": job.fmt,
        "runtime": job.runtime,
        "target": target,
        "threads": threads,
        "file": job.path.name,
        "precision": precision,
        **stats,
        "warmup": warmup,
        "first_ms": None if first_ms is None else round(first_ms, 4),
        "throughput": round(1000.0 / stats["mean_ms"], 2) if stats["mean_ms"] else None,
        "size_bytes": job.path.stat().st_size,
        "macs": job.macs,
        "runtime_version": desc.get("version"),
        "provider": desc.get("provider") or desc.get("delegate") or "builtin kernels",
        "input_dtype": (desc.get("input") or {}).get("dtype"),
        "emulated": emulated,
        **_cpu(precision, remote),
    }
    if stats["unstable"]:
        result["note"] = (
            f"unstable: CV {stats['cv']:.0%} > {CV_LIMIT:.0%} (a busy or throttling host); "
            "re-run with more --min-time or on an idle machine"
        )
    result.update(_efficiency(job.macs, stats["p50_ms"], precision, threads, local=remote is None))
    result["measured"] = _measured_note(result)
    result["latencies_ms"] = [round(t, 4) for t in latencies]
    return result


def _cpu(precision: str, remote: dict[str, Any] | None) -> dict[str, Any]:
    """The CPU that ran it, and for int8 files its int8 path (which kernels, and whether they are exact)."""
    where = (remote or {}).get("machine") or machine.facts()
    return {
        "cpu": where.get("cpu"),
        **({"int8_path": machine.int8_path(where)} if precision == "int8" else {}),
    }


def _efficiency(macs: int | None, p50_ms: float, precision: str, threads: int, local: bool) -> dict[str, Any]:
    """Achieved GMAC/s and its fraction of this host's peak (only for local runs: the peak is this host's)."""
    if not macs or not p50_ms:
        return {"gmacs_per_s": None, "peak_gmacs_per_s": None, "efficiency": None}
    achieved = macs / (p50_ms / 1e3) / 1e9
    if not local:
        return {"gmacs_per_s": _significant(achieved), "peak_gmacs_per_s": None, "efficiency": None}
    kind = "int8" if precision == "int8" else "fp32"
    peak = machine.peak_gmacs(kind, threads)
    return {
        "gmacs_per_s": _significant(achieved),
        "peak_gmacs_per_s": _significant(peak),
        "peak_kind": kind,
        "efficiency": _significant(achieved / peak),
    }


def _significant(value: float, digits: int = 4) -> float:
    # Significant digits, not decimals: a tiny int8 model's efficiency is ~0.003.
    return float(f"{value:.{digits}g}")


def _measured_note(r: dict[str, Any]) -> str:
    where = f"{r['target']} ({'emulated' if r['emulated'] else 'real'}, {r['cpu']})"
    path = f", int8 path {r['int8_path']}" if r.get("int8_path") else ""
    return (
        f"{r['runtime']} {r['runtime_version']} [{r['provider']}], {r['threads']} thread(s), "
        f"{r['runs']} runs after {r['warmup']} warm-up, batch 1, {where}{path}"
    )


def _profile(job: Job, threads: int, native: Any, xnnpack: bool) -> dict[str, Any] | None:
    from edgekit import profiling

    if job.runtime == "onnxruntime":
        return profiling.profile_ort(
            job.path, threads, native, runs=PROFILE_RUNS, precision=precision_of(job)
        )
    if job.runtime == "litert":
        return profiling.profile_litert(job.path, threads, native, runs=PROFILE_RUNS, xnnpack=xnnpack)
    return None


# --- int8 against float32 -----------------------------------------------------------------------


def int8_vs_fp32(results: list[dict[str, Any]], jobs: list[Job]) -> list[dict[str, Any]]:
    """Per runtime and thread count: int8 p50 over float32 p50 of the same runtime, and when int8 is
    not faster, the ops of the int8 file that fell off the int8 fast path (from the profile when
    ``--profile`` ran, else read from the graph the runtime executes)."""
    by_key = {(r["runtime"], r["threads"], r["precision"]): r for r in results}
    paths = {(j.runtime, "int8"): j.path for j in jobs if precision_of(j) == "int8"}
    rows, off_cache = [], {}
    for (runtime, threads, precision), int8 in by_key.items():
        fp32 = by_key.get((runtime, threads, "fp32"))
        if precision != "int8" or fp32 is None or not fp32["p50_ms"]:
            continue
        ratio = int8["p50_ms"] / fp32["p50_ms"]
        row = {
            "runtime": runtime,
            "threads": threads,
            "fp32_format": fp32["format"],
            "int8_format": int8["format"],
            "fp32_p50_ms": fp32["p50_ms"],
            "int8_p50_ms": int8["p50_ms"],
            "ratio": round(ratio, 3),
            "int8_faster": ratio < 1.0,
            "measured": int8["measured"],
        }
        if ratio >= 1.0:
            slow = (int8.get("profile") or {}).get("slow_path")
            if slow is None and (runtime, "int8") in paths:
                if runtime not in off_cache:
                    off_cache[runtime] = off_fast_path(paths[(runtime, "int8")], runtime)
                slow = off_cache[runtime]
            row["off_fast_path"] = [{"op": s["op"], "count": s["count"]} for s in slow or []]
            row["why"] = _why_slower(runtime, slow or [], int8)
            if runtime == "onnxruntime" and int8["target"] == "local":
                row["op_ms"] = _ort_op_times(jobs, threads)
                row["why"] += _op_times_note(row["op_ms"], threads)
        rows.append(row)
    return rows


def _ort_op_times(jobs: list[Job], threads: int) -> dict[str, dict[str, float]] | None:
    """Per-op-type ms (ORT profiler, per-node medians) of the float32 and int8 files: where the time went."""
    from edgekit import profiling
    from runtimes import get_runtime

    times = {}
    try:
        for job in jobs:
            precision = precision_of(job)
            if job.runtime == "onnxruntime" and precision in ("fp32", "int8"):
                sess = get_runtime("onnxruntime").load(job.path, threads=threads)
                native = sess.prepare(bench_input(sess, job))
                prof = profiling.profile_ort(
                    job.path, threads, native, runs=OP_TIME_RUNS, precision=precision
                )
                times[precision] = prof["by_op_ms"]
    except Exception:  # an explanation, never a reason to lose the measured results
        return None
    return times if len(times) == 2 else None


def _op_times_note(op_ms: dict[str, dict[str, float]] | None, threads: int) -> str:
    if not op_ms:
        return ""
    top = {p: ", ".join(f"{op} {ms:.2f}" for op, ms in list(ops.items())[:4]) for p, ops in op_ms.items()}
    return (
        f". Per-op ms (ONNX Runtime profiler, median of {OP_TIME_RUNS} runs, {threads} thread(s)): "
        f"int8 {top['int8']}; float32 {top['fp32']}"
    )


def off_fast_path(path: Path, runtime: str) -> list[dict[str, Any]] | None:
    """The int8 file's ops outside the int8 fast path, from the graph alone (no timing)."""
    try:
        if runtime == "onnxruntime":
            return _ort_float_ops(path)
        if runtime == "litert":
            return _litert_off_delegate(path)
    except Exception:  # an explanation, never a reason to lose the measured results
        return None
    return None


def _ort_float_ops(path: Path) -> list[dict[str, Any]]:
    """Float ops left between Q/DQ in the graph ONNX Runtime runs (after its QDQ fusions)."""
    import tempfile

    import onnx

    from edgekit.profiling import ort_slow_path
    from runtimes import get_runtime

    with tempfile.TemporaryDirectory(prefix="edgekit-int8-graph-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        get_runtime("onnxruntime").load(path, threads=1, optimized_model_path=optimized)
        return ort_slow_path(onnx.load(optimized).graph)


def _litert_off_delegate(path: Path) -> list[dict[str, Any]]:
    from collections import Counter

    from runtimes import get_runtime

    ops = get_runtime("litert").load(path, threads=1).ops()
    off = Counter(op["op_name"] for op in ops if not op["delegated"])
    return [{"op": op, "count": n} for op, n in off.most_common()]


def _why_slower(runtime: str, slow: list[dict[str, Any]], int8: dict[str, Any]) -> str:
    ops = ", ".join(f"{s['op']} x{s['count']}" for s in slow if not s["op"].startswith("QuantizeLinear+"))
    if ops and runtime == "litert":
        return f"not delegated to XNNPACK, run on the TFLite kernels between delegate partitions: {ops}"
    if ops:
        return f"no int8 kernel in ONNX Runtime, float32 between DequantizeLinear and QuantizeLinear: {ops}"
    why = "every op is on the int8 path; the int8 kernels do not win on this graph and host"
    if int8.get("unstable"):
        why += f" (and the int8 run was unstable, CV {int8['cv']:.0%})"
    return why + "; see `edgekit bench DIR --profile` for the per-op times"


def _without_raw(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest keeps the statistics; the raw per-run latencies stay in --out / --json."""
    return {
        **report,
        "results": [{k: v for k, v in r.items() if k != "latencies_ms"} for r in report["results"]],
    }


# --- memory (Linux /proc; None elsewhere) ------------------------------------------------------


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return False
    return True


def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None
