"""`make pi-bench`: the zoo's float32 and int8 ONNX/TFLite files on a Raspberry Pi.

With ``PI_HOST=user@host[:port]`` the files run on that Pi over SSH (1 and 4 threads) and the
times are measurements. Without it they run on the emulated Pi 4 (qemu user-mode, arm64 Debian) at
a reduced resolution and run count: those times say nothing about a Pi, so the README leads with
``edgekit estimate``'s *estimates* and uses the emulator for what it can show, namely whether the
ARM kernels give the same outputs as x86. Both modes check ARM outputs against this machine's.

    python -m edgekit.studies.pibench --out bench/pi [--models mobilenet_v2,shufflenet_v2] [--runs 2]
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import click

from edgekit.errors import EdgekitError

FAMILIES = ("onnx", "tflite")  # float32 and int8 of each, run by the format's engine on the Pi
EMULATED = {"target": "pi4-emu", "resolution": 64, "runs": 2, "warmup": 0, "threads": [1]}
DEVICE = {"resolution": None, "runs": 30, "warmup": 5, "threads": [1, 4]}
CHECK_BATCH = 2  # samples compared ARM vs x86


def pibench(
    out_dir: str | os.PathLike[str],
    *,
    models: list[str] | None = None,
    host: str | None = None,
    resolution: int | None = None,
    runs: int | None = None,
    threads: list[int] | None = None,
    **ssh_options: Any,
) -> dict[str, Any]:
    """Export, run and compare every model; write ``results.json`` and ``README.md`` in ``out_dir``."""
    from edgekit.manifest import write_json, write_text
    from edgekit.zoo.registry import list_models
    from runtimes.targets import get_target

    plan = dict(DEVICE if host else EMULATED)
    plan.update({k: v for k, v in {"resolution": resolution, "runs": runs, "threads": threads}.items() if v})
    target = get_target(f"ssh://{host}", **ssh_options) if host else get_target(str(plan["target"]))
    target.check()
    out = Path(out_dir)
    rows = []
    for name in models or list_models():
        folder = _export(name, out / "artifacts" / name, plan["resolution"])
        rows += bench_folder(name, folder, target, plan)
    results = {
        "target": target.name,
        "emulated": target.emulated,
        "plan": plan,
        "host": _host(),
        "rows": rows,
    }
    write_json(out / "results.json", results)
    write_text(out / "README.md", readme(results))
    return results


def _export(name: str, folder: Path, resolution: int | None) -> Path:
    from edgekit import pipeline

    click.echo(f"pi-bench: export {name}", err=True)
    pipeline.export(
        name, out_dir=folder, formats=list(FAMILIES), resolution=resolution, int8=True, calib_samples=16
    )
    return folder


def bench_folder(name: str, folder: Path, target: Any, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for every float32/int8 ONNX and TFLite file of an artifact folder, checked against x86."""
    from edgekit import formats
    from edgekit.manifest import read_manifest
    from runtimes.targets.local import LocalTarget

    manifest = read_manifest(folder)
    resolution = int(manifest.preprocess["resolution"])
    local = LocalTarget()
    rows = []
    for fmt in formats.registry().values():
        if fmt.name not in manifest.files or fmt.family not in FAMILIES or fmt.precision == "fp16":
            continue
        path = manifest.file(fmt.name)
        batch = check_batch(str(fmt.layout), resolution)
        reference = local.run(path, fmt.engine, warmup=0, runs=1, inputs=batch)["outputs"]
        for n in plan["threads"]:
            click.echo(f"pi-bench: {name} {fmt.name} on {target.name}, {n} thread(s)", err=True)
            result = target.run(
                path, fmt.engine, threads=n, warmup=plan["warmup"], runs=plan["runs"], inputs=batch
            )
            rows.append(_row(name, fmt.name, fmt.engine, n, result, reference, plan))
    return rows


def check_batch(layout: str, resolution: int) -> Any:
    """Seeded standard-normal samples in the file's layout (the same for x86 and ARM)."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((CHECK_BATCH, 3, resolution, resolution), dtype=np.float32)
    return x.transpose(0, 2, 3, 1).copy() if layout == "NHWC" else x


def _row(
    name: str,
    fmt: str,
    engine: str,
    threads: int,
    result: dict[str, Any],
    reference: Any,
    plan: dict[str, Any],
) -> dict[str, Any]:
    import numpy as np

    outputs = result["outputs"]
    return {
        "model": name,
        "format": fmt,
        "engine": engine,
        "engine_version": result["engine_version"],
        "threads": threads,
        "resolution": plan["resolution"],
        "runs": plan["runs"],
        "warmup": plan["warmup"],
        "median_ms": round(statistics.median(result["latencies_ms"]), 3),
        "first_ms": result["first_ms"],
        "latencies_ms": result["latencies_ms"],
        "emulated": result["emulated"],
        "target": result["target"],
        "machine": result["machine"],
        "arm_vs_x86": {
            "top1_agreement": float((outputs.argmax(-1) == reference.argmax(-1)).mean()),
            "max_abs_diff": float(np.abs(outputs - reference).max()),
            "samples": len(outputs),
        },
        "estimate_ms": _estimate(name, threads, fmt.endswith("int8")),
    }


def _estimate(name: str, threads: int, int8: bool) -> float | None:
    """``edgekit estimate`` for a Pi 4 at the model's own resolution (None if it cannot say)."""
    from edgekit.studies import estimate

    try:
        return estimate.estimate(name, device="rpi4", threads=threads, int8=int8)["total_ms"]
    except EdgekitError:
        return None


