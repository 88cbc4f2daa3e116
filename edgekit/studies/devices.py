"""CPU profiles for latency estimates (edgekit.studies.estimate): spec-sheet numbers, nothing fitted.

A profile holds only what a data sheet states; the estimate's constants are shared by every
device (docs/estimate.md). How to fill each field for a board of your own (``--device-spec``):
- ``fp32_macs_per_cycle``: fp32 multiply-accumulates one core retires per cycle = 4 lanes (128-bit
  NEON) x the 128-bit FMAs it issues per cycle. Cortex-A7/A53/A55/A57/A72/A73: 1 (-> 4);
  A75/A76/A77/A78/A710/A715/A720, Neoverse N1: 2 (-> 8); X1/X2/X3/X4, Neoverse V1: 4 (-> 16).
- ``int8_macs_per_cycle``: with SDOT/UDOT (ARMv8.2 dot product) 16 MACs per 128-bit instruction
  (A55 -> 16, A76 -> 32); without it int8 widens to 16 bits, twice the fp32 rate (A53/A72 -> 8).
- ``dot_product``: the core implements ARMv8.2 SDOT/UDOT. Every Arm core that does also has ARMv8.2
  FP16 arithmetic, which ncnn uses by default for fp32 models (the estimate counts it that way).
- ``cores``: the cores of the cluster the threads run on (the big cluster of a big.LITTLE chip).
- ``bandwidth_gbs``: sustained DRAM bandwidth of the chip (STREAM-copy class, about half the bus
  peak = bus bits / 8 x transfer rate); it only matters for layers that spill out of the caches.
- ``l1d_kb``, ``l2_kb``, ``l3_kb``: per-core L1D, L2 (per core or per cluster as the sheet says), L3 /
  system-level cache; 0 when absent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from typing import Any

from edgekit.errors import UsageError

# In-order Arm cores: they stall on loads the out-of-order ones hide (one shared constant, estimate.py).
IN_ORDER_CORES = frozenset(
    {"cortex-a5", "cortex-a7", "cortex-a35", "cortex-a53", "cortex-a55", "cortex-a510", "cortex-a520"}
)


@dataclass(frozen=True)
class Device:
    name: str
    label: str
    core: str
    clock_ghz: float
    cores: int
    fp32_macs_per_cycle: int  # per core
    int8_macs_per_cycle: int
    dot_product: bool  # ARMv8.2 SDOT/UDOT (and with it FP16 arithmetic)
    bandwidth_gbs: float  # sustained DRAM bandwidth, whole chip
    l1d_kb: int
    l2_kb: int
    l3_kb: int = 0
    neon_bits: int = 128

    @property
    def in_order(self) -> bool:
        return _core_key(self.core) in IN_ORDER_CORES

    @property
    def cache_bytes(self) -> int:
        """Last-level capacity an activation can stay in: L2 + L3."""
        return (self.l2_kb + self.l3_kb) * 1024


def _core_key(core: str) -> str:
    key = core.strip().lower().removeprefix("arm ").replace(" ", "-")
    return f"cortex-{key}" if key[:1] == "a" and key[1:2].isdigit() else key


# Spec sheets (SoC datasheets and Arm's core manuals). Bandwidths are rounded sustained figures.
DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device(
            "rpi3", "Raspberry Pi 3 Model B+ (BCM2837B0)", "Cortex-A53", 1.4, 4, 4, 8, False, 2.0, 32, 512
        ),
        Device("rpi4", "Raspberry Pi 4 Model B (BCM2711)", "Cortex-A72", 1.8, 4, 4, 8, False, 4.0, 32, 1024),
        Device("rpi5", "Raspberry Pi 5 (BCM2712)", "Cortex-A76", 2.4, 4, 8, 32, True, 9.0, 64, 512, 2048),
        Device(
            "rpizero2w",
            "Raspberry Pi Zero 2 W (RP3A0/BCM2710A1)",
            "Cortex-A53",
            1.0,
            4,
            4,
            8,
            False,
            1.8,
            32,
            512,
        ),
        Device(
            "rk3566", "Rockchip RK3566 (Orange Pi CM4)", "Cortex-A55", 1.8, 4, 4, 16, True, 4.5, 32, 0, 512
        ),
        Device("rk3568", "Rockchip RK3568 (Station P2)", "Cortex-A55", 2.0, 4, 4, 16, True, 4.5, 32, 0, 512),
        Device(
            "rock3a", "Rockchip RK3568 (Radxa ROCK 3A)", "Cortex-A55", 2.0, 4, 4, 16, True, 4.5, 32, 0, 512
        ),
        Device("rk3399", "Rockchip RK3399, big cluster", "Cortex-A72", 1.8, 2, 4, 8, False, 5.0, 32, 1024),
        Device(
            "rk3588", "Rockchip RK3588, big cluster", "Cortex-A76", 2.4, 4, 8, 32, True, 15.0, 64, 512, 3072
        ),
        Device("rk3328", "Rockchip RK3328 (EAIDK-310)", "Cortex-A53", 1.3, 4, 4, 8, False, 2.5, 32, 256),
        Device("sd410", "Qualcomm Snapdragon 410 (MSM8916)", "Cortex-A53", 1.2, 4, 4, 8, False, 2.0, 32, 512),
        Device(
            "a311d",
            "Amlogic A311D (Khadas VIM3), big cluster",
            "Cortex-A73",
            2.2,
            4,
            4,
            8,
            False,
            5.0,
            64,
            1024,
        ),
        Device(
            "kirin970", "HiSilicon Kirin 970, big cluster", "Cortex-A73", 2.4, 4, 4, 8, False, 10.0, 64, 2048
        ),
        Device(
            "orin-nano",
            "NVIDIA Jetson Orin Nano (CPU)",
            "Cortex-A78AE",
            1.5,
            6,
            8,
            32,
            True,
            30.0,
            64,
            256,
            2048,
        ),
        Device(
            "agx-orin",
            "NVIDIA Jetson AGX Orin (CPU)",
            "Cortex-A78AE",
            2.2,
            12,
            8,
            32,
            True,
            50.0,
            64,
            256,
            2048,
        ),
        # A mid-range phone's big cores (Snapdragon 778G / Dimensity 8100 class): not in any fit or check.
        Device("phone", "mid-range phone, big cores", "Cortex-A78", 2.4, 4, 8, 32, True, 12.0, 64, 512, 4096),
    )
}


def get_device(name: str) -> Device:
    if name not in DEVICES:
        raise UsageError(
            f"unknown device {name!r}", f"use one of {', '.join(DEVICES)}, or --device-spec FILE.json"
        )
    return DEVICES[name]


# JSON type each key must have; ints are accepted where a number is expected.
_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "label": (str,),
    "core": (str,),
    "clock_ghz": (int, float),
    "cores": (int,),
    "fp32_macs_per_cycle": (int,),
    "int8_macs_per_cycle": (int,),
    "dot_product": (bool,),
    "bandwidth_gbs": (int, float),
    "l1d_kb": (int,),
    "l2_kb": (int,),
    "l3_kb": (int,),
    "neon_bits": (int,),
}
_POSITIVE = ("clock_ghz", "cores", "fp32_macs_per_cycle", "int8_macs_per_cycle", "bandwidth_gbs", "neon_bits")
SPEC_KEYS = tuple(f.name for f in fields(Device))


def device_from_spec(path: str | os.PathLike[str]) -> Device:
    """A Device from a JSON file holding exactly the keys of ``Device`` (docs/estimate.md)."""
    fix = f"see docs/estimate.md for the keys: {', '.join(SPEC_KEYS)}"
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise UsageError(
            f"device spec {os.fspath(path)!r} does not exist", "give the path of a JSON file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"cannot read device spec {os.fspath(path)!r}: {exc}", "give a readable JSON file"
        ) from None
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"device spec {os.fspath(path)!r} is not JSON: {exc}", "fix the JSON syntax"
        ) from None
    if not isinstance(data, dict):
        raise UsageError(f"device spec {os.fspath(path)!r} holds a {type(data).__name__}, not an object", fix)
    return device_from_dict(data, source=os.fspath(path))


def device_from_dict(data: dict[str, Any], source: str = "device spec") -> Device:
    unknown = sorted(set(data) - set(SPEC_KEYS))
    if unknown:
        raise UsageError(
            f"{source}: unknown key {unknown[0]!r}", f"remove it; the keys are {', '.join(SPEC_KEYS)}"
        )
    missing = [key for key in SPEC_KEYS if key not in data]
    if missing:
        raise UsageError(f"{source}: missing key {missing[0]!r}", f"add it: {_what(missing[0])}")
    for key, types in _TYPES.items():
        value = data[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise UsageError(f"{source}: {key} is {value!r}", f"make it {_what(key)}")
    for key in _POSITIVE:
        if data[key] <= 0:
            raise UsageError(f"{source}: {key} is {data[key]!r}", f"make it {_what(key)}")
    for key in ("l1d_kb", "l2_kb", "l3_kb"):
        if data[key] < 0:
            raise UsageError(f"{source}: {key} is {data[key]!r}", f"make it {_what(key)}")
    if not data["name"].strip():
        raise UsageError(f"{source}: name is empty", "give the board a short name, e.g. my-board")
    return Device(**data)


def _what(key: str) -> str:
    return {
        "name": "a short id string, e.g. my-board",
        "label": "a description string",
        "core": 'a core name string, e.g. "Cortex-A55"',
        "clock_ghz": "a number > 0, the cores' clock in GHz",
        "cores": "an integer > 0, the cores the threads run on",
        "fp32_macs_per_cycle": "an integer > 0, e.g. 4 for Cortex-A53/A55/A72, 8 for A76",
        "int8_macs_per_cycle": "an integer > 0, e.g. 8 for A53/A72, 16 for A55, 32 for A76",
        "dot_product": "true or false (ARMv8.2 SDOT/UDOT)",
        "bandwidth_gbs": "a number > 0, sustained DRAM bandwidth in GB/s",
        "l1d_kb": "an integer >= 0 (KB)",
        "l2_kb": "an integer >= 0 (KB, 0 if none)",
        "l3_kb": "an integer >= 0 (KB, 0 if none)",
        "neon_bits": "an integer > 0, e.g. 128",
    }[key]
