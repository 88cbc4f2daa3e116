"""A device farm: ``edgekit bench DIR --target ssh://pi@a --target ssh://pi@b ...``.

Each target's benchmark (:func:`edgekit.bench.bench`, unchanged) runs in its own thread. The work
happens on the boards; the threads only wait on their ssh/scp/adb processes, so a thread pool is
enough and Ray is not needed here (docs/scale.md: the measurement). A target that cannot be
reached or fails is reported with its error and the others finish. The rows of all targets form
one :class:`~edgekit.bench.BenchResult` (each row names its target), stored as the folder's
bench.json; ``farm`` in the JSON says how each target went and how long it took.

Exit status of the command: 0 when every target gave its rows, 1 otherwise (the table and the JSON
still hold every target that succeeded).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, TargetError, UsageError


@dataclass
class Outcome:
    """One target of the farm: its result or its error, and the wall time it took."""

    target: str
    seconds: float
    rows: int = 0
    error: str | None = None


@dataclass
class FarmResult:
    bench: Any  # edgekit.bench.BenchResult: every target's rows
    outcomes: list[Outcome]
    wall_s: float

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    def to_dict(self, raw: bool = True) -> dict[str, Any]:
        farm = {
            "targets": [asdict(o) for o in self.outcomes],
            "wall_s": self.wall_s,
            "sum_of_targets_s": round(sum(o.seconds for o in self.outcomes), 2),
            "how": "one thread per target, all at once; each target's runs in turn on it",
        }
        return {**self.bench.to_dict(raw), "farm": farm}


def bench_farm(
    path: str | os.PathLike[str],
    targets: list[str],
    out_file: str | os.PathLike[str] | None = None,
    target_options: dict[str, Any] | None = None,
    **options: Any,
) -> FarmResult:
    """Benchmark ``path`` on every target at once; ``options`` as for :func:`edgekit.bench.bench`."""
    from edgekit import bench, machine
    from edgekit.manifest import check_writable, record_result, write_json

    if len(set(targets)) != len(targets):
        raise UsageError(f"a --target is given twice: {', '.join(targets)}", "name each board once")
    if "local" in targets:
        raise UsageError(
            "--target local in a farm would time this host while it drives the others",
            "benchmark local on its own, or leave it out of the farm",
        )
    if out_file:
        check_writable(Path(out_file).parent, need_bytes=1 << 20)
    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="edgekit-farm") as pool:
        futures = [
            pool.submit(_one, path, target, {**options, "target_options": target_options})
            for target in targets
        ]
        done = [future.result() for future in futures]
    wall = round(time.perf_counter() - began, 2)
    outcomes = [outcome for outcome, _ in done]
    results = [result for _, result in done if result is not None]
    if not results:
        errors = "; ".join(f"{o.target}: {o.error}" for o in outcomes)
        raise TargetError(f"no target could be benchmarked ({errors})", "check the boards and --target")
    merged = bench.BenchResult(
        machine.facts(),
        ", ".join(targets),
        {**bench.method(), "farm": "targets measured at once, one thread each (docs/scale.md)"},
        [row for result in results for row in result.results],
        [skip for result in results for skip in result.skipped]
        + [
            {"runtime": "any", "format": None, "reason": f"{o.target}: {o.error}"}
            for o in outcomes
            if o.error
        ],
        [entry for result in results for entry in result.int8_vs_fp32],
    )
    farm = FarmResult(merged, outcomes, wall)
    if out_file:
        write_json(out_file, farm.to_dict())
    if Path(path).is_dir():
        stored = record_result(path, "bench", merged.to_dict(raw=False))
        merged.stored = str(stored) if stored else None
        if stored is None:
            merged.note = f"{path} is read-only: results not stored there (use --out FILE to keep them)"
    return farm


def _one(path: str | os.PathLike[str], target: str, options: dict[str, Any]) -> tuple[Outcome, Any]:
    from edgekit import bench

    began = time.perf_counter()
    try:
        result = bench.bench(path, target=target, record=False, **options)
    except EdgekitError as exc:
        return Outcome(target, round(time.perf_counter() - began, 2), error=str(exc)), None
    return Outcome(target, round(time.perf_counter() - began, 2), rows=len(result.results)), result


def print_farm(result: dict[str, Any]) -> None:
    """One table, a row per (target, file, engine, threads); the failed targets are the caller's."""
    from edgekit.report.tables import render

    rows = [
        [
            r["target"],
            r["format"],
            r["runtime"],
            r["threads"],
            *(round(r[k], 3) for k in ("p50_ms", "p90_ms")),
            f"{r['cv']:.0%}" + ("!" if r["unstable"] else ""),
            r["runs"],
            r.get("cpu"),
        ]
        for r in result["results"]
    ]
    farm = result["farm"]
    caption = (
        f"ms per inference, batch 1, measured on each target; {len(farm['targets'])} targets at once in "
        f"{farm['wall_s']:.1f} s (their own times add up to {farm['sum_of_targets_s']:.1f} s); ! = CV > 10%"
    )
    columns = ["target", "format", "runtime", "thr", "p50", "p90", "CV", "runs", "cpu"]
    render("edgekit bench (farm)", columns, rows, caption)
