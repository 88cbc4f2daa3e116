"""ShuffleNetV2's four guidelines, measured on the real runtimes (Ma et al., 2018).

Paper: https://arxiv.org/abs/1807.11164, Section 2 and Tables 1-4. Each guideline is a stack of
small building blocks at 56x56 whose FLOPs are held fixed while one design choice varies; we
export each stack like any model (ONNX, TFLite), time it on the runtimes and print, beside the
time, the two costs a reader might use to predict it: FLOPs (multiply-accumulates) and the
memory access cost (MAC, in elements: activations read and written plus weights).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

SIDE = 56
BLOCKS = 10  # the paper repeats every building block 10 times

# The paper's claims; Table 1's ARM column (images/s, x1 channel pairs) is the one the seed prints.
PAPER = {
    "G1": {
        "claim": "equal channel width minimises memory access cost: c1:c2 = 1:1 runs fastest",
        "arm_x1_images_per_s": {"1:1": 76.2, "1:2": 72.9, "1:6": 69.1, "1:12": 57.6},
    },
    "G2": {"claim": "excessive group convolution increases MAC: more groups run slower at equal FLOPs"},
    "G3": {"claim": "network fragmentation reduces parallelism: one wide branch runs fastest"},
    "G4": {
        "claim": "element-wise operations are not negligible: removing ReLU and shortcut speeds a unit up"
    },
}


@dataclass
class Case:
    guideline: str
    name: str
    module: nn.Module
    channels: int
    macs: int = 0
    memory: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# --- the building blocks -----------------------------------------------------------------------


class PointwisePair(nn.Sequential):
    """G1/G2 block: 1x1 conv c1 -> c2, then 1x1 conv c2 -> c1 (optionally grouped)."""

    def __init__(self, c1: int, c2: int, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c1, c2, 1, groups=groups, bias=False), nn.Conv2d(c2, c1, 1, groups=groups, bias=False)
        )


class Fragmented(nn.Module):
    """G3 block: ``n`` 1x1 convs of width ``c`` in series, or ``n`` parallel branches summed."""

    def __init__(self, c: int, n: int, parallel: bool) -> None:
        super().__init__()
        self.parallel = parallel
        self.branches = nn.ModuleList(nn.Conv2d(c, c, 1, bias=False) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            return sum(branch(x) for branch in self.branches)
        for branch in self.branches:
            x = branch(x)
        return x


class Bottleneck(nn.Module):
    """G4 block: ResNet bottleneck (1x1 -> 3x3 -> 1x1, 4x narrower inside) with ReLU/shortcut switches."""

    def __init__(self, c: int, relu: bool, shortcut: bool) -> None:
        super().__init__()
        mid = c // 4
        act: Callable[[], nn.Module] = (lambda: nn.ReLU()) if relu else nn.Identity
        self.body = nn.Sequential(
            nn.Conv2d(c, mid, 1, bias=False),
            act(),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            act(),
            nn.Conv2d(mid, c, 1, bias=False),
        )
        self.relu = act()
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return self.relu(x + y if self.shortcut else y)


def _stack(block: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(*(block() for _ in range(BLOCKS))).eval()


# --- the experiments (Tables 1-4) ---------------------------------------------------------------


def g1_cases(scale: int = 1) -> list[Case]:
    """Table 1: c1:c2 = 1:1, 1:2, 1:6, 1:12 at fixed FLOPs (the paper's ARM channel pairs)."""
    pairs = {"1:1": (32, 32), "1:2": (22, 44), "1:6": (13, 78), "1:12": (9, 108)}
    return [
        Case(
            "G1",
            f"{ratio} x{scale}",
            _stack(lambda c1=c1 * scale, c2=c2 * scale: PointwisePair(c1, c2)),
            c1 * scale,
            extra={"ratio": ratio, "c1": c1 * scale, "c2": c2 * scale, "scale": scale},
        )
        for ratio, (c1, c2) in pairs.items()
    ]


def g2_cases(scale: int = 1) -> list[Case]:
    """Table 2: 1x1 group convs, g = 1, 2, 4, 8, channels widened so FLOPs stay fixed."""
    base = 64 * scale  # the paper's ARM setting: c = 64 for g = 1
    cases = []
    for g in (1, 2, 4, 8):
        c = round(base * math.sqrt(g) / g) * g  # c^2 / g = base^2, rounded to a multiple of g
        cases.append(
            Case(
                "G2",
                f"g={g} x{scale}",
                _stack(lambda c=c, g=g: PointwisePair(c, c, groups=g)),
                c,
                extra={"groups": g, "c": c, "scale": scale},
            )
        )
    return cases


def g3_cases(scale: int = 1) -> list[Case]:
    """Table 3: 1, 2, 4 fragments in series and in parallel, FLOPs fixed by narrowing each branch."""
    base = 64 * scale
    cases = []
    for n, parallel in ((1, False), (2, False), (4, False), (2, True), (4, True)):
        c = round(base / math.sqrt(n))
        label = "1-fragment" if n == 1 else f"{n}-fragment-{'parallel' if parallel else 'series'}"
        cases.append(
            Case(
                "G3",
                f"{label} x{scale}",
                _stack(lambda c=c, n=n, p=parallel: Fragmented(c, n, p)),
                c,
                extra={"fragments": n, "parallel": parallel, "c": c, "scale": scale},
            )
        )
    return cases


def g4_cases(scale: int = 1) -> list[Case]:
    """Table 4: a bottleneck unit with ReLU and shortcut on or off (same FLOPs by construction)."""
    c = 32 * scale
    return [
        Case(
            "G4",
            f"relu={'on' if r else 'off'} shortcut={'on' if s else 'off'} c={c}",
            _stack(lambda r=r, s=s: Bottleneck(c, r, s)),
            c,
            extra={"relu": r, "shortcut": s, "c": c},
        )
        for r, s in ((False, False), (True, False), (False, True), (True, True))
    ]


EXPERIMENTS: dict[str, Callable[[int], list[Case]]] = {
    "G1": g1_cases,
    "G2": g2_cases,
    "G3": g3_cases,
    "G4": g4_cases,
}


def count(case: Case) -> Case:
    """FLOPs from the counter; MAC as in the seed: hw(c1+c2) + weights per conv, plus element-wise traffic."""
    from edgekit.counting import profile_module

    profile = profile_module(case.module, (1, case.channels, SIDE, SIDE))
    case.macs = profile.macs
    # Convolutions, ReLUs (read + write) come from the per-layer counts; the shortcut add reads
    # two tensors and writes one, which no module call shows, so it is added here.
    case.memory = sum(layer.memory_access for layer in profile.layers)
    if case.extra.get("shortcut"):
        case.memory += BLOCKS * 3 * case.channels * SIDE * SIDE
    if case.extra.get("parallel"):
        n = case.extra["fragments"]
        case.memory += BLOCKS * (n - 1) * 3 * case.channels * SIDE * SIDE
    return case


# --- measuring ------------------------------------------------------------------------------------


def float_format(runtime: str) -> Any:
    """The float32 format an engine runs by default (the registry's; model.pt2 for torch)."""
    from edgekit import formats

    return next(f for f in formats.registry().values() if f.precision == "fp32" and f.engine == runtime)


def time_session(session: Any, x: Any, min_time: float, min_runs: int = 5) -> list[float]:
    """Latencies in ms: 3 warm-up calls, then at least ``min_runs`` and ``min_time`` seconds."""
    from runtimes.base import time_calls

    native = session.prepare(x)
    call = lambda: session.invoke(native)  # noqa: E731
    time_calls(call, 3)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        times += time_calls(call, 1)
    return times


def measure(
    case: Case, runtime: str, threads: int, min_time: float, workdir: Path, target: str = "local"
) -> dict[str, Any]:
    """Export ``case`` for ``runtime`` and time it; returns one result row."""
    import numpy as np

    from edgekit.formats import WriteRequest
    from runtimes import get_runtime

    x = torch.randn(1, case.channels, SIDE, SIDE)
    fmt = float_format(runtime)
    path = workdir / f"{case.guideline}-{abs(hash(case.name))}-{fmt.filename}"
    fmt.load_writer()(WriteRequest(case.module, x, path))
    batch = x.numpy().astype(np.float32)
    batch = batch if fmt.layout == "NCHW" else np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
    if target == "local":
        session = get_runtime(runtime).load(path, threads=threads)
        times = time_session(session, batch, min_time)
        emulated = False
    else:
        from runtimes.targets import get_target

        res = get_target(target).run(path, runtime, threads=threads, warmup=1, runs=3)
        times, emulated = res["latencies_ms"], res.get("emulated", False)
    p50 = statistics.median(times)
    return {
        "guideline": case.guideline,
        "case": case.name,
        **case.extra,
        "runtime": runtime,
        "threads": threads,
        "target": target,
        "emulated": emulated,
        "macs": case.macs,
        "memory_access": case.memory,
        "p50_ms": p50,
        "images_per_s": 1e3 / p50,
        "runs": len(times),
    }


def run_guidelines(
    runtimes: list[str] | None = None,
    threads: int = 1,
    target: str = "local",
    scales: tuple[int, ...] = (1, 2, 4),
    which: tuple[str, ...] = ("G1", "G2", "G3", "G4"),
    min_time: float = 0.5,
    figure2: tuple[str, ...] = (),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure the guidelines (and Figure 2 for the ``figure2`` networks).

    Returns ``{"machine", "settings", "rows", "findings", "time_shares", "skipped"}``.
    """
    from edgekit.errors import UsageError
    from edgekit.machine import facts as machine_facts
    from runtimes import get_runtime

    unknown = [g for g in which if g not in EXPERIMENTS]
    if unknown:
        raise UsageError(f"unknown guideline {', '.join(unknown)}", f"choose from {', '.join(EXPERIMENTS)}")
    wanted = runtimes or ["onnxruntime", "litert"]
    skipped, usable = [], []
    for name in wanted:
        ok, reason = get_runtime(name).available()
        (usable if ok else skipped).append(name if ok else {"runtime": name, "reason": reason})
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-guidelines-") as tmp:
        for gid in which:
            for scale in scales if gid != "G4" else scales[:1]:
                for case in EXPERIMENTS[gid](scale):
                    count(case)
                    for runtime in usable:
                        if progress:
                            progress(f"{gid} {case.name} on {runtime}")
                        rows.append(measure(case, runtime, threads, min_time, Path(tmp), target))
    return {
        "machine": machine_facts(),
        "settings": {
            "side": SIDE,
            "blocks": BLOCKS,
            "threads": threads,
            "target": target,
            "min_time_s": min_time,
            "batch": 1,
            "how": "median latency of one image, after 3 warm-up calls, at least 5 calls "
            f"and {min_time} s of calls per case",
        },
        "rows": rows,
        "skipped": skipped,
        "findings": findings(rows),
        # Only ONNX Runtime's profiler times ops; LiteRT 2.3's Python API has no per-op timer.
        "time_shares": time_shares(figure2, threads=threads, progress=progress)
        if figure2 and target == "local" and "onnxruntime" in usable
        else [],
    }


# --- reading the results ----------------------------------------------------------------------


def _spearman(a: list[float], b: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        # Ties share their average rank, so equal FLOPs carry no ordering (correlation nan).
        return [sum(1 for y in v if y < x) + (sum(1 for y in v if y == x) - 1) / 2 for x in v]

    ra, rb = ranks(a), ranks(b)
    n = len(a)
    if n < 2:
        return float("nan")
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else float("nan")


def findings(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per guideline, runtime and scale: does the paper's ordering hold here, and which cost predicts time?"""
    out = []
    groups: dict[tuple[str, str, Any], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["guideline"], row["runtime"], row.get("scale", 1)), []).append(row)
    for (gid, runtime, scale), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        fastest = min(items, key=lambda r: r["p50_ms"])
        expected = items[0]  # the paper's preferred case is listed first in every experiment
        times = [r["p50_ms"] for r in items]
        out.append(
            {
                "guideline": gid,
                "runtime": runtime,
                "scale": scale,
                "paper_claim": PAPER[gid]["claim"],
                "paper_best": expected["case"],
                "fastest_here": fastest["case"],
                "agrees": fastest is expected or expected["p50_ms"] <= 1.05 * fastest["p50_ms"],
                "spread": max(times) / min(times),
                "rank_corr_time_vs_flops": _spearman(times, [r["macs"] for r in items]),
                "rank_corr_time_vs_mac": _spearman(times, [r["memory_access"] for r in items]),
            }
        )
    return out


# --- Figure 2: where the time goes in whole networks --------------------------------------------

CONV_CATEGORIES = ("conv", "depthwise", "pointwise")


def time_shares(
    networks: tuple[str, ...] = ("mobilenet_v2", "shufflenet_v1", "shufflenet_v2"),
    runtime: str = "onnxruntime",
    threads: int = 1,
    resolution: int = 224,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Share of time in convolutions vs element-wise/data movement (profiled) next to their share of FLOPs."""
    from edgekit import bench, pipeline
    from edgekit.counting import model_info

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-fig2-") as tmp:
        for name in networks:
            if progress:
                progress(f"Figure 2: {name} on {runtime}")
            folder = Path(tmp) / name
            fmt = float_format(runtime)
            pipeline.export(name, out_dir=str(folder), formats=[fmt.name], resolution=resolution)
            result = bench.bench(
                str(folder), runtimes=[runtime], threads=[threads], runs=20, min_time=0.5, profile=True
            )
            fp32 = next(r for r in result.results if r.format == fmt.name and r.profile)
            by_cat = fp32.profile["by_category_ms"]
            total = sum(by_cat.values()) or 1.0
            conv_ms = sum(ms for k, ms in by_cat.items() if k in CONV_CATEGORIES)
            info = model_info(name, resolution=resolution)
            conv_macs = sum(
                v["macs"]
                for k, v in info["by_kind"].items()
                if k in ("conv", "pointwise", "depthwise", "group conv")
            )
            rows.append(
                {
                    "model": name,
                    "runtime": runtime,
                    "threads": threads,
                    "resolution": resolution,
                    "conv_time_share": conv_ms / total,
                    "other_time_share": 1 - conv_ms / total,
                    "conv_flops_share": conv_macs / info["macs"],
                    "time_by_category_ms": by_cat,
                    "p50_ms": fp32.p50_ms,
                    "runs": fp32.runs,
                }
            )
    return rows


# --- output ---------------------------------------------------------------------------------------


def to_markdown(result: dict[str, Any]) -> str:
    """One Markdown table per guideline (time beside FLOPs and MAC), the findings, and Figure 2."""
    s = result["settings"]
    lines = [
        f"Measured on {result['machine'].get('cpu', 'this host')} ({s['target']}), {s['threads']} thread(s), "
        f"batch 1, {s['side']}x{s['side']} input, {s['blocks']} blocks per network; {s['how']}.",
        "",
    ]
    if any(r.get("emulated") for r in result["rows"]):
        lines += ["**Emulated times (qemu user mode): not representative of the device.**", ""]
    for gid in EXPERIMENTS:
        rows = [r for r in result["rows"] if r["guideline"] == gid]
        if not rows:
            continue
        lines += [
            f"### {gid}: {PAPER[gid]['claim']}",
            "",
            "| case | runtime | MFLOPs (MACs) | MAC (M elements) | p50 ms | images/s |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['case']} | {r['runtime']} | {r['macs'] / 1e6:.1f} | {r['memory_access'] / 1e6:.2f} | "
            f"{r['p50_ms']:.3f} | {r['images_per_s']:.1f} |"
            for r in rows
        ]
        lines.append("")
        for f in (f for f in result["findings"] if f["guideline"] == gid):
            verdict = "agrees with the paper" if f["agrees"] else "DISAGREES with the paper"  # within 5%
            lines.append(
                f"- {f['runtime']} x{f['scale']}: fastest here `{f['fastest_here']}` ({verdict}; the paper "
                f"prefers `{f['paper_best']}`; agreement = its case within 5% of the fastest), "
                f"spread {f['spread']:.2f}x; rank correlation of time with "
                f"FLOPs {_fmt_corr(f['rank_corr_time_vs_flops'])}, "
                f"with MAC {_fmt_corr(f['rank_corr_time_vs_mac'])}."
            )
        lines.append("")
    if result.get("time_shares"):
        lines += [
            "### Figure 2: time in convolutions vs everything else",
            "",
            "| model | runtime | conv share of time | conv share of FLOPs | p50 ms |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['model']} @{r['resolution']} | "
            f"{r['runtime']} ({r['threads']} thr, {r['runs']} runs, profiled) | "
            f"{r['conv_time_share']:.0%} | {r['conv_flops_share']:.0%} | {r['p50_ms']:.2f} |"
            for r in result["time_shares"]
        ]
        lines.append("")
    return "\n".join(lines)


def _fmt_corr(value: float) -> str:
    return "n/a (all equal)" if math.isnan(value) else f"{value:+.2f}"


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Images/s per case, one panel per guideline, bars per runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gids = [g for g in EXPERIMENTS if any(r["guideline"] == g for r in result["rows"])]
    fig, axes = plt.subplots(1, len(gids), figsize=(4.5 * len(gids), 4), squeeze=False)
    for ax, gid in zip(axes[0], gids, strict=True):
        rows = [r for r in result["rows"] if r["guideline"] == gid]
        cases = list(dict.fromkeys(r["case"] for r in rows))
        runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
        width = 0.8 / len(runtimes)
        for i, rt in enumerate(runtimes):
            vals = [
                next((r["images_per_s"] for r in rows if r["case"] == c and r["runtime"] == rt), 0)
                for c in cases
            ]
            ax.bar([j + i * width for j in range(len(cases))], vals, width, label=rt)
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(cases))], cases, rotation=60, ha="right", fontsize=7
        )
        ax.set_title(
            f"{gid} ({result['settings']['threads']} thread(s), {result['settings']['target']})", fontsize=9
        )
        ax.set_ylabel("images/s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
