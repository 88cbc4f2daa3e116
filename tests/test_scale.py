"""Scale-out on a real Ray: sharded eval equals one process, by a local Ray (2 CPUs, started once for
the module) and by a `ray start --head` cluster on 127.0.0.1 joined by address; a killed worker is
retried, or the run stops, but its images are never dropped from the counts."""

from __future__ import annotations

import contextlib
import functools
import getpass
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import free_port

from edgekit import evaluate, scale
from edgekit.errors import ArtifactError, TargetError

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 48  # 8 shards of 6 on 2 workers: enough shards to kill a worker mid-run


@pytest.fixture(scope="module")
def folder(small_artifact, tmp_path_factory) -> Path:
    """A copy of the small artifact (eval writes eval.json beside the manifest)."""
    out = tmp_path_factory.mktemp("scale") / "mobilenet_v2"
    shutil.copytree(small_artifact, out)
    return out


@pytest.fixture(scope="module")
def single(folder, imagenet_sample) -> dict:
    """The in-process figures of the images the sharded runs see."""
    return evaluate.evaluate(folder, data=imagenet_sample, limit=IMAGES).to_dict()


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray with 2 CPUs for the module (scale.connect, as `--workers 2` starts it)."""
    with scale.connect(2, None) as cluster:
        yield cluster


def test_sharded_eval_equals_single_process(folder, imagenet_sample, single, local_ray):
    sharded = evaluate.evaluate(folder, data=imagenet_sample, limit=IMAGES, workers=2).to_dict()
    # Per-image counts and energies concatenated in image order: the very same figures, every one
    # (top-1/top-5, agreement, top-5 overlap, cosine, SQNR, worst images, per class).
    assert sharded["formats"] == single["formats"]
    assert sharded["classes"] == single["classes"]
    info = sharded["measured"]["ray"]
    assert (info["workers"], info["shards"], sum(info["images_per_node"].values())) == (2, 8, IMAGES)
    assert info["restarts"] == 0 and single["formats"][0]["images"] == IMAGES


def test_killed_worker_is_retried_and_counts_stay_complete(folder, imagenet_sample, single, local_ray):
    """SIGKILL one worker process while the other's shard comes back: Ray restarts the actor and
    runs its shard again; the merged figures are those of one process."""
    seen: set[int] = set()
    killed: list[int] = []

    def kill_the_other(result: scale.ShardResult) -> None:
        others = seen - {result.pid}
        if others and not killed:  # the other worker is busy with its next shard
            killed.append(others.pop())
            assert killed[0] > 1 and killed[0] != os.getpid()
            os.kill(killed[0], signal.SIGKILL)
        seen.add(result.pid)

    out = evaluate.evaluate(
        folder, data=imagenet_sample, limit=IMAGES, formats=["onnx"], workers=2, on_shard=kill_the_other
    ).to_dict()
    assert killed, "no worker was killed: the test did not test anything"
    assert out["measured"]["ray"]["restarts"] >= 1
    assert out["formats"] == single["formats"][:2]  # torch and onnx-fp32


def test_worker_dying_past_its_restarts_stops_the_run(folder, imagenet_sample, local_ray, monkeypatch):
    monkeypatch.setattr(scale, "MAX_RESTARTS", 0)
    killed: list[int] = []

    def kill_once(result: scale.ShardResult) -> None:
        if not killed:
            killed.append(result.pid)
            assert result.pid > 1 and result.pid != os.getpid()
            os.kill(result.pid, signal.SIGKILL)  # the one worker's next shard finds it dead, for good

    with pytest.raises(TargetError, match="kept dying") as err:
        evaluate.evaluate(
            folder, data=imagenet_sample, limit=IMAGES, formats=["onnx"], workers=1, on_shard=kill_once
        )
    assert "rather than leave its part out" in err.value.message and "\n" not in str(err.value)


def test_files_checked_by_sha256_on_the_shared_path_and_from_the_object_store(
    folder, local_ray, tmp_path, monkeypatch
):
    from edgekit.manifest import read_manifest

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the object store's copies land here

    manifest = read_manifest(folder)
    runs = [scale.Run("onnx-fp32", "onnx-fp32", "onnxruntime")]
    name = manifest.files["onnx-fp32"].path
    good = (folder / name).read_bytes()
    images = evaluate.EvalImages([], None, "no images: load() reads none")

    def work(where: Path, stored: bytes) -> scale.Work:
        return scale.Work(manifest.to_dict(), str(where), {name: [ray.put(stored)]}, images, {})

    # The path is absent on this "node": the object store's copy, checked and loaded.
    how = scale.ShardRunner(runs, 1).load(work(tmp_path / "absent", good))
    assert how["onnx-fp32"]["runtime"] == "onnxruntime"
    failed = scale.ShardRunner(runs, 1).load(work(tmp_path / "absent", good[:-1] + b"x"))
    assert failed.kind is ArtifactError and "sha256" in failed.message
    # Another export under the same path: refused, never run.
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / name).write_bytes(good[:-1] + b"x")
    failed = scale.ShardRunner(runs, 1).load(work(stale, good))
    assert failed.kind is ArtifactError and "the manifest says" in failed.message


def test_tasks_keep_their_order_and_errors(local_ray):
    from edgekit.errors import DataError

    def scaled(factor: int, k: int) -> int:  # defined here: Ray ships it by value
        if k < 0:
            raise DataError(f"k={k} is negative", "pass k >= 0")
        return factor * k

    items = [{"k": k} for k in (3, 1, 2)]
    assert scale.map_tasks(scaled, items, {"factor": 10}, 2, None, "test") == [30, 10, 20]
    with pytest.raises(DataError, match="k=-1 is negative") as err:
        scale.map_tasks(scaled, [{"k": -1}], {"factor": 1}, 2, None, "test")
    assert err.value.hint == "pass k >= 0"


def test_timed_runs_never_share_a_node(local_ray):
    """The zoo bench's schedule: preparations in parallel, timed runs one at a time per node."""
    import time

    def prepare(i: int) -> int:
        time.sleep(0.2)
        return i

    def measure(prepared: int) -> tuple[int, float, float]:
        start = time.monotonic()  # one host: the same clock for every worker
        time.sleep(0.3)
        return prepared, start, time.monotonic()

    out = scale.run_timed(prepare, measure, [{"i": i} for i in range(4)], 2, None, "test")
    assert [i for i, _, _ in out] == [0, 1, 2, 3]
    spans = sorted((start, end) for _, start, end in out)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 in its own temp dir; stopped by the pids it started (never
    `ray stop`, which would stop every Ray on the machine)."""
    temp = Path("/tmp") / f"edgekit-{os.getpid()}-rayhead-{free_port()}"  # short: Ray's socket paths
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    proc = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        said = []
        for line in proc.stdout:  # until the head is up (it goes on running, blocked)
            said.append(line)
            if "Ray runtime started" in line:
                break
        else:
            pytest.fail(f"ray start --head failed: {''.join(said)[-1000:]}")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        _kill_leftovers(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def _kill_leftovers(marker: str) -> None:
    """Every process whose command line names ``marker`` (the head's temp dir): only ours."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and marker in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def test_eval_joins_a_cluster_by_address_quietly(folder, imagenet_sample, head):
    limit = 16
    here = evaluate.evaluate(folder, data=imagenet_sample, limit=limit, formats=["tflite-fp16"]).to_dict()
    cmd = [sys.executable, "-m", "edgekit", "eval", str(folder), "--data", str(imagenet_sample)]
    cmd += ["--limit", str(limit), "--formats", "tflite-fp16", "--ray", head, "--workers", "1", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    assert data["formats"] == here["formats"]
    assert data["measured"]["ray"]["ray"] == head and data["measured"]["ray"]["workers"] == 1
    # The console: edgekit's own progress lines only, no Ray log line.
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert all(line.startswith("eval: ") for line in lines), lines


# --- the device farm: one real sshd on 127.0.0.1 and one port nobody listens on -------------------


def test_farm_reports_the_unreachable_target_and_the_others_finish(folder, sshd, monkeypatch):
    from click.testing import CliRunner

    from edgekit import farm
    from edgekit.cli import cli

    options = {"key_file": sshd["key_file"], "known_hosts": sshd["known_hosts"], "connect_timeout": 3}
    options["remote_python"] = sys.executable  # the board's Python with the engines
    # the CLI has no key options (a board's key is in ~/.ssh): the test's key goes in here
    monkeypatch.setattr(farm, "bench_farm", functools.partial(farm.bench_farm, target_options=options))
    good = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd['port']}"
    bad = f"ssh://nobody@127.0.0.1:{free_port()}"
    args = ["bench", str(folder), "--formats", "onnx-fp32", "--runtime", "onnxruntime"]
    args += ["--warmup", "1", "--runs", "5", "--target", good, "--target", bad, "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output  # not every board gave its rows
    data = json.loads(result.stdout)
    assert [(r["target"], r["format"], r["runs"]) for r in data["results"]] == [(good, "onnx-fp32", 5)]
    outcomes = {o["target"]: o for o in data["farm"]["targets"]}
    assert outcomes[good]["error"] is None and outcomes[good]["rows"] == 1
    assert "cannot reach" in outcomes[bad]["error"] and outcomes[bad]["seconds"] < 10
    assert f"error: {bad}: " in result.stderr
    stored = json.loads((folder / "bench.json").read_text())
    assert [r["target"] for r in stored["results"]] == [good]


def test_an_address_nobody_listens_on_fails_in_seconds():
    start = time.monotonic()
    with pytest.raises(TargetError, match="nothing answers at 127"):
        scale._check_listening(f"127.0.0.1:{free_port()}")
    assert time.monotonic() - start < scale.CONNECT_TIMEOUT + 1
