"""Shared fixtures: the ../shared data (skipped cleanly when absent) and one small artifact folder."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository; tests that need it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (shared data for the team)")
    return SHARED


@pytest.fixture(scope="session")
def imagenet_sample(shared_dir: Path) -> Path:
    """The 250-image ImageNet sample (ImageFolder layout, ``classes.txt`` beside the synsets)."""
    path = shared_dir / "data" / "imagenet-sample"
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="session")
def small_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, verified export of MobileNetV2-0.35 at 64 px: model.pt2, ONNX, TFLite fp32/fp16.

    Built once per session (~40 s on 2 cores) with the real converters; treat it as read-only.
    """
    from edgekit import pipeline

    out = tmp_path_factory.mktemp("artifacts") / "mobilenet_v2"
    pipeline.export("mobilenet_v2", out_dir=out, width=0.35, resolution=64, argv=["pytest"])
    return out
