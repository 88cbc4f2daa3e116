"""Latency ESTIMATES (not measurements) from per-layer counts and a device's spec sheet.

The device enters only through its data-sheet numbers (edgekit.studies.devices); a handful of
constants are shared by every device and fitted on several boards at once. For each executed layer
    ms = compute + memory + overhead, where
- compute = MACs / (rate x efficiency of the layer kind x Amdahl speed-up), rate = the core's peak
  MACs/s of the kernels' arithmetic (ncnn computes fp32 models in fp16 on ARMv8.2 cores), times
  one shared factor on in-order cores;
- memory = bytes moved (input + output + weights, edgekit.counting's memory access) / bandwidth: the
  on-chip one (a shared number of bytes per peak-MAC slot, so it scales with the core and the
  threads) when the layer fits in L2 + L3, else the chip's DRAM bandwidth;
- overhead = a shared number of peak-MAC slots per executed layer (dispatch, packing, the residual
  adds, shuffles and activations the counts do not see), so it shrinks on a wider or faster core.
BatchNorm and activations are fused into the conv before them (ncnn, TFLite/XNNPACK).

``python -m edgekit.studies.estimate --fit`` re-fits the constants on ncnn's published tables
(edgekit/data/ncnn_benchmark.csv) and prints the leave-one-device-out errors. See docs/estimate.md.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from dataclasses import asdict, dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

from edgekit.errors import UsageError
from edgekit.studies.devices import DEVICES, Device, get_device

FUSED = ("bn", "act")  # folded into the conv before them by ncnn and TFLite
KIND_CONSTANT = {
    "conv": "dense",
    "pointwise": "dense",
    "linear": "dense",
    "depthwise": "depthwise",
    "group conv": "group",
}
CONSTANT_ORDER = ("dense", "depthwise", "group")
TABLE = Path(__file__).resolve().parents[1] / "data" / "ncnn_benchmark.csv"
NCNN_SOURCE = "ncnn benchncnn (github.com/Tencent/ncnn benchmark/README.md @ a4d2ea1), min of the loop"

# ncnn benchmark network -> (zoo model, options): same layers and weight counts (docs/estimate.md).
NETWORKS: dict[str, tuple[str, dict[str, Any]]] = {
    "squeezenet": ("squeezenet1_1", {"resolution": 227}),  # benchncnn feeds 227 x 227
    "mobilenet": ("mobilenet_v1", {}),
    "mobilenet_v2": ("mobilenet_v2", {}),
    "mobilenet_v3": ("mobilenet_v3_large", {}),
    "shufflenet": ("shufflenet_v1", {"groups": 3}),
    "shufflenet_v2": ("shufflenet_v2", {}),
    "mnasnet": ("mnasnet_b1", {}),  # torchvision mnasnet1_0, no squeeze-excitation
}
FIT_DEVICES = (
    "rpi3",
    "rpi4",
    "rpi5",
    "rk3566",
    "rk3568",
    "rk3399",
    "rk3588",
    "sd410",
    "rk3328",
    "a311d",
    "kirin970",
)
CHECK_DEVICES = ("rpizero2w", "rock3a", "orin-nano", "agx-orin")  # published, never fitted


@dataclass(frozen=True)
class Constants:
    """The shared constants: the same for every device."""

    dense: float  # fraction of peak reached by standard, pointwise and linear layers
    depthwise: float
    group: float  # group convs (ShuffleNetV1's 1x1 group convs)
    overhead_macs: float  # per executed layer, in peak-MAC slots of the core
    cache_bytes_per_mac: float  # on-chip bytes moved per peak-MAC slot
    parallel: float  # Amdahl parallel fraction
    in_order: float  # throughput factor of in-order cores (Cortex-A53/A55...)
    int8: float  # throughput factor of int8 kernels (quantize / requantize steps), fitted after the rest


# `python -m edgekit.studies.estimate --fit` over FIT_DEVICES at 1 thread and all cores of a cluster
# (4; 2 on the RK3399), the 7 NETWORKS: 154 fp32 times; int8 alone on the 44 int8 times after them.
FITTED = Constants(
    dense=0.8137,
    depthwise=0.3655,
    group=0.6414,
    overhead_macs=1.375e6,
    cache_bytes_per_mac=0.5250,
    parallel=0.8641,
    in_order=0.6972,
    int8=0.5084,
)
# Median |error| (pct) on each device with that device left out of the fit; "overall" over all 154.
EXPECTED_ERROR: dict[str, float] = {
    "rpi3": 9.1,
    "rpi4": 9.9,
    "rpi5": 13.1,
    "rk3566": 7.2,
    "rk3568": 21.9,
    "rk3399": 17.6,
    "rk3588": 16.2,
    "sd410": 23.8,
    "rk3328": 5.9,
    "a311d": 5.5,
    "kirin970": 12.2,
    "overall": 13.1,
}
NEVER_FITTED_ERROR = 21.0  # median |error| on CHECK_DEVICES, which no fit has seen


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arithmetic:
    """What the kernels compute in, and at what rate, for a model precision on a device."""

    kernels: str  # fp32, fp16 or int8
    macs_per_cycle: int  # per core
    bytes_per_element: int


def arithmetic(device: Device, precision: str) -> Arithmetic:
    if precision == "int8":
        return Arithmetic("int8", device.int8_macs_per_cycle, 1)
    if device.dot_product:  # ARMv8.2: ncnn runs fp32 models with fp16 storage and arithmetic
        return Arithmetic("fp16", 2 * device.fp32_macs_per_cycle, 2)
    return Arithmetic("fp32", device.fp32_macs_per_cycle, 4)


@dataclass(frozen=True)
class LayerArrays:
    """A network's layers as numpy arrays (what the model reads)."""

    kinds: tuple[str, ...]
    constant: Any  # index into CONSTANT_ORDER
    executed: Any  # False for fused BN and activations
    macs: Any
    elements: Any  # memory access: input + output + weight elements

    @classmethod
    def of(cls, layers: list[dict[str, Any]]) -> LayerArrays:
        import numpy as np

        kinds = tuple(layer["kind"] for layer in layers)
        return cls(
            kinds,
            np.array([CONSTANT_ORDER.index(KIND_CONSTANT.get(kind, "dense")) for kind in kinds]),
            np.array([kind not in FUSED for kind in kinds]),
            np.array([layer["macs"] for layer in layers], float),
            np.array([layer["memory_access"] for layer in layers], float),
        )


