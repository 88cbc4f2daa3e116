"""The real console entry (`python -m edgekit`) for the zoo and counting commands."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

REQUIRED_KEYS = {"name", "family", "params", "macs", "resolution", "pretrained", "aliases"}


def edgekit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edgekit", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _zoo_complete() -> None:
    from edgekit.zoo import list_models

    try:
        list_models()
    except ImportError as exc:
        pytest.skip(f"zoo incomplete: {exc}")


def test_help_is_fast_and_does_not_import_torch() -> None:
    start = time.perf_counter()
    result = edgekit("--help")
    assert result.returncode == 0, result.stderr
    assert "models" in result.stdout and "info" in result.stdout
    assert time.perf_counter() - start < 10  # generous: 2 cores shared; torch alone takes longer
    heavy = "('torch', 'onnxruntime', 'ai_edge_litert', 'tensorflow')"
    code = f"import sys, edgekit.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_success_exit_skips_teardown_but_runs_atexit_and_flushes() -> None:
    # main() leaves with os._exit after a success: atexit handlers (Ray's shutdown, finalizers)
    # must still run, and buffered output must reach a pipe
    code = (
        "import atexit, sys; atexit.register(lambda: print('atexit ran'));"
        "sys.argv = ['edgekit', 'models', '--json']; from edgekit.cli import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listing, tail = result.stdout.rsplit("]", 1)
    assert json.loads(listing + "]") and tail.strip() == "atexit ran"


def test_models_json() -> None:
    _zoo_complete()
    result = edgekit("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) >= 16
    for row in rows:
        assert row.keys() >= REQUIRED_KEYS, row
        assert isinstance(row["params"], int) and row["params"] > 0, row["name"]
        assert isinstance(row["macs"], int) and row["macs"] > 0, row["name"]
    by_name = {row["name"]: row for row in rows}
    assert (by_name["mobilenet_v2"]["params"], by_name["mobilenet_v2"]["macs"]) == (3_504_872, 300_774_272)


def test_info_mobilenet_v2_json() -> None:
    _zoo_complete()
    result = edgekit("info", "mobilenet_v2", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["params"], info["macs"]) == (3_504_872, 300_774_272)
    assert {"model", "width", "resolution", "mac_memory", "layers", "by_kind"} <= info.keys()
    assert sum(layer["macs"] for layer in info["layers"]) == info["macs"]
    assert set(info["layers"][0]) == {"name", "kind", "out_shape", "params", "macs", "memory_access"}


def test_info_table_has_totals() -> None:
    _zoo_complete()
    result = edgekit("info", "mobilenet_v2", "--resolution", "96")
    assert result.returncode == 0, result.stderr
    assert "features.18.0" in result.stdout and "depthwise" in result.stdout and "total" in result.stdout


def test_unknown_model_is_one_line_with_close_matches() -> None:
    _zoo_complete()
    result = edgekit("info", "mobilenet_v9")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "did you mean" in lines[0] and "mobilenet_v2" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    result = edgekit("info", "nosuchnet")
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "unknown model 'nosuchnet'" in result.stderr and "Traceback" not in result.stderr


def test_groups_on_mobilenet_v2_is_a_clear_error() -> None:
    _zoo_complete()
    result = edgekit("info", "mobilenet_v2", "--groups", "3")
    assert result.returncode == 2
    assert result.stderr.startswith("error: mobilenet_v2 takes no option 'groups'"), result.stderr
    assert "Traceback" not in result.stderr
