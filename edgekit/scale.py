"""Scale-out on Ray: ``edgekit eval --workers N`` (a local Ray) or ``--ray ADDRESS`` (a cluster).

The images are cut into contiguous shards; each Ray actor loads one session per run (the reference
and every file, in its engine) once, then evaluates the shards it is handed, one at a time. A shard
comes back as per-image figures (:class:`edgekit.evaluate.PerImage`): counts and energies, never
averages, so the driver concatenates the shards in image order and computes exactly the figures
one process computes. Files reach an actor through the shared path (the artifact folder at the same
path on its node) or, when the path is not there, through Ray's object store; either way their
sha256 is checked against the manifest before loading. Images are read by the actors from the data
folder, which must be at the same path on every node.

An actor whose process dies is restarted and its shard run again (``max_restarts``,
``max_task_retries``); past that the run stops with an error naming the shard: no image is ever
dropped from the counts. Ray is imported only here, so a run without ``--workers``/``--ray`` never
loads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.console import debug, quiet_native
from edgekit.errors import (
    ArtifactError,
    DataError,
    EdgekitError,
    RuntimeUnavailableError,
    TargetError,
    UsageError,
)

if TYPE_CHECKING:
    from calibration.preprocess import PreprocessSpec
    from edgekit import formats as fmts
    from edgekit.evaluate import EvalImages, PerImage
    from edgekit.manifest import Manifest

RAY_VERSION = "2.60.0"  # what requirements.lock pins; the cluster must run the same
MAX_RESTARTS = 3  # an actor's process may die this often (each time its shard is run again)
SHARDS_PER_WORKER = 4  # enough shards that a slow worker does not hold up the end
MAX_SHARD = 64  # images per shard at most: bounded memory per task, progress that moves
TIMING_SLOT = "timing_slot"  # a Ray resource, 1 per node: timed runs never share a node
CONNECT_TIMEOUT = 5.0  # seconds to reach a --ray address before saying nothing answers there


# --- joining or starting Ray -----------------------------------------------------------------------


@dataclass
class Cluster:
    """The Ray edgekit is connected to for one command."""

    address: str  # "local (started here)" or the ADDRESS joined
    cpus: int
    nodes: int
    start_s: float  # seconds ray.init took


@contextlib.contextmanager
def connect(workers: int | None, address: str | None) -> Iterator[Cluster]:
    """A local Ray with ``workers`` CPUs, or the cluster at ``address``; shut down on leaving (also
    on Ctrl-C / SIGTERM), which stops every Ray process a local start made.

    Quiet (no dashboard UI, no worker output on the console, errors only) and without usage stats:
    Ray makes no network call of its own. An already connected Ray (a notebook, the tests) is
    used as it is and left running."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # read by ray.init and inherited by the processes it starts
    ray = _import_ray()
    if ray.is_initialized():
        yield _describe(ray, "connected before edgekit", 0.0)
        return
    sigterm = signal.getsignal(signal.SIGTERM)
    temp = None if address else tempfile.mkdtemp(prefix=f"edgekit-{os.getpid()}-ray-", dir="/tmp")
    level = logging.INFO if debug() else logging.ERROR
    start = time.perf_counter()
    try:
        if address:
            _check_listening(address)
            ray.init(address=address, log_to_driver=debug(), logging_level=level)
        else:
            ray.init(
                address="local",  # never attach to someone else's `ray start` on this machine
                num_cpus=workers,
                resources={TIMING_SLOT: 1},  # one timed run at a time on this node (run_timed)
                include_dashboard=False,
                log_to_driver=debug(),  # the workers' output, with --debug only
                logging_level=level,
                _temp_dir=temp,  # under /tmp/edgekit-<pid>-*: swept like edgekit's temp folders
            )
        took = time.perf_counter() - start
    except (ConnectionError, ValueError, RuntimeError) as exc:
        if temp:
            shutil.rmtree(temp, ignore_errors=True)
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise TargetError(
            f"cannot start or join {where} ({_first_line(exc)})",
            "check the address (the head's host:port, `ray start --head` prints it) and that the "
            f"cluster runs ray {RAY_VERSION} on Python {sys.version_info.major}.{sys.version_info.minor}",
        ) from exc
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # ray.init installs its own; keep edgekit's (clean stop)
    try:
        yield _describe(ray, address or "local (started here)", took)
    finally:
        ray.shutdown()
        if temp:
            shutil.rmtree(temp, ignore_errors=True)


