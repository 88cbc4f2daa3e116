"""Latency ESTIMATES (not measurements) from per-layer counts and a device profile.

Each layer is a roofline: ``max(compute, memory) + overhead`` where
- compute = MACs / (peak MAC/s of a core x efficiency of the layer kind x thread speed-up),
  the speed-up being Amdahl's ``1 / ((1 - p) + p / threads)`` with one parallel fraction p;
- memory = (input + output + weight elements) x bytes per element / DRAM bandwidth
  (ShuffleNetV2's memory access cost, edgekit.counting);
- overhead = a fixed number of cycles per executed layer (dispatch, packing, thread sync).
BatchNorm and activations are fused into the preceding conv by every mobile runtime (ncnn,
TFLite/XNNPACK), so they cost nothing here; pooling and other layers are memory + overhead.

The few free constants (efficiency of dense / depthwise / group convs, overhead cycles, p) are fitted
by least squares on log-time to ncnn's published Raspberry Pi 4 table; ``python -m edgekit.studies.estimate
--fit`` re-runs the fit and prints the per-model error. See docs/estimate.md.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from edgekit.errors import UsageError
from edgekit.studies.devices import Device, get_device

BYTES = {"fp32": 4, "int8": 1}
Sample = tuple[str, list[dict[str, Any]], int, float]  # zoo model, layer rows, threads, published ms
FUSED = ("bn", "act")  # folded into the conv before them by ncnn and TFLite


@dataclass(frozen=True)
class Calibration:
    dense: float  # fraction of peak reached by standard, pointwise and linear layers
    depthwise: float
    group: float  # group convs (ShuffleNetV1's 1x1 group convs)
    overhead_cycles: float  # per executed layer
    parallel: float  # Amdahl parallel fraction of compute

    def efficiency(self, kind: str) -> float:
        return {"depthwise": self.depthwise, "group conv": self.group}.get(kind, self.dense)


# Fitted by `python -m edgekit.studies.estimate --fit` (Nelder-Mead, least squares on log-time over the 14
# ncnn Raspberry Pi 4 figures of PUBLISHED; median |error| 4.9%, worst 18.9%, table in
# docs/estimate.md). Tying group to dense (4 constants) doubles the median error to 8.0%.
FITTED = Calibration(dense=0.368, depthwise=0.0696, group=0.259, overhead_cycles=301_600.0, parallel=0.606)

NCNN_SOURCE = (
    "ncnn benchncnn, Raspberry Pi 4 (Cortex-A72 1.8 GHz), fp32, github.com/Tencent/ncnn/tree/master/benchmark"
)

# (ncnn model, zoo model, zoo options) -> ms at {threads}.
PUBLISHED: tuple[tuple[str, str, dict[str, Any], dict[int, float]], ...] = (
    ("squeezenet", "squeezenet1_1", {}, {4: 46.65, 1: 73.96}),
    ("mobilenet", "mobilenet_v1", {}, {4: 61.17, 1: 124.32}),
    ("mobilenet_v2", "mobilenet_v2", {}, {4: 61.88, 1: 93.48}),
    ("mobilenet_v3", "mobilenet_v3_large", {}, {4: 47.53, 1: 72.81}),
    ("shufflenet", "shufflenet_v1", {"groups": 3}, {4: 33.09, 1: 47.51}),
    ("shufflenet_v2", "shufflenet_v2", {}, {4: 24.56, 1: 42.12}),
    ("mnasnet", "mnasnet_b1", {}, {4: 51.98, 1: 83.98}),  # torchvision mnasnet1_0, no SE
)


# --- the model ---------------------------------------------------------------------------------


def speedup(threads: int, parallel: float) -> float:
    """Amdahl's law: compute time at 1 thread divided by compute time at ``threads``."""
    return 1.0 / ((1.0 - parallel) + parallel / threads)


def layer_time(
    kind: str,
    macs: int,
    elements: int,
    device: Device,
    *,
    threads: int = 1,
    precision: str = "fp32",
    calibration: Calibration = FITTED,
) -> dict[str, Any]:
    """Roofline time of one layer in ms: compute, memory, total and which one bounds it."""
    if kind in FUSED:
        return {"bytes": 0, "compute_ms": 0.0, "memory_ms": 0.0, "ms": 0.0, "bound": "fused"}
    bytes_ = elements * BYTES[precision]
    rate = device.peak_macs(precision) * calibration.efficiency(kind) * speedup(threads, calibration.parallel)
    compute_ms = 1e3 * macs / rate
    memory_ms = 1e3 * bytes_ / (device.bandwidth_gbs * 1e9)
    overhead_ms = 1e3 * calibration.overhead_cycles / (device.clock_ghz * 1e9)
    return {
        "bytes": bytes_,
        "compute_ms": compute_ms,
        "memory_ms": memory_ms,
        "ms": max(compute_ms, memory_ms) + overhead_ms,
        "bound": "compute" if compute_ms >= memory_ms else "memory",
    }


