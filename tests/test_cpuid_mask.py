"""scripts/cpuid_mask.c: a process that sees this x86 CPU without AVX-512, VNNI and AMX (docs/int8.md,
"int8 on AVX2-only CPUs"). numpy reads the CPU with CPUID like XNNPACK and MLAS do, so its feature
table is what the shim hands every library in the process."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SHIM = Path(__file__).resolve().parents[1] / "scripts" / "cpuid_mask.c"
FEATURES = (
    "from numpy._core._multiarray_umath import __cpu_features__ as f; import json; print(json.dumps(f))"
)


def _features(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", FEATURES], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(
    platform.machine() != "x86_64" or shutil.which("gcc") is None, reason="needs gcc on x86-64"
)
def test_the_shim_hides_avx512_vnni_and_keeps_avx2(tmp_path: Path) -> None:
    lib = tmp_path / "cpuid_mask.so"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", str(lib), str(SHIM)], check=True
    )
    native = json.loads(_features(dict(os.environ)).stdout)
    masked_run = _features({**os.environ, "LD_PRELOAD": str(lib)})
    if masked_run.returncode == 3:
        pytest.skip(f"no CPUID faulting here: {masked_run.stderr.strip()}")
    masked = json.loads(masked_run.stdout)
    assert not [name for name, on in masked.items() if on and name.startswith(("AVX512", "X86_V4"))]
    for name in ("SSE42", "AVX", "F16C", "FMA3", "AVX2"):
        assert masked[name] == native[name], name
