"""Latency harness: every (format, engine, threads) of an artifact folder or one model file.

How a figure is measured (also written into every row's ``measured`` field):
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

The result is a :class:`BenchResult`; ``to_dict`` is what ``--json`` prints and ``bench.json`` holds.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import formats as fmts
from edgekit import machine
from edgekit.errors import ArtifactError, EdgekitError, TargetEngineError, UsageError
from edgekit.manifest import MANIFEST, FileEntry, check_writable, read_manifest, record_result, write_json
from runtimes.base import time_calls

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
OpTimes = dict[str, dict[str, float]]  # precision -> {op type or layer kind: ms per run}
LOAD_WINDOW_S = 0.5  # /proc/stat counts in clock ticks (10 ms): shorter windows say nothing


@dataclass
class Job:
    """One file to benchmark with one engine."""

    fmt: fmts.Format
    path: Path
    runtime: str
    entry: FileEntry | None = None
    macs: int | None = None


@dataclass
class BenchRow:
    """One (file, engine, threads): latency statistics and the figures derived from them."""

    format: str
    runtime: str
    target: str
    threads: int
    file: str
    precision: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cv: float
    unstable: bool
    runs: int
    warmup: int
    first_ms: float | None
    throughput: float | None
    size_bytes: int
    macs: int | None
    runtime_version: str | None
    provider: str
    input_dtype: str | None
    emulated: bool
    cpu: str | None
    measured: str = ""
    int8_path: str | None = None
    gmacs_per_s: float | None = None
    peak_gmacs_per_s: float | None = None
    peak_kind: str | None = None
    efficiency: float | None = None
    load_ms: float | None = None
    rss_delta_mb: float | None = None
    cpu_per_wall: float | None = None  # process CPU seconds per wall second over the timed runs
    load_avg: float | None = None  # the host's 1-minute load average before the timed runs
    others_cpu: float | None = None  # other processes' CPU seconds per wall second meanwhile
    note: str | None = None
    profile: dict[str, Any] | None = None
    latencies_ms: list[float] = field(default_factory=list)

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v is not None or k in _ALWAYS}
        if not raw:
            data.pop("latencies_ms")
        return data


_ALWAYS = {
    "others_cpu",
    "gmacs_per_s",
    "peak_gmacs_per_s",
    "efficiency",
    "rss_delta_mb",
    "first_ms",
    "throughput",
    "macs",
}


@dataclass
class BenchResult:
    machine: dict[str, Any]
    target: str
    method: dict[str, str]
    results: list[BenchRow]
    skipped: list[dict[str, Any]]
    int8_vs_fp32: list[dict[str, Any]]
    note: str | None = None
    stored: str | None = None

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        """``raw=False`` leaves the per-run latencies out (what the folder's bench.json keeps)."""
        data = {
            "machine": self.machine,
            "target": self.target,
            "method": self.method,
            "results": [r.to_dict(raw) for r in self.results],
            "skipped": self.skipped,
            "int8_vs_fp32": self.int8_vs_fp32,
        }
        return {**data, **({"note": self.note} if self.note else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        known = set(BenchRow.__dataclass_fields__)
        rows = [BenchRow(**{k: v for k, v in r.items() if k in known}) for r in data.get("results", [])]
        return cls(
            data.get("machine", {}),
            data.get("target", "local"),
            data.get("method", {}),
            rows,
            data.get("skipped", []),
            data.get("int8_vs_fp32", []),
            data.get("note"),
        )


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
    target_options: dict[str, Any] | None = None,
    record: bool = True,
) -> BenchResult:
    """Benchmark an artifact folder (every file x every engine that runs it) or one model file.

    ``target_options`` go to the target (ssh: key_file, known_hosts...); ``record=False`` leaves
    the folder's bench.json alone (the device farm stores one result for all its targets)."""
    threads = threads or [1]
    _check_options(threads, warmup, runs, min_time)
    if out_file:
        check_writable(Path(out_file).parent, need_bytes=1 << 20)
    folder, jobs, skipped = plan(path, runtimes, formats)
    if target != "local":
        jobs, skipped = _runnable_on(target, jobs, skipped)
    results = []
    for job in jobs:
        for n in threads:
            try:
                if target == "local":
                    results.append(measure(job, n, warmup, runs, min_time, not no_xnnpack, profile))
                else:
                    results.append(
                        measure_remote(job, n, target, warmup, runs, not no_xnnpack, timeout, target_options)
                    )
            except (_LoadError, TargetEngineError) as exc:  # this file in this engine: a skip, said why
                skipped.append({"runtime": job.runtime, "format": job.fmt.name, "reason": str(exc)})
                break
    if not results:
        reasons = "; ".join(f"{s['format'] or 'any'}/{s['runtime']}: {s['reason']}" for s in skipped)
        raise ArtifactError(f"nothing in {path} could be benchmarked ({reasons})", "re-export the files")
    flag_thread_scaling(results)
    result = BenchResult(machine.facts(), target, method(), results, skipped, int8_vs_fp32(results, jobs))
    if out_file:
        write_json(out_file, result.to_dict())
    if folder is not None and record:
        stored = record_result(folder, "bench", result.to_dict(raw=False))
        result.stored = str(stored) if stored else None
        if stored is None:
            result.note = f"{folder} is read-only: results not stored there (use --out FILE to keep them)"
    return result


def _runnable_on(target: str, jobs: list[Job], skipped: list[dict]) -> tuple[list[Job], list[dict]]:
    """Only the engines the target's runner has; the rest are skipped with the reason."""
    from runtimes.targets import ENGINES

    kept = [job for job in jobs if job.runtime in ENGINES]
    skipped = skipped + [
        {
            "runtime": job.runtime,
            "format": job.fmt.name,
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
        "host load": "during the timed runs: this process's CPU-s per wall s (cpu_per_wall), other "
        "processes' CPU-s per wall s from /proc/stat (others_cpu) and the 1-min load average before; a "
        "row slower with more threads than with 1 is flagged with the reason those figures give",
    }


# --- what to run -------------------------------------------------------------------------------


def plan(
    path: str | os.PathLike[str], wanted: list[str] | None, formats: list[str] | None = None
) -> tuple[Path | None, list[Job], list[dict]]:
    """(artifact folder or None, jobs, skipped): each file with each available engine that runs it
    (its format's engines first, then plug-in engines that load its suffix)."""
    from runtimes import get_runtime, runtime_names, runtimes_for_file

    path = Path(path)
    names = [get_runtime(w).name for w in wanted or []]  # an unknown name is a usage error, not a skip
    folder, files, macs = _files(path)
    chosen = fmts.select(list(files), formats)
    jobs, skipped, used = [], [], set()
    for name in chosen:
        fmt, file, entry = files[name]
        for engine in dict.fromkeys([*fmt.engines, *runtimes_for_file(file)]):
            if names and engine not in names:
                continue
            used.add(engine)
            ok, reason = get_runtime(engine).available()
            if ok:
                jobs.append(Job(fmt, file, engine, entry, macs))
            else:
                skipped.append({"runtime": engine, "format": fmt.name, "reason": reason})
    for name in names:
        if name not in used:
            skipped.append({"runtime": name, "format": None, "reason": f"no file here that {name} loads"})
    if not jobs and not skipped:
        raise ArtifactError(f"nothing to benchmark in {path}", f"runtimes: {', '.join(runtime_names())}")
    return folder, jobs, skipped


def _files(
    path: Path,
) -> tuple[Path | None, dict[str, tuple[fmts.Format, Path, FileEntry | None]], int | None]:
    if path.is_dir():
        manifest = read_manifest(path)
        files = {name: (fmts.get(name), manifest.file(name), entry) for name, entry in manifest.files.items()}
        return path, files, manifest.model.get("macs")
    if not path.is_file():
        raise UsageError(f"{path} is neither an artifact folder nor a model file", "pass a folder or a file")
    if (path.parent / MANIFEST).is_file():
        manifest = read_manifest(path.parent, check_hashes=False)
        for name, entry in manifest.files.items():
            if entry.path == path.name:
                return None, {name: (fmts.get(name), path, entry)}, manifest.model.get("macs")
    fmt = fmts.for_file(path)
    return None, {fmt.name: (fmt, path, None)}, None


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
) -> BenchRow:
    """One configuration, in this process: load, warm up, time, and the numbers around it."""
    from runtimes import get_runtime

    opts = {"xnnpack": xnnpack} if job.runtime == "litert" else {}
    gc.collect()
    tracked = _reset_peak_rss()
    rss_before = _status_kb("VmRSS")
    start = time.perf_counter()
    runtime = get_runtime(job.runtime)
    try:
        sess = runtime.load(job.path, threads=threads, **opts)
    except Exception as exc:  # a file the engine rejects is a skip with its reason, not a crash
        raise _LoadError(f"{job.runtime} cannot load {job.path.name}: {type(exc).__name__}: {exc}") from exc
    load_ms = (time.perf_counter() - start) * 1e3
    native = sess.prepare(bench_input(sess, job))
    first_ms = time_calls(lambda: sess.invoke(native), 1)[0]
    warmed = _warm_up(sess, native, warmup)
    latencies, load = _timed_under_load(sess, native, runs, min_time)
    rss_delta = (_status_kb("VmHWM") - rss_before) / 1024 if tracked and rss_before else None
    row = _row(job, threads, latencies, warmed, first_ms, sess.describe())
    row.load_ms = round(load_ms, 3)
    row.rss_delta_mb = None if rss_delta is None else round(rss_delta, 2)
    row.cpu_per_wall, row.others_cpu, row.load_avg = load
    if profile:
        row.profile = runtime.profile(job.path, threads, native, PROFILE_RUNS, job.fmt.precision)
    return row


def measure_remote(
    job: Job,
    threads: int,
    target: str,
    warmup: int | None,
    runs: int | None,
    xnnpack: bool = True,
    timeout: float | None = None,
    target_options: dict[str, Any] | None = None,
) -> BenchRow:
    """One configuration on a target (emulated Pi, SSH, adb) through the standalone runner."""
    from runtimes.targets import get_target

    options = {**(target_options or {}), **({"timeout": timeout} if timeout else {})}
    raw = get_target(target, **options).run(
        job.path,
        job.runtime,
        threads=threads,
        warmup=3 if warmup is None else warmup,
        runs=runs or 30,
        no_xnnpack=not xnnpack,
    )
    desc = {
        "runtime": job.runtime,
        "version": raw.get("engine_version"),
        "delegate": "XNNPACK" if raw.get("xnnpack") else None,
        "input": raw.get("input", {}),
    }
    return _row(
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


def bench_input(sess: Any, job: Job) -> np.ndarray:
    """A seeded standard-normal float32 batch of 1 in the session's layout."""
    shape = list(sess.input.get("shape") or [])
    if not shape or any(d is None for d in shape[1:]):
        shape = list(((job.entry.info if job.entry else {}).get("input") or {}).get("shape") or [])
    if not shape or any(d is None for d in shape[1:]):
        raise ArtifactError(f"{job.path.name}: input shape unknown", "re-export with a static input shape")
    shape[0] = 1
    return np.random.default_rng(SEED).standard_normal(shape, dtype=np.float32)


def _warm_up(sess: Any, native: Any, warmup: int | None) -> int:
    """Run until the median settles (or exactly ``warmup`` runs); returns the runs used."""
    call = lambda: sess.invoke(native)  # noqa: E731
    if warmup is not None:
        time_calls(call, warmup)
        return warmup
    done, previous, start = 0, None, time.perf_counter()
    for _ in range(MAX_WINDOWS):
        median = statistics.median(time_calls(call, WINDOW))
        done += WINDOW
        if previous is not None and abs(median - previous) <= SETTLE * previous:
            break
        if time.perf_counter() - start > MAX_WARMUP_S:
            break
        previous = median
    return done


def _timed_under_load(
    sess: Any, native: Any, runs: int | None, min_time: float
) -> tuple[list[float], tuple[float, float | None, float]]:
    """The timed runs, and how the host was shared meanwhile: (this process's CPU-s per wall s,
    other processes' CPU-s per wall s, 1-minute load average before)."""
    load_avg = os.getloadavg()[0]
    host_before, cpu_before, wall_before = _host_busy_s(), time.process_time(), time.perf_counter()
    latencies = _timed_runs(sess, native, runs, min_time)
    wall = time.perf_counter() - wall_before
    own = (time.process_time() - cpu_before) / wall
    host_after = _host_busy_s()
    others = None
    if host_before is not None and host_after is not None and wall >= LOAD_WINDOW_S:
        cores = os.cpu_count() or 1
        others = round(min(max((host_after - host_before) / wall - own, 0.0), cores), 3)
    return latencies, (round(own, 3), others, round(load_avg, 2))


def _timed_runs(sess: Any, native: Any, runs: int | None, min_time: float) -> list[float]:
    call = lambda: sess.invoke(native)  # noqa: E731
    if runs is not None:
        return time_calls(call, runs)
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) < MIN_RUNS or (time.perf_counter() - start < min_time and len(latencies) < MAX_RUNS):
        latencies += time_calls(call, 1)
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


def _row(
    job: Job,
    threads: int,
    latencies: list[float],
    warmup: int,
    first_ms: float | None,
    desc: dict[str, Any],
    target: str = "local",
    emulated: bool = False,
    remote: dict[str, Any] | None = None,
) -> BenchRow:
    stats = latency_stats(latencies)
    precision = str(job.fmt.precision)
    where = (remote or {}).get("machine") or machine.facts()
    row = BenchRow(
        format=job.fmt.name,
        runtime=job.runtime,
        target=target,
        threads=threads,
        file=job.path.name,
        precision=precision,
        **stats,
        warmup=warmup,
        first_ms=None if first_ms is None else round(first_ms, 4),
        throughput=round(1000.0 / stats["mean_ms"], 2) if stats["mean_ms"] else None,
        size_bytes=job.path.stat().st_size,
        macs=job.macs,
        runtime_version=desc.get("version"),
        provider=desc.get("provider") or desc.get("delegate") or "builtin kernels",
        input_dtype=(desc.get("input") or {}).get("dtype"),
        emulated=emulated,
        cpu=where.get("cpu"),
        int8_path=machine.int8_path(where) if job.fmt.int8 else None,
        latencies_ms=[round(t, 4) for t in latencies],
    )
    if row.unstable:
        row.note = (
            f"unstable: CV {row.cv:.0%} > {CV_LIMIT:.0%} (a busy or throttling host); "
            "re-run with more --min-time or on an idle machine"
        )
    _efficiency(row, local=remote is None)
    row.measured = _measured_note(row)
    return row


def flag_thread_scaling(rows: list[BenchRow]) -> None:
    """A row with more threads but a higher p50 than the same file's 1-thread row gets a note with
    the measured reason: the host was busy (load average before the run), the engine's threads did
    not get the cores (process CPU time per wall second), or neither (the work is too small to split)."""
    single = {(r.format, r.runtime, r.target): r for r in rows if r.threads == 1}
    cores = os.cpu_count() or 1
    for row in rows:
        one = single.get((row.format, row.runtime, row.target))
        if one is None or row.threads == 1 or row.p50_ms <= one.p50_ms:
            continue
        slower = f"{row.threads} threads slower than 1 (p50 {row.p50_ms:.3g} vs {one.p50_ms:.3g} ms)"
        if row.others_cpu is not None and row.others_cpu + row.threads > cores + 0.25:
            reason = (
                f"host busy: other processes used {row.others_cpu:.2f} of {cores} cores during the runs "
                f"(load average {row.load_avg:.2f}); re-run on an idle host"
            )
        elif row.cpu_per_wall is not None and row.cpu_per_wall < 0.75 * min(row.threads, cores):
            reason = (
                f"the threads did not get the cores: {row.cpu_per_wall:.2f} CPU-s per s "
                f"for {row.threads} threads (another process had them)"
            )
        else:
            reason = "the cores were free: the engine's split costs more than it saves at this size"
        row.note = "; ".join(filter(None, [row.note, f"{slower}: {reason}"]))


def _host_busy_s() -> float | None:
    """CPU seconds the whole host has spent busy since boot (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _efficiency(row: BenchRow, local: bool) -> None:
    """Achieved GMAC/s and its fraction of this host's peak (only for local runs: the peak is this host's)."""
    if not row.macs or not row.p50_ms:
        return
    achieved = row.macs / (row.p50_ms / 1e3) / 1e9
    row.gmacs_per_s = _significant(achieved)
    if local:
        row.peak_kind = "int8" if row.precision == "int8" else "fp32"
        peak = machine.peak_gmacs(row.peak_kind, row.threads)
        row.peak_gmacs_per_s = _significant(peak)
        row.efficiency = _significant(achieved / peak)


def _significant(value: float, digits: int = 4) -> float:
    # Significant digits, not decimals: a tiny int8 model's efficiency is ~0.003.
    return float(f"{value:.{digits}g}")


def _measured_note(r: BenchRow) -> str:
    where = f"{r.target} ({'emulated' if r.emulated else 'real'}, {r.cpu})"
    path = f", int8 path {r.int8_path}" if r.int8_path else ""
    return (
        f"{r.runtime} {r.runtime_version} [{r.provider}], {r.threads} thread(s), "
        f"{r.runs} runs after {r.warmup} warm-up, batch 1, {where}{path}"
    )


# --- int8 against float32 -----------------------------------------------------------------------


def int8_vs_fp32(results: list[BenchRow], jobs: list[Job]) -> list[dict[str, Any]]:
    """Per engine and thread count: int8 p50 over float32 p50 of the same engine, and when int8 is
    not faster, the ops of the int8 file that fell off the int8 fast path (from the profile when
    ``--profile`` ran, else read from the graph the engine executes)."""
    from runtimes import get_runtime

    by_key = {(r.runtime, r.threads, r.precision): r for r in results}
    paths = {j.runtime: j.path for j in jobs if j.fmt.int8}
    rows, off_cache = [], {}
    for (runtime, threads, precision), int8 in by_key.items():
        fp32 = by_key.get((runtime, threads, "fp32"))
        if precision != "int8" or fp32 is None or not fp32.p50_ms:
            continue
        ratio = int8.p50_ms / fp32.p50_ms
        row = {
            "runtime": runtime,
            "threads": threads,
            "fp32_format": fp32.format,
            "int8_format": int8.format,
            "fp32_p50_ms": fp32.p50_ms,
            "int8_p50_ms": int8.p50_ms,
            "ratio": round(ratio, 3),
            "int8_faster": ratio < 1.0,
            "measured": int8.measured,
        }
        if ratio >= 1.0:
            slow = (int8.profile or {}).get("slow_path")
            if slow is None and runtime in paths:
                if runtime not in off_cache:
                    off_cache[runtime] = _explained(lambda r=runtime: get_runtime(r).slow_path(paths[r]))
                slow = off_cache[runtime]
            row["off_fast_path"] = [{"op": s["op"], "count": s["count"]} for s in slow or []]
            row["why"] = _why_slower(runtime, slow or [], int8)
            if int8.target == "local":
                row["op_ms"], row["kind_ms"] = _op_times(jobs, runtime, threads)
                row["why"] += _off_path_share(row, int8.p50_ms - fp32.p50_ms)
                row["why"] += _op_times_note(row["op_ms"], threads) + _losing_kinds(row["kind_ms"])
        rows.append(row)
    return rows


def _explained(explain: Any) -> Any:
    try:
        return explain()
    except Exception:  # an explanation, never a reason to lose the measured results
        return None


def _op_times(jobs: list[Job], runtime: str, threads: int) -> tuple[OpTimes | None, OpTimes | None]:
    """Per-op-type and per-layer-kind ms (the engine's profiler) of the float32 and int8 files:
    where the time went."""
    from runtimes import get_runtime

    engine = get_runtime(runtime)
    by_op, by_kind = {}, {}
    for job in jobs:
        precision = str(job.fmt.precision)
        if job.runtime != runtime or precision not in ("fp32", "int8"):
            continue
        native = _explained(lambda j=job: _prepared(engine, j, threads))
        if native is None:
            continue
        prof = _explained(
            lambda j=job, p=precision, x=native: engine.profile(j.path, threads, x, OP_TIME_RUNS, p)
        )
        if prof and prof.get("by_op_ms"):
            by_op[precision], by_kind[precision] = prof["by_op_ms"], prof.get("by_category_ms") or {}
    return (by_op, by_kind) if len(by_op) == 2 else (None, None)


def _prepared(engine: Any, job: Job, threads: int) -> Any:
    sess = engine.load(job.path, threads=threads)
    return sess.prepare(bench_input(sess, job))


def _op_times_note(op_ms: OpTimes | None, threads: int) -> str:
    if not op_ms:
        return ""
    top = {p: ", ".join(f"{op} {ms:.2f}" for op, ms in list(ops.items())[:4]) for p, ops in op_ms.items()}
    return (
        f". Per-op ms (the engine's profiler, median of {OP_TIME_RUNS} runs, {threads} thread(s)): "
        f"int8 {top['int8']}; float32 {top['fp32']}"
    )


def _losing_kinds(kind_ms: OpTimes | None) -> str:
    """The layer kinds whose int8 kernels take longer than their float32 ones, largest loss first:
    the measured answer to "which kernels make int8 slower here"."""
    if not kind_ms:
        return ""
    int8, fp32 = kind_ms["int8"], kind_ms["fp32"]
    lost = sorted(
        ((kind, ms, fp32.get(kind, 0.0)) for kind, ms in int8.items() if ms > fp32.get(kind, 0.0)),
        key=lambda k: k[2] - k[1],
    )
    if not lost:
        return ""
    shown = ", ".join(f"{kind} {ms:.2f} vs {ref:.2f}" for kind, ms, ref in lost)
    return f". Layer kinds slower in int8 (ms, int8 vs float32): {shown}"


def _off_path_share(row: dict[str, Any], gap_ms: float) -> str:
    """How much of the int8 file's extra time its off-fast-path ops take (the engine's profiler):
    a small share means the int8 kernels themselves lose, whatever the off-path list says."""
    int8_ms = (row.get("op_ms") or {}).get("int8") or {}
    off = sum(int8_ms.get(o["op"], 0.0) for o in row["off_fast_path"])
    if not off or gap_ms <= 0:
        return ""
    return f" (those ops take {off:.2f} ms of the {gap_ms:.2f} ms by which int8 is slower)"


def _why_slower(runtime: str, slow: list[dict[str, Any]], int8: BenchRow) -> str:
    ops = ", ".join(f"{s['op']} x{s['count']}" for s in slow if not s["op"].startswith("QuantizeLinear+"))
    if ops and runtime == "litert":
        return f"not delegated to XNNPACK, run on the TFLite kernels between delegate partitions: {ops}"
    if ops:
        return f"no int8 kernel in {runtime}, float32 between DequantizeLinear and QuantizeLinear: {ops}"
    host = f"this CPU's int8 path ({int8.int8_path})" if int8.int8_path else "this host"
    why = f"every op is on the int8 path; the int8 kernels do not win on this graph and {host}"
    if int8.unstable:
        why += f" (and the int8 run was unstable, CV {int8.cv:.0%})"
    return why + "; see `edgekit bench DIR --profile` for the per-op times"


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