def estimate_layers(
    layers: list[dict[str, Any]],
    device: Device,
    *,
    threads: int = 1,
    precision: str = "fp32",
    calibration: Calibration = FITTED,
) -> list[dict[str, Any]]:
    """Per-layer estimates for counting.model_info's layer rows."""
    rows = []
    for layer in layers:
        timing = layer_time(
            layer["kind"],
            layer["macs"],
            layer["memory_access"],
            device,
            threads=threads,
            precision=precision,
            calibration=calibration,
        )
        rows.append({"name": layer["name"], "kind": layer["kind"], "macs": layer["macs"], **timing})
    return rows


def estimate(
    name: str,
    *,
    width: float | None = None,
    resolution: int | None = None,
    groups: int | None = None,
    device: str = "rpi4",
    threads: int | None = None,
    int8: bool = False,
) -> dict[str, Any]:
    """Estimated latency of a zoo model on a device profile, per layer, with the published figure."""
    from edgekit.counting import model_info

    dev = get_device(device)
    threads = dev.cores if threads is None else threads
    if not 1 <= threads <= dev.cores:
        raise UsageError(f"{dev.name} has {dev.cores} cores, not {threads}", f"use --threads 1..{dev.cores}")
    precision = "int8" if int8 else "fp32"
    info = model_info(name, width=width, resolution=resolution, groups=groups)
    layers = estimate_layers(info["layers"], dev, threads=threads, precision=precision)
    total = sum(layer["ms"] for layer in layers)
    return {
        "estimate": True,
        "model": info["model"],
        "width": info["width"],
        "resolution": info["resolution"],
        "options": info["options"],
        "device": dev.name,
        "device_profile": asdict(dev),
        "threads": threads,
        "precision": precision,
        "total_ms": round(total, 3),
        "macs": info["macs"],
        "layers": [_rounded(layer) for layer in layers],
        "published": published_figure(info, dev.name, threads, precision, total),
        "method": "ESTIMATE, not a measurement: per-layer roofline, constants fitted to ncnn's Pi 4 table",
    }


def _rounded(layer: dict[str, Any]) -> dict[str, Any]:
    return {**layer, **{key: round(layer[key], 4) for key in ("compute_ms", "memory_ms", "ms")}}


def published_figure(
    info: dict[str, Any], device: str, threads: int, precision: str, total_ms: float
) -> dict[str, Any] | None:
    """The published figure for exactly this model, options, device, threads and precision."""
    from edgekit.zoo import get_entry

    if device != "rpi4" or precision != "fp32" or info["width"] != 1.0:
        return None
    for _, model, options, times in PUBLISHED:
        if model != info["model"] or not options.items() <= info["options"].items() or threads not in times:
            continue
        if info["resolution"] != get_entry(model).resolution:
            return None
        ms = times[threads]
        return {"ms": ms, "source": NCNN_SOURCE, "error_pct": round(100 * (total_ms - ms) / ms, 1)}
    return None


# --- calibration -------------------------------------------------------------------------------


def calibration_set() -> list[Sample]:
    """(zoo model, layer rows, threads, published ms) for every published figure."""
    from edgekit.counting import model_info

    rows = []
    for _, model, options, times in PUBLISHED:
        layers = model_info(model, **options)["layers"]
        rows += [(model, layers, threads, ms) for threads, ms in times.items()]
    return rows


def predict(data: list[Sample], calibration: Calibration) -> list[float]:
    device = get_device("rpi4")
    return [
        sum(row["ms"] for row in estimate_layers(layers, device, threads=threads, calibration=calibration))
        for _, layers, threads, _ in data
    ]


