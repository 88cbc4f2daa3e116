"""Lanes: the formats of one export split into groups written side by side, one process each.

The converters are single-threaded Python: litert-torch traces, decomposes and lowers the graph
for 15-40 s a file, ExecuTorch's lowering likewise. So the lanes other than the main one are
written in forked processes, each lane with its own int8 calibration (same tensors, same
remedies: one thread, so the same bytes as a serial export). A format names its lane in the
registry; a lane whose formats read a file of another lane joins that lane. ``jobs`` bounds the
processes: the lanes that write an int8 file (a calibration and an int8 conversion, the longest)
keep their process first, the others join the main lane. A format that nothing else reads and
whose registry lane is ``any`` (``model.pt2``) then fills the lane with the least work, by the
registry's ``cost`` (seconds measured per format). So on two cores the TFLite int8 file (its
calibration and litert-torch, ~60 s for MobileNetV3 at 224 px) is written beside every other
file, ``model.pt2`` with those (~54 s).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import ExportError

MAIN = "main"
ANY = "any"  # a format written in whichever lane has the least work


@dataclass
class Lane:
    name: str
    formats: list[Any] = field(default_factory=list)  # edgekit.formats.Format, in export order

    def describe(self) -> str:
        return ", ".join(f.name for f in self.formats)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_jobs() -> int:
    """One process per core, when processes can be forked (Linux); else one."""
    return usable_cores() if "fork" in multiprocessing.get_all_start_methods() else 1


def plan(chosen: list[Any], jobs: int) -> list[Lane]:
    """The lanes of ``chosen``: the main lane first, then the others in registry order; at most
    ``jobs`` lanes (those with an int8 file first), the rest joined to the main one. A format of
    lane ``any`` (one nothing else reads) then goes to the lane with the least work by the
    registry's ``cost``; each lane writes in registry order."""
    read = {f.source for f in chosen}
    free = [f for f in chosen if f.lane == ANY and f.name not in read]
    lane_of = {f.name: MAIN if f.lane == ANY else f.lane for f in chosen if f not in free}
    for f in chosen:  # a file read from another lane must be written first: same lane
        if f.source in lane_of and f.name in lane_of and lane_of[f.source] != lane_of[f.name]:
            lane_of[f.name] = MAIN
    names = [MAIN, *dict.fromkeys(n for n in lane_of.values() if n != MAIN)]
    with_int8 = {lane_of[f.name] for f in chosen if f.int8}
    by_cost = sorted(names[1:], key=lambda n: n not in with_int8)  # stable: registry order within
    kept = {MAIN, *by_cost[: max(jobs, 1) - 1]}
    lanes = {name: Lane(name) for name in names if name in kept}
    for f in chosen:
        if f not in free:
            lanes[lane_of[f.name] if lane_of[f.name] in kept else MAIN].formats.append(f)
    for f in free:
        min(lanes.values(), key=lambda lane: sum(g.cost for g in lane.formats)).formats.append(f)
    order = {f.name: i for i, f in enumerate(chosen)}
    for lane in lanes.values():
        lane.formats.sort(key=lambda f: order[f.name])
    return [lane for lane in lanes.values() if lane.formats or lane.name == MAIN]


class Forked:
    """``fn(*args)`` in a forked child; :meth:`result` returns its value or raises its error.

    Fork, not spawn: the child inherits the built network, the checker's reference outputs and a
    user's own module classes without pickling them. Its result comes back through a pipe.
    """

    def __init__(self, name: str, fn: Callable[..., Any], *args: Any) -> None:
        ctx = multiprocessing.get_context("fork")
        self.name = name
        self._recv, send = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_child, args=(send, fn, args), name=f"edgekit-{name}")
        self._process.start()
        send.close()

    def result(self) -> Any:
        try:
            ok, value = self._recv.recv()
        except EOFError:  # the child died before sending (killed, out of memory, a native crash)
            self._process.join()
            raise ExportError(
                f"the process writing {self.name} died (exit code {self._process.exitcode})",
                "rerun with --jobs 1 to write every file in one process",
            ) from None
        self._process.join()
        if ok:
            return value
        raise value

    def stop(self) -> None:
        """Kill the child if it still runs (the main lane failed or was interrupted)."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join()
        self._recv.close()


def _child(send: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    import torch

    for signum in (signal.SIGINT, signal.SIGTERM):  # the parent reports an interrupt, once
        signal.signal(signum, signal.SIG_DFL)
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive fork; the other core is busy
    try:
        reply = (True, fn(*args))
    except BaseException as exc:  # the parent re-raises it: same message, same exit code
        reply = (False, _picklable(exc))
    send.send(reply)
    send.close()


def _picklable(exc: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return ExportError(f"{type(exc).__name__}: {exc}")
