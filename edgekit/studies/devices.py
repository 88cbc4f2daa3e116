"""CPU profiles of the targets, for latency estimates (edgekit.studies.estimate). Spec-sheet numbers.

Peak throughput per core and cycle, from the cores' software optimisation guides:
- Cortex-A53: one 64-bit NEON datapath, a 128-bit FMLA every other cycle -> 2 fp32 MACs/cycle.
- Cortex-A72: two 128-bit NEON pipes, both FMA-capable -> 8 fp32 MACs/cycle.
- Cortex-A76/A78: two 128-bit NEON pipes -> 8 fp32 MACs/cycle; SDOT (ARMv8.2 dot product) does
  16 int8 MACs per instruction -> 32 int8 MACs/cycle.
Without SDOT, int8 kernels widen to 16 bits (SMLAL): twice the fp32 lane count, not four times.
Bandwidth is sustained DRAM bandwidth (STREAM-copy class figures, rounded), not the bus peak.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.errors import UsageError


@dataclass(frozen=True)
class Device:
    name: str
    label: str
    core: str
    clock_ghz: float
    cores: int
    fp32_macs_per_cycle: int  # per core: 128-bit NEON = 4 fp32 lanes, times FMA pipes
    int8_macs_per_cycle: int
    dot_product: bool  # ARMv8.2 SDOT/UDOT
    bandwidth_gbs: float  # sustained DRAM bandwidth, whole chip
    l1d_kb: int
    l2_kb: int
    l3_kb: int = 0
    neon_bits: int = 128

    def peak_macs(self, precision: str) -> float:
        """Peak multiply-accumulates per second of ONE core."""
        per_cycle = self.int8_macs_per_cycle if precision == "int8" else self.fp32_macs_per_cycle
        return per_cycle * self.clock_ghz * 1e9


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device("rpi3", "Raspberry Pi 3 B (BCM2837)", "Cortex-A53", 1.2, 4, 2, 4, False, 2.0, 32, 512),
        Device("rpi4", "Raspberry Pi 4 B (BCM2711)", "Cortex-A72", 1.8, 4, 8, 16, False, 4.0, 32, 1024),
        Device("rpi5", "Raspberry Pi 5 (BCM2712)", "Cortex-A76", 2.4, 4, 8, 32, True, 9.0, 64, 512, 2048),
        # A mid-range phone's big cores (e.g. Dimensity 8100 / Snapdragon 778G class).
        Device("phone", "mid-range phone, big cores", "Cortex-A78", 2.4, 4, 8, 32, True, 12.0, 64, 512, 4096),
    )
}


def get_device(name: str) -> Device:
    if name not in DEVICES:
        raise UsageError(f"unknown device {name!r}", f"use one of {', '.join(DEVICES)}")
    return DEVICES[name]