# Layer kinds of the error breakdown; "other" = pooling plus every layer's overhead.
BREAKDOWN = ("conv", "pointwise", "depthwise", "group conv", "other")


def layer_times(
    layers: LayerArrays,
    device: Device,
    *,
    threads: int = 1,
    precision: str = "fp32",
    constants: Constants = FITTED,
) -> dict[str, Any]:
    """compute, memory and overhead seconds of each layer (numpy arrays); fused layers cost 0."""
    math_ = arithmetic(device, precision)
    return _seconds(
        constants,
        layers,
        peak=math_.macs_per_cycle * device.clock_ghz * 1e9,
        in_order=device.in_order,
        int8=precision == "int8",
        bytes_per_element=math_.bytes_per_element,
        cache_bytes=device.cache_bytes,
        dram=device.bandwidth_gbs * 1e9,
        threads=threads,
    )


def _seconds(constants: Constants, layers: LayerArrays, **device: Any) -> dict[str, Any]:
    """The model itself. ``device`` values are scalars, or arrays over the layers (the fit's batch)."""
    import numpy as np

    rate = (  # MACs/s of one core
        device["peak"]
        * np.where(device["in_order"], constants.in_order, 1.0)
        * np.where(device["int8"], constants.int8, 1.0)
    )
    scale = 1.0 / ((1.0 - constants.parallel) + constants.parallel / device["threads"])  # Amdahl
    efficiency = np.array([getattr(constants, name) for name in CONSTANT_ORDER])[layers.constant]
    bytes_ = layers.elements * device["bytes_per_element"]
    on_chip = constants.cache_bytes_per_mac * rate * scale
    bandwidth = np.where(bytes_ <= device["cache_bytes"], on_chip, np.minimum(device["dram"], on_chip))
    executed = layers.executed
    return {
        "compute": np.where(executed, layers.macs / (rate * efficiency * scale), 0.0),
        "memory": np.where(executed, bytes_ / bandwidth, 0.0),
        "overhead": np.where(executed, constants.overhead_macs / rate, 0.0),
        "bytes": np.where(executed, bytes_, 0.0),
    }