def _check_listening(address: str) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when nothing listens at HOST:PORT."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(
            f"--ray {address!r} is not HOST:PORT", "pass the head's address, e.g. --ray 10.0.0.5:6379"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise TargetError(
            f"nothing answers at {address} ({exc.strerror or exc})",
            "start the head with `ray start --head --port PORT` there, or check the address",
        ) from exc


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "--workers/--ray need Ray, which is not installed", f"pip install ray=={RAY_VERSION}"
        ) from exc
    return ray


def _describe(ray: Any, address: str, took: float) -> Cluster:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = int(ray.cluster_resources().get("CPU", 0))
    return Cluster(address, cpus, len(nodes), round(took, 2))


# --- what an actor does --------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One row of the evaluation: a format's file in one engine (row key as in evaluate.runs)."""

    key: str
    format: str
    engine: str


@dataclass(frozen=True)
class ShardResult:
    """What one shard gives back: its per-image figures per row, and where it ran."""

    index: int
    start: int
    stop: int
    figures: dict[str, PerImage]
    node: str
    pid: int
    seconds: float


@dataclass(frozen=True)
class Failed:
    """An edgekit error raised on a worker, carried back whole (message and hint)."""

    kind: type[EdgekitError]
    message: str
    hint: str | None

    def raise_(self) -> None:
        raise self.kind(self.message, self.hint)


@dataclass(frozen=True)
class Work:
    """What every actor call needs, put once in the object store (an actor's constructor takes only
    small values: Ray cannot restart an actor whose constructor arguments live in the store).

    ``stored`` maps each file name to its bytes in the object store, in a list so that Ray fetches
    them only when the shared path ``folder`` is missing on a node."""

    manifest: dict[str, Any]
    folder: str
    stored: dict[str, list[Any]]
    images: EvalImages
    preprocess: dict[str, Any]


class ShardRunner:
    """The Ray actor: one loaded session per run, kept for every shard it evaluates."""

    def __init__(self, runs: list[Run], threads: int) -> None:
        self.runs, self.threads = runs, threads
        self.sessions: dict[str, Any] | None = None
        self.layouts: dict[str, str] = {}
        self.how: dict[str, dict[str, Any]] = {}

    def load(self, work: Work) -> dict[str, dict[str, Any]] | Failed:
        """Check the files against the manifest's sha256 and load every session; how each runs."""
        try:
            self._load(work)
        except EdgekitError as exc:
            return Failed(type(exc), exc.message, exc.hint)
        return self.how

    def run(self, work: Work, index: int, start: int, stop: int) -> ShardResult | Failed:
        """Per-image figures of images ``start:stop`` for every run (a Failed on an edgekit error)."""
        from calibration.preprocess import PreprocessSpec
        from edgekit.evaluate import PerImage

        began = time.perf_counter()
        images = work.images
        try:
            if self.sessions is None:  # a restarted actor loads again
                self._load(work)
            if images.files is not None and not images.files[start].is_file():
                raise DataError(
                    f"{images.files[start]} is not on Ray node {socket.gethostname()}",
                    "put the data folder at the same path on every node (a shared mount)",
                )
            batch = images.load(PreprocessSpec.from_dict(work.preprocess), start, stop)
        except EdgekitError as exc:
            return Failed(type(exc), exc.message, exc.hint)
        outputs = {}
        for run in self.runs:
            x = batch if self.layouts[run.key] == "NCHW" else batch.transpose(0, 2, 3, 1)
            outputs[run.key] = self.sessions[run.key].run(x)
        reference = outputs[self.runs[0].key]
        figures = {key: PerImage.of(reference, out) for key, out in outputs.items()}
        took = time.perf_counter() - began
        return ShardResult(index, start, stop, figures, socket.gethostname(), os.getpid(), took)

    def _load(self, work: Work) -> None:
        from edgekit import evaluate
        from edgekit import formats as fmts
        from edgekit.manifest import Manifest
        from runtimes import get_runtime

        manifest = Manifest.from_dict(work.manifest)
        manifest.folder = str(self._files(manifest, work))
        sessions = {}
        for run in self.runs:
            fmt = fmts.get(run.format)
            sessions[run.key] = get_runtime(run.engine).load(manifest.file(run.format), threads=self.threads)
            self.layouts[run.key] = str(fmt.layout)
            self.how[run.key] = {**evaluate.how_local(fmt, run.engine), "node": socket.gethostname()}
        self.sessions = sessions

    def _files(self, manifest: Manifest, work: Work) -> Path:
        """The folder holding the manifest's files on this node: the shared path when its files
        are there, else a copy from the object store; every file checked by its sha256."""
        from edgekit.manifest import sha256

        wanted = {}
        for run in self.runs:
            entry = manifest.files[run.format]
            wanted[entry.path] = entry.sha256
            wanted.update(entry.info.get("companions", {}))
        shared = Path(work.folder)
        if all((shared / name).is_file() for name in wanted):
            folder = shared
        else:  # not on this node's disk: the driver's copy in the object store
            import ray

            # named like edgekit's temp folders: swept by a later edgekit run once this worker is gone
            folder = Path(tempfile.mkdtemp(prefix=f"edgekit-{os.getpid()}-artifact-"))
            for name in wanted:
                (folder / name).write_bytes(ray.get(work.stored[name][0]))
        for name, digest in wanted.items():
            got = sha256(folder / name)
            if got != digest:
                raise ArtifactError(
                    f"{folder / name} on Ray node {socket.gethostname()} has sha256 {got[:12]}..., "
                    f"the manifest says {digest[:12]}...",
                    "the node holds another export under the same path: copy the folder again or "
                    "remove it there (the object store copy is used when the path is absent)",
                )
        return folder