def fit(data: list[Sample] | None = None) -> Calibration:
    """Least squares on log-time over the published figures (Nelder-Mead, bounded by transforms)."""
    import numpy as np

    data = data if data is not None else calibration_set()
    target = np.log([ms for *_, ms in data])

    def unpack(z: np.ndarray) -> Calibration:
        sig = 1.0 / (1.0 + np.exp(-z))  # efficiencies and p in (0, 1); overhead > 0
        return Calibration(float(sig[0]), float(sig[1]), float(sig[2]), float(np.exp(z[3])), float(sig[4]))

    def loss(z: np.ndarray) -> float:
        return float(np.sum((np.log(predict(data, unpack(z))) - target) ** 2))

    best = np.array([-1.0, -2.5, -1.5, math.log(2e4), 1.0])
    for _ in range(3):  # restarts: a fresh simplex around the last optimum escapes early collapse
        best = nelder_mead(loss, best)
    return unpack(best)


def nelder_mead(f: Any, x0: Any, step: float = 0.5, iterations: int = 600, tol: float = 1e-10) -> Any:
    """Plain Nelder-Mead (numpy only): the loss has kinks (max of two times), so no gradients."""
    import numpy as np

    simplex = [np.asarray(x0, float)] + [np.asarray(x0, float) + step * e for e in np.eye(len(x0))]
    values = [f(x) for x in simplex]
    for _ in range(iterations):
        order = np.argsort(values)
        simplex, values = [simplex[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < tol:
            break
        centroid = np.mean(simplex[:-1], axis=0)
        reflected = centroid + (centroid - simplex[-1])
        fr = f(reflected)
        if fr < values[0]:
            expanded = centroid + 2 * (centroid - simplex[-1])
            fe = f(expanded)
            simplex[-1], values[-1] = (expanded, fe) if fe < fr else (reflected, fr)
        elif fr < values[-2]:
            simplex[-1], values[-1] = reflected, fr
        else:
            contracted = centroid + 0.5 * (simplex[-1] - centroid)
            fc = f(contracted)
            if fc < values[-1]:
                simplex[-1], values[-1] = contracted, fc
            else:  # shrink towards the best point
                simplex = [simplex[0] + 0.5 * (x - simplex[0]) for x in simplex]
                values = [values[0], *(f(x) for x in simplex[1:])]
    return simplex[int(np.argmin(values))]


def calibration_errors(
    calibration: Calibration = FITTED, data: list[Sample] | None = None
) -> list[dict[str, Any]]:
    """Estimate vs published for each of the 14 figures, error in percent."""
    data = data if data is not None else calibration_set()
    return [
        {
            "model": model,
            "threads": threads,
            "published_ms": ms,
            "estimate_ms": round(est, 2),
            "error_pct": round(100 * (est - ms) / ms, 1),
        }
        for (model, _, threads, ms), est in zip(data, predict(data, calibration), strict=True)
    ]


def leave_one_model_out(data: list[Sample] | None = None) -> list[dict[str, Any]]:
    """Out-of-sample errors: refit without each model's figures, then predict them."""
    data = data if data is not None else calibration_set()
    errors = []
    for model in dict.fromkeys(name for name, *_ in data):
        held_out = [sample for sample in data if sample[0] == model]
        calibration = fit([sample for sample in data if sample[0] != model])
        for (_, _, threads, ms), est in zip(held_out, predict(held_out, calibration), strict=True):
            errors.append({"model": model, "threads": threads, "error_pct": round(100 * (est - ms) / ms, 1)})
    return errors


def _main() -> None:
    import argparse
    import statistics

    parser = argparse.ArgumentParser(
        prog="python -m edgekit.studies.estimate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--fit", action="store_true", help="re-fit the constants to the published table")
    args = parser.parse_args()
    data = calibration_set()
    calibration = fit(data) if args.fit else FITTED
    print(calibration)
    errors = calibration_errors(calibration, data)
    print("| model | threads | ncnn Pi 4 (ms) | estimate (ms) | error |")
    print("|---|---:|---:|---:|---:|")
    for e in errors:
        cells = (e["model"], e["threads"], e["published_ms"], e["estimate_ms"], f"{e['error_pct']:+.1f}%")
        print("| " + " | ".join(map(str, cells)) + " |")
    print(f"median |error|: {statistics.median(abs(e['error_pct']) for e in errors):.1f}%")
    if args.fit:
        held_out = leave_one_model_out(data)
        for e in held_out:
            print(f"held out {e['model']} at {e['threads']} thread(s): {e['error_pct']:+.1f}%")
        median = statistics.median(abs(e["error_pct"]) for e in held_out)
        print(f"median |error| out of sample (leave one model out): {median:.1f}%")


if __name__ == "__main__":
    _main()