def estimate_layers(
    layers: list[dict[str, Any]],
    device: Device,
    *,
    threads: int = 1,
    precision: str = "fp32",
    constants: Constants = FITTED,
) -> list[dict[str, Any]]:
    """Per-layer estimates (ms) for counting.model_info's layer rows."""
    times = layer_times(
        LayerArrays.of(layers), device, threads=threads, precision=precision, constants=constants
    )
    rows = []
    for i, layer in enumerate(layers):
        parts = {key: 1e3 * float(times[key][i]) for key in ("compute", "memory", "overhead")}
        rows.append(
            {
                "name": layer["name"],
                "kind": layer["kind"],
                "macs": layer["macs"],
                "bytes": int(times["bytes"][i]),
                **{f"{key}_ms": round(value, 4) for key, value in parts.items()},
                "ms": round(sum(parts.values()), 4),
                "bound": "fused" if layer["kind"] in FUSED else max(parts, key=parts.__getitem__),
            }
        )
    return rows


def estimate(
    name: str,
    *,
    width: float | None = None,
    resolution: int | None = None,
    groups: int | None = None,
    device: str | Device = "rpi4",
    threads: int | None = None,
    int8: bool = False,
    measured: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Estimated latency of a zoo model on a device, per layer, with its expected error and the
    published (ncnn) or measured (``measured``: a bench.json from a real device) figure."""
    from edgekit.counting import model_info

    dev = get_device(device) if isinstance(device, str) else device
    threads = dev.cores if threads is None else threads
    if not 1 <= threads <= dev.cores:
        raise UsageError(f"{dev.name} has {dev.cores} cores, not {threads}", f"use --threads 1..{dev.cores}")
    precision = "int8" if int8 else "fp32"
    bench = load_measured(measured, threads, precision) if measured is not None else None
    info = model_info(name, width=width, resolution=resolution, groups=groups)
    layers = estimate_layers(info["layers"], dev, threads=threads, precision=precision)
    total = round(sum(layer["ms"] for layer in layers), 3)
    error = expected_error(dev)
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
        "kernels": arithmetic(dev, precision).kernels,
        "total_ms": total,
        "expected_error_pct": error["pct"],
        "expected_error": error["basis"],
        "macs": info["macs"],
        "layers": layers,
        "published": published_figure(info, dev, threads, precision, total),
        "measured": [
            {**row, "estimate_vs_measured_pct": _pct(total, row["p50_ms"])}
            for row in bench or []
            if row["macs"] is None or abs(row["macs"] / info["macs"] - 1) < 0.01  # the same network
        ],
        "method": "ESTIMATE, not a measurement: ncnn's latency modelled per layer from the device's spec "
        "sheet, constants shared by all devices, fitted on ncnn's published tables of 11 boards",
    }


def expected_error(device: Device) -> dict[str, Any]:
    """The leave-one-device-out median |error| of this device, or over all devices for another board."""
    if device.name in EXPECTED_ERROR and DEVICES.get(device.name) == device:
        return {
            "pct": EXPECTED_ERROR[device.name],
            "basis": f"median |error| on {device.name} left out of the fit",
        }
    basis = (
        f"median |error| over the {len(FIT_DEVICES)} boards, each left out of the fit; "
        f"{NEVER_FITTED_ERROR:.0f}% on the {len(CHECK_DEVICES)} boards never fitted"
    )
    return {"pct": EXPECTED_ERROR["overall"], "basis": basis}


def _pct(estimate_ms: float, reference_ms: float) -> float:
    return round(100 * (estimate_ms - reference_ms) / reference_ms, 1)


# --- published and measured figures ------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    device: str
    threads: int
    network: str  # ncnn's name (NETWORKS)
    precision: str  # fp32, or int8 for ncnn's NAME_int8 files
    ms: float  # benchncnn's min
    readme_line: int


@cache
def published_table() -> tuple[Published, ...]:
    """edgekit/data/ncnn_benchmark.csv (comment lines name the source commit)."""
    with TABLE.open(encoding="utf-8") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        return tuple(
            Published(
                row["device"],
                int(row["threads"]),
                row["network"].removesuffix("_int8"),
                "int8" if row["network"].endswith("_int8") else "fp32",
                float(row["min_ms"]),
                int(row["readme_line"]),
            )
            for row in rows
        )


def published_figure(
    info: dict[str, Any], device: Device, threads: int, precision: str, total_ms: float
) -> dict[str, Any] | None:
    """ncnn's published figure for exactly this model, options, resolution, device and threads."""
    from edgekit.zoo import get_entry

    if info["width"] != 1.0 or DEVICES.get(device.name) != device:
        return None
    for network, (model, options) in NETWORKS.items():
        resolution = options.get("resolution", get_entry(model).resolution)
        wanted = {k: v for k, v in options.items() if k != "resolution"}
        if (
            model != info["model"]
            or not wanted.items() <= info["options"].items()
            or info["resolution"] != resolution
        ):
            continue
        for row in published_table():
            if (row.device, row.threads, row.network, row.precision) == (
                device.name,
                threads,
                network,
                precision,
            ):
                return {
                    "ms": row.ms,
                    "source": f"{NCNN_SOURCE}, line {row.readme_line}",
                    "error_pct": _pct(total_ms, row.ms),
                }
    return None


def load_measured(path: str | os.PathLike[str], threads: int, precision: str) -> list[dict[str, Any]]:
    """Real-device rows (not emulated, not this machine) of a bench.json at these threads and precision."""
    target = Path(path)
    target = target / "bench.json" if target.is_dir() else target
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(
            f"no bench result at {os.fspath(target)!r}", "run edgekit bench --target ssh:... first"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(
            f"cannot read bench result {os.fspath(target)!r}: {exc}", "give a bench.json"
        ) from None
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise UsageError(
            f"{os.fspath(target)!r} has no 'results' list", "give a bench.json written by edgekit bench"
        )
    return [
        {
            "target": row.get("target"),
            "format": row.get("format"),
            "runtime": row.get("runtime"),
            "cpu": row.get("cpu"),
            "p50_ms": row["p50_ms"],
            "macs": row.get("macs"),
        }
        for row in rows
        if isinstance(row, dict)
        and row.get("target", "local") != "local"
        and not row.get("emulated", True)
        and row.get("threads") == threads
        and row.get("precision") == precision
        and isinstance(row.get("p50_ms"), int | float)
    ]


# --- the fit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    published: Published
    device: Device
    layers: LayerArrays


@cache
def _network_layers(network: str) -> LayerArrays:
    from edgekit.counting import model_info

    model, options = NETWORKS[network]
    return LayerArrays.of(model_info(model, **options)["layers"])


def samples(devices: tuple[str, ...] = FIT_DEVICES, precision: str = "fp32") -> list[Sample]:
    """The published times of ``devices`` at ``precision`` with their networks' layers."""
    return [
        Sample(row, DEVICES[row.device], _network_layers(row.network))
        for row in published_table()
        if row.device in devices and row.precision == precision
    ]


class Batch:
    """Many samples' layers end to end, so one numpy pass estimates them all (the fit's inner loop)."""

    def __init__(self, data: list[Sample]) -> None:
        import numpy as np

        self.starts = np.cumsum([0] + [len(s.layers.kinds) for s in data[:-1]])
        self.layers = LayerArrays(
            (),
            *(
                np.concatenate([getattr(s.layers, key) for s in data])
                for key in ("constant", "executed", "macs", "elements")
            ),
        )
        per_layer: dict[str, list[Any]] = {}
        for s in data:
            math_ = arithmetic(s.device, s.published.precision)
            values = {
                "peak": math_.macs_per_cycle * s.device.clock_ghz * 1e9,
                "in_order": s.device.in_order,
                "int8": s.published.precision == "int8",
                "bytes_per_element": math_.bytes_per_element,
                "cache_bytes": s.device.cache_bytes,
                "dram": s.device.bandwidth_gbs * 1e9,
                "threads": s.published.threads,
            }
            for key, value in values.items():
                per_layer.setdefault(key, []).append(np.full(len(s.layers.kinds), value))
        self.device = {key: np.concatenate(parts) for key, parts in per_layer.items()}

    def predict(self, constants: Constants) -> Any:
        import numpy as np

        times = _seconds(constants, self.layers, **self.device)
        return 1e3 * np.add.reduceat(times["compute"] + times["memory"] + times["overhead"], self.starts)


NAMES = tuple(f.name for f in fields(Constants))
BOUNDS = {  # physically possible ranges; the fit works on their logarithms
    "dense": (0.02, 2.0),  # > 1 is possible: Winograd 3x3 convs do fewer multiplies than counted
    "depthwise": (0.01, 1.0),
    "group": (0.01, 1.0),
    "overhead_macs": (1e2, 1e8),
    "cache_bytes_per_mac": (0.01, 64.0),
    "parallel": (0.3, 1.0),
    "in_order": (0.2, 1.0),
    "int8": (0.05, 2.0),
}
START = Constants(0.6, 0.15, 0.3, 2e4, 2.0, 0.9, 0.8, 1.0)


def fit(fp32: list[Sample], int8: list[Sample] | None = None) -> Constants:
    """Least squares on log-time: every constant but ``int8`` on the fp32 figures, then ``int8`` alone
    on the int8 figures (so the int8 files, two networks only, cannot move the fp32 model)."""
    constants = _least_squares(fp32, START, [n for n in NAMES if n != "int8"])
    return _least_squares(int8, constants, ["int8"]) if int8 else constants


def _least_squares(data: list[Sample], start: Constants, names: list[str]) -> Constants:
    """Fit ``names`` (scipy's bounded trust-region, on their logarithms); the others stay as in ``start``."""
    import numpy as np
    from scipy.optimize import least_squares

    target = np.log([s.published.ms for s in data])
    batch = Batch(data)

    def constants(z: Any) -> Constants:
        return replace(start, **{name: float(v) for name, v in zip(names, np.exp(z), strict=True)})

    def residuals(z: Any) -> Any:
        return np.log(batch.predict(constants(z))) - target

    low, high = np.log([BOUNDS[n] for n in names]).T
    x0 = np.clip(np.log([getattr(start, n) for n in names]), low + 1e-9, high - 1e-9)
    return constants(least_squares(residuals, x0, bounds=(low, high), method="trf").x)


def errors(data: list[Sample], constants: Constants = FITTED) -> list[dict[str, Any]]:
    """(estimate - published) / published of each sample, with the kinds' shares of the estimate."""
    rows = []
    for s in data:
        times = layer_times(
            s.layers,
            s.device,
            threads=s.published.threads,
            precision=s.published.precision,
            constants=constants,
        )
        shares = dict.fromkeys(BREAKDOWN, 0.0)
        for i, kind in enumerate(s.layers.kinds):
            if kind not in FUSED:
                key = kind if kind in BREAKDOWN else "pointwise" if kind == "linear" else "other"
                shares[key] += float(times["compute"][i] + times["memory"][i])
        shares["other"] += float(times["overhead"].sum())
        total = sum(shares.values())
        est = 1e3 * total
        rows.append(
            {
                "device": s.published.device,
                "network": s.published.network,
                "threads": s.published.threads,
                "published_ms": s.published.ms,
                "estimate_ms": round(est, 2),
                "error_pct": _pct(est, s.published.ms),
                "shares": {k: v / total for k, v in shares.items()},
            }
        )
    return rows


def leave_one_device_out(devices: tuple[str, ...] = FIT_DEVICES) -> dict[str, list[dict[str, Any]]]:
    """Each device's errors (fp32 and int8 figures) from a fit on the other devices only."""
    data = {precision: samples(devices, precision) for precision in ("fp32", "int8")}
    rows: dict[str, list[dict[str, Any]]] = {"fp32": [], "int8": []}
    for device in devices:
        others = {p: [s for s in data[p] if s.published.device != device] for p in data}
        constants = fit(others["fp32"], others["int8"])
        for precision, part in data.items():
            rows[precision] += errors([s for s in part if s.published.device == device], constants)
    return rows


def median_abs(rows: list[dict[str, Any]]) -> float:
    return round(statistics.median(abs(r["error_pct"]) for r in rows), 1)


def by_device(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median |error|, and the median signed error at 1 and at several threads, per device."""
    out = {}
    for device in dict.fromkeys(r["device"] for r in rows):
        mine = [r for r in rows if r["device"] == device]
        one = [r["error_pct"] for r in mine if r["threads"] == 1]
        many = [r["error_pct"] for r in mine if r["threads"] > 1]
        out[device] = {
            "median_abs_pct": median_abs(mine),
            "worst_abs_pct": round(max(abs(r["error_pct"]) for r in mine), 1),
            "median_1_thread_pct": round(statistics.median(one), 1),
            "median_n_threads_pct": round(statistics.median(many), 1),
        }
    return out


def by_network(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median |error| and median signed error per network."""
    return {
        network: {
            "median_abs_pct": median_abs(mine),
            "median_pct": round(statistics.median(r["error_pct"] for r in mine), 1),
        }
        for network in dict.fromkeys(r["network"] for r in rows)
        if (mine := [r for r in rows if r["network"] == network])
    }


def by_kind(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per layer kind: its median share of the estimate, and how far off its time is.

    The held-out log-errors are regressed on the kinds' shares, log(estimate / published) =
    sum_k share_k x b_k, so exp(b_k) - 1 is the error of the time estimated for kind k."""
    import numpy as np

    shares = np.array([[r["shares"][k] for k in BREAKDOWN] for r in rows])
    log_error = np.log([1 + r["error_pct"] / 100 for r in rows])
    b = np.linalg.lstsq(shares, log_error, rcond=None)[0]
    return {
        kind: {
            "median_share_pct": round(100 * float(np.median(shares[:, i])), 1),
            "max_share_pct": round(100 * float(shares[:, i].max()), 1),
            "error_pct": round(100 * float(np.expm1(b[i])), 1),
        }
        for i, kind in enumerate(BREAKDOWN)
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"median_abs_pct": median_abs(rows), "figures": len(rows), "devices": by_device(rows)}


def report(fit_again: bool = False) -> dict[str, Any]:
    """The constants, the leave-one-device-out errors, and the never-fitted boards' errors."""
    constants = fit(samples(), samples(precision="int8")) if fit_again else FITTED
    held_out = leave_one_device_out()
    out: dict[str, Any] = {"constants": asdict(constants)}
    for precision in ("fp32", "int8"):
        out[precision] = {
            "in_sample_median_abs_pct": median_abs(errors(samples(FIT_DEVICES, precision), constants)),
            "lodo": summary(held_out[precision]),
            "check": summary(errors(samples(CHECK_DEVICES, precision), constants)),
        }
    out["fp32"]["by_kind"] = by_kind(held_out["fp32"])
    out["fp32"]["by_network"] = by_network(held_out["fp32"])
    return out


def _main() -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m edgekit.studies.estimate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--fit", action="store_true", help="re-fit the constants (else the stored FITTED)")
    args = parser.parse_args()
    result = report(args.fit)
    print({name: float(f"{value:.4g}") for name, value in result["constants"].items()})
    for precision in ("fp32", "int8"):
        part = result[precision]
        figures, in_sample = part["lodo"]["figures"], part["in_sample_median_abs_pct"]
        print(f"\n{precision}: {figures} figures; in sample median |error| {in_sample}%")
        print("| device | in the fit | median abs error | worst | median at 1 thread | median at n threads |")
        print("|---|---|---:|---:|---:|---:|")
        for fitted, group in ((True, part["lodo"]), (False, part["check"])):
            for device, e in group["devices"].items():
                cells = (
                    device,
                    "left out" if fitted else "never",
                    f"{e['median_abs_pct']}%",
                    f"{e['worst_abs_pct']}%",
                    f"{e['median_1_thread_pct']:+.1f}%",
                    f"{e['median_n_threads_pct']:+.1f}%",
                )
                print("| " + " | ".join(cells) + " |")
        print(f"leave-one-device-out median |error|: {part['lodo']['median_abs_pct']}%")
        print(f"never-fitted boards, median |error|: {part['check']['median_abs_pct']}%")
    print("\n| layer kind | median share of the estimate | largest share | error of its time (held out) |")
    print("|---|---:|---:|---:|")
    for kind, e in result["fp32"]["by_kind"].items():
        print(f"| {kind} | {e['median_share_pct']}% | {e['max_share_pct']}% | {e['error_pct']:+.1f}% |")
    print("\n| ncnn network | zoo model | median abs error (held out) | median error |")
    print("|---|---|---:|---:|")
    for network, e in result["fp32"]["by_network"].items():
        print(f"| {network} | {NETWORKS[network][0]} | {e['median_abs_pct']}% | {e['median_pct']:+.1f}% |")
    expected = {d: e["median_abs_pct"] for d, e in result["fp32"]["lodo"]["devices"].items()}
    print("EXPECTED_ERROR =", {**expected, "overall": result["fp32"]["lodo"]["median_abs_pct"]})


if __name__ == "__main__":
    _main()