# --- the driver ----------------------------------------------------------------------------------


@dataclass
class Shard:
    index: int
    start: int
    stop: int


def shards(n: int, workers: int) -> list[Shard]:
    """Contiguous slices of ``n`` images: about SHARDS_PER_WORKER per worker, MAX_SHARD at most."""
    size = max(1, min(MAX_SHARD, math.ceil(n / (workers * SHARDS_PER_WORKER))))
    return [Shard(i, start, min(start + size, n)) for i, start in enumerate(range(0, n, size))]


def evaluate_sharded(
    manifest: Manifest,
    todo: list[tuple[str, fmts.Format, str]],
    images: EvalImages,
    spec: PreprocessSpec,
    threads: int,
    workers: int | None,
    address: str | None,
    on_shard: Callable[[ShardResult], None] | None = None,
) -> tuple[dict[str, PerImage], dict[str, dict[str, Any]], dict[str, Any]]:
    """The per-image figures of every run over all ``images``, computed by Ray actors; how each run
    ran (the actors' engines and CPUs) and how the job was spread."""
    from edgekit.evaluate import PerImage

    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}", "e.g. --workers 4")
    runs = [Run(key, fmt.name, engine) for key, fmt, engine in todo]
    began = time.perf_counter()
    # Ray's native code logs to fd 2 (restarts, object store notes): kept off the console unless --debug
    with Progress(len(images)) as progress, quiet_native(), connect(workers, address) as cluster:
        import ray

        actors = max(1, (workers or cluster.cpus) // threads)
        plan = shards(len(images), actors)
        progress.begin(
            f"eval: {len(images)} images in {len(plan)} shards on {actors} Ray worker(s) "
            f"({cluster.address}, {cluster.nodes} node(s); Ray start {cluster.start_s:.1f} s)"
        )
        job = Job(ray, manifest, runs, images, spec, threads)
        results, hows = job.run(
            actors, plan, lambda r: (progress.advance(r.stop - r.start), on_shard and on_shard(r))
        )
    wall = time.perf_counter() - began
    results.sort(key=lambda r: r.start)
    covered = [(r.start, r.stop) for r in results]
    if covered != [(s.start, s.stop) for s in plan] or sum(b - a for a, b in covered) != len(images):
        raise TargetError(
            f"the Ray workers returned images {covered[:4]}... for {len(images)} images",
            "a shard was lost; rerun (without --workers/--ray the run is in-process)",
        )
    merged = {run.key: PerImage.concat([r.figures[run.key] for r in results]) for run in runs}
    per_node: dict[str, int] = {}
    for r in results:
        per_node[r.node] = per_node.get(r.node, 0) + r.stop - r.start
    processes = len({(r.node, r.pid) for r in results})
    info = {
        "ray": cluster.address,
        "ray_version": ray.__version__,
        "nodes": cluster.nodes,
        "workers": actors,
        "threads_per_worker": threads,
        "shards": len(plan),
        "images_per_shard": plan[0].stop - plan[0].start,
        "images_per_node": per_node,
        "worker_processes": processes,
        "restarts": max(0, processes - actors),
        "ray_start_s": cluster.start_s,
        "wall_s": round(wall, 2),
        "images_per_s": round(len(images) / wall, 2),
        "merge": "per-image figures concatenated in image order; each figure a count or sum over them",
    }
    return merged, _merged_how(hows), info


@dataclass
class Job:
    """One sharded evaluation on a connected Ray: the actors, the shard queue, the results."""

    ray: Any
    manifest: Manifest
    runs: list[Run]
    images: EvalImages
    spec: PreprocessSpec
    threads: int

    def run(
        self, actors: int, plan: list[Shard], done: Callable[[ShardResult], Any]
    ) -> tuple[list[ShardResult], list[dict[str, dict[str, Any]]]]:
        """Every shard on the next idle actor; the results and each actor's description of its runs."""
        ray = self.ray
        actor_class = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(ShardRunner)
        images = self.images  # workers do not share the driver's working folder: absolute paths
        if images.files is not None:
            images = dataclasses.replace(images, files=[p.absolute() for p in images.files])
        work = ray.put(
            Work(
                self.manifest.to_dict(),
                str(Path(self.manifest.folder or ".").resolve()),
                self._stored(),
                images,
                self.spec.to_dict(),
            )
        )
        pool = [
            actor_class.options(num_cpus=self.threads).remote(self.runs, self.threads) for _ in range(actors)
        ]
        loads = [a.load.remote(work) for a in pool]
        hows = [_unwrap(_get(ray, ref, "loading the files")) for ref in loads]
        queue, idle, pending, results = deque(plan), deque(pool), {}, []
        while queue or pending:
            while queue and idle:
                actor, shard = idle.popleft(), queue.popleft()
                call = actor.run.remote(work, shard.index, shard.start, shard.stop)
                pending[call] = actor, shard
            [ready], _ = ray.wait(list(pending), num_returns=1)
            actor, shard = pending.pop(ready)
            result = _unwrap(_get(ray, ready, f"shard {shard.index} (images {shard.start}-{shard.stop - 1})"))
            results.append(result)
            idle.append(actor)
            done(result)
        return results, hows

    def _stored(self) -> dict[str, list[Any]]:
        """Every file the runs need, put in the object store once (for nodes without the path)."""
        folder, names = Path(self.manifest.folder or "."), []
        for run in self.runs:
            entry = self.manifest.files[run.format]
            names += [entry.path, *entry.info.get("companions", {})]
        return {name: [self.ray.put((folder / name).read_bytes())] for name in dict.fromkeys(names)}


def _get(ray: Any, ref: Any, what: str) -> Any:
    """``ray.get(ref)``; a dead worker or a failed task becomes a TargetError naming ``what``."""
    from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

    try:
        return ray.get(ref)
    except (RayActorError, WorkerCrashedError) as exc:
        detail = str(exc).partition("Worker exit detail:")[2].strip().split(". ")[0] or "no detail"
        raise TargetError(
            f"a Ray worker kept dying {what} (restarted {MAX_RESTARTS} times at most; Ray: "
            f"{detail[:120]}); the run stops rather than leave its part out",
            "rerun with --debug to see the workers' output, or without --workers to run in-process",
        ) from exc
    except RayTaskError as exc:
        cause = exc.cause if exc.cause is not None else exc
        raise TargetError(
            f"{what} failed on a Ray worker: {_first_line(cause, last=True)}",
            "run without --workers to see the failure in-process (add --debug for the traceback)",
        ) from exc


def _first_line(exc: BaseException, last: bool = False) -> str:
    """``Kind: message`` in one line (the last line of a remote traceback with ``last``)."""
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {lines[-1 if last else 0][:200]}"


def _unwrap(value: Any) -> Any:
    if isinstance(value, Failed):
        value.raise_()
    return value


def _merged_how(hows: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One description per run: a field the actors disagree on (nodes of another CPU) lists
    their values, ``a | b``."""
    merged = {}
    for key in hows[0]:
        fields: dict[str, Any] = {}
        for name in hows[0][key]:
            values = list(dict.fromkeys(h[key].get(name) for h in hows))
            fields[name] = values[0] if len(values) == 1 else " | ".join(str(v) for v in values)
        fields.pop("node")
        merged[key] = fields
    return merged


# --- other jobs: configurations and zoo models as Ray tasks -------------------------------------


def map_tasks(
    fn: Callable[..., Any],
    items: list[dict[str, Any]],
    shared: dict[str, Any],
    workers: int | None,
    address: str | None,
    label: str,
) -> list[Any]:
    """``[fn(**shared, **item) for item in items]`` as Ray tasks, one CPU each, results in order.

    ``shared`` (a model, images) goes to the object store once. An edgekit error of a task is
    raised here as it was raised there."""
    with (
        Progress(len(items), label, "tasks") as progress,
        quiet_native(),
        connect(workers, address) as cluster,
    ):
        import ray

        progress.begin(f"{label}: {len(items)} tasks on {cluster.cpus} Ray CPU(s) ({cluster.address})")
        task = ray.remote(num_cpus=1, max_retries=MAX_RESTARTS)(_call)
        stored = {name: ray.put(value) for name, value in shared.items()}
        pending = {task.remote(fn, stored, item): i for i, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        while pending:
            [ready], _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready)
            results[index] = _unwrap(_get(ray, ready, f"{label} task {index} ({items[index]})"))
            progress.advance(1)
    return results


def run_timed(
    prepare: Callable[..., Any],
    measure: Callable[..., Any],
    items: list[dict[str, Any]],
    workers: int | None,
    address: str | None,
    label: str,
    cpus: int = 1,
) -> list[Any]:
    """``measure(prepare(**item))`` per item: the ``prepare`` steps (exports) in parallel on any
    CPU; each ``measure`` (timed runs, ``cpus`` threads) on the node that prepared it, holding the
    node's one TIMING_SLOT, so no two timed runs ever share a node. Results in order."""
    with (
        Progress(len(items), label, "items") as progress,
        quiet_native(),
        connect(workers, address) as cluster,
    ):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        slots = int(ray.cluster_resources().get(TIMING_SLOT, 0))
        if not slots:
            raise TargetError(
                f"the Ray cluster at {cluster.address} has no {TIMING_SLOT!r} resource",
                f"start each node with `ray start ... --resources='{{\"{TIMING_SLOT}\": 1}}'`",
            )
        progress.begin(
            f"{label}: {len(items)} items, preparing on {cluster.cpus} Ray CPU(s), timed runs one at a "
            f"time per node ({slots} node(s) with a {TIMING_SLOT})"
        )
        prep = ray.remote(num_cpus=1, max_retries=MAX_RESTARTS)(_prepare_here)
        timed = ray.remote(num_cpus=cpus, resources={TIMING_SLOT: 1}, max_retries=MAX_RESTARTS)(_call)
        preparing = {prep.remote(prepare, item): i for i, item in enumerate(items)}
        timing: dict[Any, int] = {}
        results: list[Any] = [None] * len(items)
        while preparing or timing:
            [ready], _ = ray.wait([*preparing, *timing], num_returns=1)
            if ready in preparing:
                index = preparing.pop(ready)
                node, prepared = _get(ray, ready, f"{label}: preparing item {index}")
                pinned = NodeAffinitySchedulingStrategy(node, soft=False)  # its files are on that node
                timing[
                    timed.options(scheduling_strategy=pinned).remote(measure, {}, {"prepared": prepared})
                ] = index
            else:
                index = timing.pop(ready)
                results[index] = _unwrap(_get(ray, ready, f"{label}: timing item {index}"))
                progress.advance(1)
    return results


def _call(fn: Callable[..., Any], shared: dict[str, Any], item: dict[str, Any]) -> Any:
    """A task's body: ``fn(**shared, **item)``; an edgekit error comes back as a Failed."""
    import ray

    values = {name: ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref for name, ref in shared.items()}
    try:
        return fn(**values, **item)
    except EdgekitError as exc:
        return Failed(type(exc), exc.message, exc.hint)


def _prepare_here(prepare: Callable[..., Any], item: dict[str, Any]) -> tuple[str, Any]:
    import ray

    return ray.get_runtime_context().get_node_id(), prepare(**item)


class Progress:
    """A whole job's progress on stderr: a rich bar on a terminal, a line at start and end
    otherwise (logs stay short). Writes to a duplicate of fd 2, like edgekit.console.Steps, so that
    it shows while Ray's native output is held back."""

    def __init__(self, total: int, title: str = "eval", unit: str = "images") -> None:
        self.total, self.title, self.unit, self.done = total, title, unit, 0
        self.live = sys.stderr.isatty()

    def __enter__(self) -> Progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        self.file = os.fdopen(os.dup(2), "w", buffering=1)
        self.start = time.perf_counter()
        self.console = Console(
            file=self.file, force_terminal=self.live, highlight=False, markup=False, soft_wrap=True
        )
        self.bar = Bar(
            TextColumn(self.title),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        self.task = self.bar.add_task(self.unit, total=self.total)
        return self

    def begin(self, line: str) -> None:
        self.console.print(line)
        if self.live:
            self.bar.start()

    def advance(self, n: int) -> None:
        self.done += n
        if self.live:
            self.bar.update(self.task, completed=self.done)

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        took = time.perf_counter() - self.start
        if self.live:
            self.bar.stop()
        how = "stopped after" if kind is not None else "done:"
        rate = self.done / max(took, 1e-9)
        self.console.print(
            f"{self.title}: {how} {self.done} of {self.total} {self.unit} in {took:.1f} s ({rate:.2f}/s)"
        )
        self.file.close()