def _host() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --- README -------------------------------------------------------------------------------------


def readme(results: dict[str, Any]) -> str:
    plan, rows = results["plan"], results["rows"]
    if results["emulated"]:
        lines = [
            "# Raspberry Pi benchmark — emulated (no Pi was measured)",
            "",
            "> **The device times below are ESTIMATES** from `edgekit estimate` (a per-layer model of a",
            "> Raspberry Pi 4 at each model's own resolution), **not measurements.** The *emulated* column",
            f"> is qemu user-mode emulation of a Cortex-A72 on an x86 host at {plan['resolution']} px and",
            f"> {plan['runs']} run(s): hundreds of times slower than a Pi and **not representative of any",
            "> device**. What the emulated run does show: whether the ARM kernels (ONNX Runtime, LiteRT",
            "> with XNNPACK) give the same outputs as x86 — the last two columns.",
            "",
            "Run `PI_HOST=user@host make pi-bench` with a real Pi to replace this page with measurements.",
        ]
    else:
        machine = rows[0]["machine"] if rows else {}
        lines = [
            f"# Raspberry Pi benchmark — measured on {results['target']}",
            "",
            f"Measured over SSH on {machine.get('cpu', '?')} ({machine.get('os', '?')}, "
            f"{machine.get('cores')} cores): median of {plan['runs']} runs after {plan['warmup']} warm-ups,",
            "seeded random input, the standalone runner (runtimes/runner.py). The estimate column is",
            "`edgekit estimate`'s model of a Pi 4, for comparison; it is not a measurement.",
        ]
    time_col = "emulated median (ms, not representative)" if results["emulated"] else "median (ms)"
    lines += [
        "",
        f"| model | format | engine | threads | {time_col} | Pi 4 estimate (ms) | top-1 ARM = x86 | "
        "max abs diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        est = "n/a" if r["estimate_ms"] is None else f"{r['estimate_ms']:.1f}"
        check = r["arm_vs_x86"]
        lines.append(
            f"| {r['model']} | {r['format']} | {r['engine']} {r['engine_version']} | {r['threads']} | "
            f"{r['median_ms']:.2f} | {est} | {check['top1_agreement']:.0%} of {check['samples']} | "
            f"{check['max_abs_diff']:.2e} |"
        )
    lines += [
        "",
        f"Input: {plan['resolution'] or 'model default'} px; outputs compared on {CHECK_BATCH} seeded "
        "random samples against ONNX Runtime / LiteRT on this x86 host. Raw numbers: results.json.",
        "",
    ]
    return "\n".join(lines)


@click.command()
@click.option("--out", "out_dir", default="bench/pi", show_default=True, type=click.Path(file_okay=False))
@click.option("--models", help="Comma list of zoo models (default: the whole zoo).")
@click.option(
    "--host", envvar="PI_HOST", help="user@host[:port] of a real Pi (default: $PI_HOST; unset = emulated)."
)
@click.option("--resolution", type=int, help="Input side (default: 64 emulated, the model's own on a Pi).")
@click.option("--runs", type=int, help="Timed runs (default: 2 emulated, 30 on a Pi).")
@click.option("--threads", help="Comma list (default: 1 emulated, 1,4 on a Pi).")
@click.option("--key-file", help="SSH private key for the Pi.")
@click.option(
    "--known-hosts", help="known_hosts file holding the Pi's host key (default ~/.ssh/known_hosts)."
)
@click.option("--remote-python", default="python3", show_default=True)
def main(
    out_dir: str,
    models: str | None,
    host: str | None,
    resolution: int | None,
    runs: int | None,
    threads: str | None,
    key_file: str | None,
    known_hosts: str | None,
    remote_python: str,
) -> None:
    """Benchmark the zoo on a Raspberry Pi (PI_HOST) or on the emulated Pi 4."""
    ssh = {"key_file": key_file, "known_hosts": known_hosts, "remote_python": remote_python} if host else {}
    try:
        results = pibench(
            out_dir,
            models=[m.strip() for m in models.split(",")] if models else None,
            host=host,
            resolution=resolution,
            runs=runs,
            threads=[int(t) for t in threads.split(",")] if threads else None,
            **ssh,
        )
    except EdgekitError as exc:
        click.echo(f"error: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), err=True)
        sys.exit(exc.exit_code)
    click.echo(f"pi-bench: {len(results['rows'])} rows -> {Path(out_dir) / 'README.md'}")


if __name__ == "__main__":
    main()
