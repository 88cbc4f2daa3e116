"""``edgekit export``: orchestration only.

Steps, in order: check the inputs -> build the network (:mod:`edgekit.build`) -> each float format
of the registry (:mod:`edgekit.formats`), written by its writer and verified in its engine
(:mod:`edgekit.verify`) -> the int8 formats from one calibration (:mod:`calibration.int8`) ->
manifest.json and report.md (:mod:`edgekit.report`). Everything is written into a staging folder
swapped in only when all steps passed, so a failed export leaves an earlier good folder untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration.config import QuantConfig
from calibration.threads import torch_threads
from edgekit import formats as fmts
from edgekit.build import Built, build, check_args
from edgekit.console import Steps
from edgekit.errors import UsageError
from edgekit.formats import Format, WriteRequest
from edgekit.lanes import Forked, Lane, usable_cores
from edgekit.lanes import plan as plan_lanes
from edgekit.machine import versions
from edgekit.manifest import FileEntry, Manifest, check_path, check_writable, staged_dir, write_manifest
from edgekit.verify import Checker, check, exactness_paths


def export(
    name: str | Any,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    formats: list[str] | None = None,
    argv: list[str] | None = None,
    width: float | None = None,
    resolution: int | None = None,
    groups: int | None = None,
    pretrained: bool = False,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    labels: str | os.PathLike[str] | list[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    dynamic_batch: bool = False,
    int8: bool = False,
    seed: int = 0,
    jobs: int | None = None,
    **quant_options: Any,
) -> Manifest:
    """Export ``name`` (a zoo name, ``file.py:factory`` or an ``nn.Module``) to the requested
    formats in ``out_dir``; returns the manifest. ``weights``: a training checkpoint for a zoo
    network; ``preprocess``: overrides of mean, std, resize, resolution, interpolation, color;
    ``jobs``: processes writing files side by side (:mod:`edgekit.lanes`; default 1 here, one per
    core from the CLI: a fork copies no other thread, and a caller's threads may hold locks)."""
    config = QuantConfig.from_options(seed=seed, **quant_options)
    chosen = fmts.resolve(formats, int8)
    _preflight(name, resolution, out_dir, chosen, int8, config, quant_options, jobs)
    for option, path in (("--weights", weights), ("--labels", labels)):
        if isinstance(path, (str, os.PathLike)) and not check_path(path, option).is_file():
            raise UsageError(f"{option} {path} does not exist", f"pass an existing file to {option}")
    lanes = plan_lanes(chosen, jobs or 1)
    shown = name if isinstance(name, str) else type(name).__name__
    with Steps("edgekit export", 2 + _step_count(lanes)) as steps:
        with steps.step(f"build {shown}"):
            built = build(
                name,
                width=width,
                resolution=resolution,
                groups=groups,
                pretrained=pretrained,
                weights=weights,
                num_classes=num_classes,
                labels=labels,
                preprocess=preprocess,
                seed=seed,
            )
        out = Path(out_dir) if out_dir else Path("artifacts") / built.name
        _check_space(out, built.info["params"], chosen)
        with staged_dir(out) as stage:
            manifest = _new_manifest(built, dynamic_batch, argv)
            manifest.labels = built.labels or _folder_labels(config.calib, built)
            work = LaneWork(stage, built, Checker(built.model, built.spec, seed), config, dynamic_batch)
            _write_lanes(lanes, work, manifest, steps)
            with steps.step("manifest.json + report.md"):
                from edgekit.report import write_report

                manifest.timings.update(steps.times)
                write_manifest(stage, manifest)
                write_report(stage)
        manifest.folder = str(out)
    return manifest


@dataclass
class LaneWork:
    """What every lane writes from: the staging folder, the network, its checker, the int8 config."""

    stage: Path
    built: Built
    checker: Checker
    config: QuantConfig
    dynamic_batch: bool


def _step_count(lanes: list[Lane]) -> int:
    main = lanes[0].formats
    return len(main) + any(f.int8 for f in main) + len(lanes) - 1


def _write_lanes(lanes: list[Lane], work: LaneWork, manifest: Manifest, steps: Steps) -> None:
    """The main lane here, shown step by step; every other lane in a forked process, merged after.
    Files keep the registry's order whichever lane wrote them."""
    others = [Forked(lane.describe(), _write_part, lane, work, manifest) for lane in lanes[1:]]
    try:
        with torch_threads(max(1, usable_cores() - len(others))):  # each forked lane holds a core
            _write_lane(lanes[0], work, manifest, steps.step)
        for lane, child in zip(lanes[1:], others, strict=True):
            with steps.step(f"{lane.describe()} (second process)"):
                _merge(manifest, child.result())
    finally:
        for child in others:
            child.stop()
    order = list(fmts.registry())
    manifest.files = {n: manifest.files[n] for n in sorted(manifest.files, key=order.index)}


def _write_part(lane: Lane, work: LaneWork, manifest: Manifest) -> Manifest:
    """A forked lane's body: its files, timings and calibration record in a blank manifest."""
    part = dataclasses.replace(manifest, files={}, timings={}, calibration=None)
    _write_lane(lane, work, part, functools.partial(_timed, part.timings))
    return part


def _merge(manifest: Manifest, part: Manifest) -> None:
    manifest.files.update(part.files)
    manifest.timings.update(part.timings)
    if part.calibration is not None:
        from calibration.int8 import merge_records

        manifest.calibration = merge_records(manifest.calibration, part.calibration)


@contextlib.contextmanager
def _timed(times: dict[str, float], what: str) -> Iterator[None]:
    """A step of a forked lane: timed into its manifest like the main lane's displayed steps."""
    start = time.perf_counter()
    yield
    times[what] = round(time.perf_counter() - start, 2)


def _write_lane(
    lane: Lane, work: LaneWork, manifest: Manifest, step: Callable[[str], ContextManager[None]]
) -> None:
    """A lane's float files, then its int8 files from one calibration."""
    floats, int8s = [f for f in lane.formats if not f.int8], [f for f in lane.formats if f.int8]
    for fmt in floats:
        with step(f"{fmt.name} ({fmt.filename})"):
            _write(fmt, work.stage, manifest, work.built.model, work.checker, work.dynamic_batch)
    if int8s:
        _write_int8(int8s, manifest, work, step)


def _folder_labels(calib: Any, built: Built) -> list[str] | None:
    """The calibration folder's sorted class folders, when there is one per output (ImageFolder)."""
    from calibration.sources import class_folders

    if not isinstance(calib, (str, os.PathLike)) or not Path(calib).is_dir():
        return None
    folders = class_folders(calib)
    return folders if folders and len(folders) == built.info["args"]["num_classes"] else None


def _preflight(
    name: str | Any,
    resolution: int | None,
    out_dir: str | os.PathLike[str] | None,
    chosen: list[Format],
    int8: bool,
    config: QuantConfig,
    options: dict[str, Any],
    jobs: int | None,
) -> None:
    """Everything that can be checked before any work: a typo costs a second, not an export."""
    given = [k for k, v in options.items() if v not in (None, False)]
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs {jobs}: needs at least 1", "pass --jobs 1 to write every file in one go")
    if given and not int8:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"int8 options without --int8: {flags}", "add --int8 or drop them")
    fmts.check_available(chosen)
    if isinstance(name, str):
        check_args(name, resolution)
    check_writable(check_path(out_dir, "--out") if out_dir else Path("artifacts"))
    if int8:
        from calibration.sources import check_source

        check_source(config.calib, config.calib_samples)


BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}


def _check_space(out: Path, params: int, chosen: list[Format]) -> None:
    """Room for every file this export writes, and for the int8 step's temporary copies: the
    converters abort natively (no error to catch) when the disk fills under them."""
    import tempfile

    from edgekit.manifest import MIN_FREE_BYTES

    per_param = sum(BYTES_PER_PARAM[f.precision] for f in chosen)
    check_writable(out, int(1.5 * params * per_param) + MIN_FREE_BYTES)
    if any(f.int8 for f in chosen):
        check_writable(Path(tempfile.gettempdir()), int(params * 12) + MIN_FREE_BYTES)


def _write(
    fmt: Format,
    stage: Path,
    manifest: Manifest,
    model: Any,
    checker: Checker,
    dynamic_batch: bool = False,
    int8: Any = None,
) -> dict[str, Any]:
    """Write one format with its writer, verify it in its engine (a failed gate raises), record it.
    Returns the writer's activation ranges (int8), which the calibration record keeps."""
    dynamic = dynamic_batch and fmt.dynamic_batch
    request = WriteRequest(
        model=model,
        example=checker.example(batch=2 if dynamic else 1),  # torch.export specialises a batch of 1
        path=stage / fmt.filename,
        source=stage / manifest.files[fmt.source].path if fmt.source else None,
        dynamic_batch=dynamic,
        int8=int8,
    )
    start = time.perf_counter()
    info = fmt.load_writer()(request)
    wrote = time.perf_counter()
    ranges = info.pop("activation_ranges", None)
    if "exactness" in info:
        info["exactness"] = exactness_paths(info["exactness"])
    result = checker.verify(request.path, fmt)
    check(fmt.name, result)
    manifest.files[fmt.name] = FileEntry.of(stage, fmt, info, result)
    manifest.timings[f"{fmt.name}: write"] = round(wrote - start, 2)
    manifest.timings[f"{fmt.name}: verify"] = round(time.perf_counter() - wrote, 2)
    return ranges or {}


def _write_int8(
    int8s: list[Format], manifest: Manifest, work: LaneWork, step: Callable[[str], ContextManager[None]]
) -> None:
    """One calibration for the lane's int8 formats; each file verified against its remedied model."""
    from calibration import int8

    built, checker = work.built, work.checker
    with step(f"int8 calibration ({', '.join(f.name for f in int8s)})"):
        prepared = int8.prepare(built.model, built.spec, work.config, int8s, checker.inputs["images"][:1])
    for fmt in int8s:
        model, request = prepared.requests[fmt.name]
        with step(f"{fmt.name} ({fmt.filename})"):
            ranges = _write(fmt, work.stage, manifest, model, checker.for_model(model), int8=request)
        prepared.record["activation_ranges"][fmt.family] = int8.rounded_ranges(ranges)
    manifest.calibration = prepared.record


def _new_manifest(built: Built, dynamic_batch: bool, argv: list[str] | None) -> Manifest:
    res = built.spec.resolution
    return Manifest(
        model=built.info,
        input={"shape": ["batch" if dynamic_batch else 1, 3, res, res], "dtype": "float32", "layout": "NCHW"},
        preprocess=built.spec.to_dict(),
        tools=versions(),
        command=list(argv or []),
    )
