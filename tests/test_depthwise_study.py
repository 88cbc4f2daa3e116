"""The depthwise analysis: per-layer statistics on a constructed case, the pretrained MobileNetV2
figures (skipped without its weights) and the `edgekit analyze` command end to end."""

from __future__ import annotations

import json
import time

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgekit.errors import WeightsError
from edgekit.studies import depthwise

SPREAD = 10**2.5  # the depthwise layer's max/min channel range, by construction


def _constructed() -> nn.Module:
    """conv 3x3 -> depthwise 3x3 with channel ranges spread 316x -> pointwise 1x1 -> linear."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    scales = torch.logspace(0, -2.5, 16)
    with torch.no_grad():
        w = torch.empty(16, 1, 3, 3).uniform_(-1, 1, generator=gen)
        w[:, 0, 0, 0] = 1.0  # the channel's max |w| is exactly its scale
        model[2].weight.copy_(w * scales.reshape(-1, 1, 1, 1))
    return model


def test_constructed_case_depthwise_stands_out() -> None:
    model = _constructed()
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)).numpy()
    layers = depthwise.analyze_layers(model, x, bits=8)
    assert [layer["kind"] for layer in layers] == ["conv", "depthwise", "pointwise", "linear"]
    dw = layers[1]
    assert dw["range_spread"] == pytest.approx(SPREAD, rel=1e-3)
    assert dw["channels_below_1pct"] == 3  # 10^-2.17, 10^-2.33, 10^-2.5
    by_kind = depthwise.summarize_by_kind(layers)
    assert by_kind["depthwise"]["per_channel_gain"] > by_kind["pointwise"]["per_channel_gain"] + 6.0
    assert dw["weight_sqnr_per_tensor"] < min(r["weight_sqnr_per_tensor"] for r in layers if r is not dw)
    assert dw["flag"] and "316x" in dw["flag"]
    assert all(r["output_sqnr_per_channel"] > 20.0 for r in layers)


def test_pretrained_mobilenet_v2_depthwise_gain() -> None:
    from exporters.rewrites import fold_batchnorm

    try:
        model, _ = depthwise.load_model("mobilenet_v2", pretrained=True)
    except WeightsError as exc:
        pytest.skip(f"pretrained weights unavailable: {exc}")
    layers = depthwise.analyze_layers(fold_batchnorm(model), None, bits=8)
    by_kind = depthwise.summarize_by_kind(layers)
    assert by_kind["depthwise"]["layers"] == 17 and by_kind["pointwise"]["layers"] == 34
    dw, pw = by_kind["depthwise"], by_kind["pointwise"]
    assert dw["weight_sqnr_per_tensor"] < pw["weight_sqnr_per_tensor"]
    assert dw["per_channel_gain"] > pw["per_channel_gain"] + 3.0
    assert dw["range_spread_max"] > 50.0


def test_analyze_cli_end_to_end_small() -> None:
    from edgekit.cli import cli

    start = time.monotonic()
    result = CliRunner().invoke(
        cli,
        [
            "analyze",
            "mobilenet_v2",
            "--resolution",
            "32",
            "--limit",
            "8",
            "--runtime",
            "onnxruntime",
            "--configs",
            "float,int8-per-tensor-cle",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out) >= {"layers", "by_kind", "end_to_end"}
    assert len(out["layers"]) == 53  # 52 convolutions + the classifier
    assert out["by_kind"]["depthwise"]["layers"] == 17
    assert {
        "name",
        "kind",
        "range_spread",
        "weight_sqnr_per_tensor",
        "weight_sqnr_per_channel",
        "output_sqnr_per_tensor",
        "output_sqnr_per_channel",
        "flag",
    } <= set(out["layers"][0])
    rows = {(r["config"], r["runtime"]): r for r in out["end_to_end"]}
    assert set(rows) == {("float", "torch"), ("float", "onnxruntime"), ("int8-per-tensor-cle", "onnxruntime")}
    for row in rows.values():
        assert set(row) >= {"config", "runtime", "top1", "top5", "agreement_top1"}
        assert row["top1"] is None  # built-in photographs carry no labels
    assert rows[("float", "onnxruntime")]["agreement_top1"] >= 87.5  # at most 1 of 8 near-ties may flip
    assert time.monotonic() - start < 600  # ~1 min on an idle 2-core machine; generous for shared CPUs


def test_analyze_rejects_unknown_config() -> None:
    from edgekit.cli import cli

    result = CliRunner().invoke(
        cli, ["analyze", "mobilenet_v2", "--resolution", "32", "--limit", "2", "--configs", "int9"]
    )
    assert result.exit_code != 0


def test_gptq_rows_beat_nearest_rounding_at_6_bits() -> None:
    """Per-tensor W6A8 after equalisation: GPTQ's weights keep the logits closer to float than
    nearest rounding does, on held-out crops (the W6 weights as the row deploys them)."""
    from calibration.fakequant import sqnr_db
    from calibration.sources import builtin_tensors

    try:
        model, spec = depthwise.load_model("mobilenet_v2", pretrained=True)
    except WeightsError as exc:
        pytest.skip(f"pretrained weights unavailable: {exc}")
    spec = depthwise.resize_spec(spec, 96)
    from calibration.sources import CalibrationSet

    calib = CalibrationSet(builtin_tensors(spec, 32, seed=0), "builtin", {})
    held_out = torch.from_numpy(builtin_tensors(spec, 32, seed=1))

    def deployed(config: str) -> torch.nn.Module:
        return depthwise.prepare_models(model, spec, config, calib, ["litert"])["tflite-int8"][0]

    with torch.no_grad():
        ref = model(held_out)
        sqnr = {
            c: sqnr_db(ref, deployed(c)(held_out))
            for c in ("w6a8-per-tensor-cle", "w6a8-per-tensor-cle-gptq")
        }
    # Measured 12.4 -> 16.5 dB (MobileNetV2 at 96 px, 32 calibration crops, 32 held-out crops).
    assert sqnr["w6a8-per-tensor-cle-gptq"] > sqnr["w6a8-per-tensor-cle"] + 2.0, sqnr
