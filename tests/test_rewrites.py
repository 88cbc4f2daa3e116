"""exporters.rewrites: exact in float, and the int8 files it yields stay on the int8 fast paths.

The int8 checks run the real quantisers (litert-torch PT2E, ONNX Runtime QDQ) on a tiny
hard-swish net at 32 px and read the real runtimes' graphs: LiteRT's op list after XNNPACK
delegation, and the optimised graph ONNX Runtime executes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from _bench_models import tiny_net
from torch import nn

from exporters.rewrites import HardSigmoidDecomposed, HardSwishDecomposed, int8_friendly, int8_friendly_copy

RES = 32


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


def _mixed_net() -> nn.Module:
    """Hard-swish on feature maps and on a flat vector, hard-sigmoid in an SE gate, one ReLU6."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Hardswish(),
        _SqueezeExcite(8),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 16),
        nn.Hardswish(),
        nn.Linear(16, 4),
    ).eval()


def test_rewrite_is_exact_in_float() -> None:
    net = _mixed_net()
    rewritten = copy.deepcopy(net)
    report = int8_friendly(rewritten)
    assert report["rewritten"] == {"Hardsigmoid": 1, "Hardswish": 2}
    assert not any(isinstance(m, nn.Hardswish | nn.Hardsigmoid) for m in rewritten.modules())
    x = torch.randn(4, 3, 16, 16) * 4  # wide enough to cover both clamps of relu6(x + 3)
    with torch.no_grad():
        assert (rewritten(x) - net(x)).abs().max().item() < 1e-5


@pytest.mark.parametrize(
    "module, reference", [(HardSwishDecomposed, nn.Hardswish), (HardSigmoidDecomposed, nn.Hardsigmoid)]
)
def test_decomposed_matches_torch_on_maps_and_vectors(module: type, reference: type) -> None:
    for shape in [(2, 5, 7, 7), (3, 11)]:
        x = torch.linspace(-8, 8, int(np.prod(shape))).reshape(shape)
        assert (module()(x) - reference()(x)).abs().max().item() < 1e-5


def test_copy_leaves_the_float_model_alone() -> None:
    net = _mixed_net()
    copied, report = int8_friendly_copy(net)
    assert copied is not net and sum(report["rewritten"].values()) == 3
    assert sum(isinstance(m, nn.Hardswish) for m in net.modules()) == 2
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6())
    same, empty = int8_friendly_copy(plain)
    assert same is plain and empty["rewritten"] == {}


def _calib() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((8, 3, RES, RES), dtype=np.float32)


@pytest.fixture(scope="module")
def int8_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Int8 TFLite and ONNX files of the tiny hard-swish net, without and with the rewrite."""
    from calibration import onnx_int8, tflite_int8
    from exporters import onnx as onnx_exporter

    tmp = tmp_path_factory.mktemp("rewrites")
    calib = _calib()
    files = {}
    for label in ("before", "after"):
        net = tiny_net("hardswish")
        if label == "after":
            int8_friendly(net)
        tflite_int8.quantize_tflite(net, tmp / f"{label}.tflite", calib, method="minmax")
        onnx_exporter.export(net, torch.from_numpy(calib[:1]), tmp / f"{label}.onnx")
        onnx_int8.quantize_onnx(tmp / f"{label}.onnx", tmp / f"{label}_int8.onnx", calib, method="minmax")
        files[f"tflite-{label}"] = tmp / f"{label}.tflite"
        files[f"onnx-{label}"] = tmp / f"{label}_int8.onnx"
    return files


def _litert_ops(path: Path) -> list[dict]:
    from runtimes import get_runtime

    return get_runtime("litert").load(path, threads=1).ops()


def test_tflite_int8_hardswish_is_delegated(int8_files: dict[str, Path]) -> None:
    before, after = _litert_ops(int8_files["tflite-before"]), _litert_ops(int8_files["tflite-after"])
    off_before = [op["op_name"] for op in before if not op["delegated"]]
    off_after = [op["op_name"] for op in after if not op["delegated"]]
    assert "HARD_SWISH" in off_before  # why the rewrite exists (would pass silently once XNNPACK takes it)
    assert off_after == []
    names = [op["op_name"] for op in after]
    assert "HARD_SWISH" not in names and "TRANSPOSE" not in names  # NHWC kept through the add/mul


def _ort_float_ops(path: Path, tmp: Path) -> int:
    import onnx
    import onnxruntime as ort

    from runtimes.ort import slow_path_ops as ort_slow_path

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp / f"{path.stem}_opt.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    slow = ort_slow_path(onnx.load(options.optimized_model_filepath).graph)
    return sum(s["count"] for s in slow if s["op"] != "QuantizeLinear+DequantizeLinear")


def test_onnx_int8_has_fewer_float_ops(int8_files: dict[str, Path], tmp_path: Path) -> None:
    before = _ort_float_ops(int8_files["onnx-before"], tmp_path)
    after = _ort_float_ops(int8_files["onnx-after"], tmp_path)
    assert after < before
    assert before - after >= 3  # the three HardSigmoid of the hard-swishes went to QLinearAdd/QLinearMul


def test_int8_outputs_still_agree(int8_files: dict[str, Path]) -> None:
    """The rewrite changes how the int8 file computes, not what: same quantiser, close outputs."""
    from runtimes import get_runtime

    x = _calib()[:1]
    for fmt, runtime in (("tflite", "litert"), ("onnx", "onnxruntime")):
        native = x if runtime == "onnxruntime" else x.transpose(0, 2, 3, 1)
        before, after = (
            get_runtime(runtime).load(int8_files[f"{fmt}-{v}"], threads=1).run(native)
            for v in ("before", "after")
        )
        assert np.abs(after - before).max() < 0.2 * np.abs(before).max(), fmt
        assert after.argmax() == before.argmax(), fmt


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(channels, channels, 1),
            nn.ReLU6(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def test_tflite_int8_residual_adds_stay_int8(tmp_path: Path) -> None:
    """Chained residual adds: every ADD of the int8 file computes in int8, no DEQUANTIZE/QUANTIZE pair."""
    from ai_edge_litert.interpreter import Interpreter

    from calibration import tflite_int8

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.ReLU6(),
        _Residual(8),
        _Residual(8),
        _Residual(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    path = tmp_path / "residual.tflite"
    tflite_int8.quantize_tflite(net, path, _calib(), method="minmax")
    interp = Interpreter(model_path=str(path))
    dtype = {t["index"]: np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    adds = [op for op in ops if op["op_name"] == "ADD"]
    assert len(adds) == 3
    assert all(dtype[op["outputs"][0]] == np.int8 for op in adds)
    assert not [op["op_name"] for op in ops if op["op_name"] in ("DEQUANTIZE", "QUANTIZE")]


def test_tflite_int8_relu6_is_fused_with_its_range_from_zero(tmp_path: Path) -> None:
    """conv -> ReLU6 is one int8 CONV_2D whose output range is the clamp's ([0, hi]: zero point
    -128), not the conv's pre-activation range shared with a separate ReLU6."""
    from ai_edge_litert.interpreter import Interpreter

    from calibration import tflite_int8

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1),
        nn.ReLU6(),
        nn.Conv2d(8, 8, 3, 1, 1, groups=8),
        nn.ReLU6(),
        nn.Conv2d(8, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()
    path = tmp_path / "relu6.tflite"
    tflite_int8.quantize_tflite(net, path, _calib(), method="minmax")
    interp = Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    assert not [op for op in ops if op["op_name"] in ("RELU6", "RELU", "DEQUANTIZE", "QUANTIZE")]
    convs = [op for op in ops if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert len(convs) == 3
    zero_points = [tensors[op["outputs"][0]]["quantization"][1] for op in convs]
    assert zero_points[:2] == [-128, -128]  # the two clamped outputs start at 0.0
    assert zero_points[2] > -128  # the linear 1x1 conv output is signed


class _Select(nn.Module):
    """CondenseNet's pattern: a channel gather of a quantised tensor, then BN -> ReLU -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.register_buffer("index", torch.tensor([6, 1, 3, 0]))
        self.body = nn.Sequential(nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 8, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(self.body(torch.cat([x, torch.index_select(x, 1, self.index)], 1)[:, 8:]))


def test_tflite_int8_converts_a_channel_gather(tmp_path: Path) -> None:
    """Without annotate_gathers litert-torch's layout pass stopped at the gather's DEQUANTIZE."""
    from ai_edge_litert.interpreter import Interpreter

    from calibration import tflite_int8

    torch.manual_seed(0)
    path = tmp_path / "gather.tflite"
    tflite_int8.quantize_tflite(_Select().eval(), path, _calib(), method="minmax")
    interp = Interpreter(model_path=str(path))
    assert any(op["op_name"].startswith("GATHER") for op in interp._get_ops_details())
    assert interp.get_output_details()[0]["dtype"] == np.int8


def test_bench_names_the_ops_off_the_fast_path(int8_files: dict[str, Path]) -> None:
    """bench.int8_vs_fp32 explains a slower int8 file with the ops LiteRT left outside XNNPACK."""
    from edgekit import formats
    from edgekit.bench import BenchRow, Job, int8_vs_fp32, latency_stats

    def result(fmt: str, precision: str, p50: float) -> BenchRow:
        stats = latency_stats([p50] * 3)
        return BenchRow(
            fmt,
            "litert",
            "local",
            1,
            "m.tflite",
            precision,
            **stats,
            warmup=0,
            first_ms=p50,
            throughput=None,
            size_bytes=1,
            macs=None,
            runtime_version="2.3.0",
            provider="XNNPACK",
            input_dtype="int8",
            emulated=False,
            cpu="x86",
            measured="litert, 1 thread",
        )

    jobs = [Job(formats.get("tflite-int8"), int8_files["tflite-before"], "litert")]
    slower = int8_vs_fp32([result("tflite-fp32", "fp32", 1.0), result("tflite-int8", "int8", 2.0)], jobs)
    assert len(slower) == 1 and slower[0]["ratio"] == 2.0 and not slower[0]["int8_faster"]
    assert {"op": "HARD_SWISH", "count": 3} in slower[0]["off_fast_path"]
    assert "HARD_SWISH x3" in slower[0]["why"]
    faster = int8_vs_fp32([result("tflite-fp32", "fp32", 2.0), result("tflite-int8", "int8", 1.0)], jobs)
    assert faster[0]["int8_faster"] and "why" not in faster[0]
    # every op delegated and still slower: the CPU's int8 instructions are named (AVX2 without VNNI)
    delegated = [Job(formats.get("tflite-int8"), int8_files["tflite-after"], "litert")]
    avx2 = result("tflite-int8", "int8", 2.0)
    avx2.int8_path = "x86 AVX2 without VNNI (int16 pair sums)"
    why = int8_vs_fp32([result("tflite-fp32", "fp32", 1.0), avx2], delegated)[0]["why"]
    assert why.startswith("every op is on the int8 path") and "AVX2 without VNNI" in why


def test_onnx_mean_pools_become_global_average_pools(tmp_path: Path) -> None:
    """``mean((2, 3), keepdim=True)`` and ``AdaptiveAvgPool2d(1)`` export as ReduceMean, which ONNX
    Runtime has no int8 kernel for; rewritten they run as QLinearGlobalAveragePool."""
    import onnx
    import onnxruntime as ort

    from calibration import onnx_int8
    from exporters import onnx as onnx_exporter

    net, calib = _mixed_net(), _calib()
    info = onnx_exporter.export(net, torch.from_numpy(calib[:1]), tmp_path / "m.onnx")
    # TorchScript writes AdaptiveAvgPool2d(1) as GlobalAveragePool itself, the mean as ReduceMean;
    # the dynamo exporter writes both as ReduceMean.
    expected = {"torchscript": 1, "dynamo": 2}[info["exporter"]]
    assert info["rewrites"] == {"ReduceMean(H, W) -> GlobalAveragePool": expected}
    assert info["ops"]["GlobalAveragePool"] == 2 and "ReduceMean" not in info["ops"]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"input": x[None]})[0] for x in calib])
    with torch.no_grad():
        ref = net(torch.from_numpy(calib)).numpy()
    # Same function: only the summation order of 32x32 float32 values may differ.
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    onnx_int8.quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", calib, method="minmax")
    assert onnx_int8.fused_ops(tmp_path / "q.onnx").get("QLinearGlobalAveragePool") == 2
    assert not any(n.op_type == "ReduceMean" for n in onnx.load(tmp_path / "q.onnx").graph.node)


class _Stem(nn.Module):
    """ShuffleNet's stem: conv -> ReLU -> 3x3/2 max pool with padding 1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.pool, self.head = nn.MaxPool2d(3, 2, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.relu(self.conv(x)))).mean((2, 3))


def test_max_pool_after_relu_is_zero_padded_exactly() -> None:
    from exporters.rewrites import zero_padded_max_pools

    net, x = _Stem().eval(), torch.from_numpy(_calib())
    graph = torch.export.export(net, (x[:1],)).module()
    assert zero_padded_max_pools(graph) == 1
    with torch.no_grad():
        assert torch.equal(graph(x[:1]), net(x[:1]))  # max over >= 0 values: 0 pads change nothing
    unpadded = torch.export.export(nn.Sequential(nn.Conv2d(3, 8, 3), nn.MaxPool2d(3, 2, padding=1)), (x[:1],))
    assert zero_padded_max_pools(unpadded.module()) == 0  # no ReLU before it: -inf padding matters


def test_tflite_int8_stem_pool_is_delegated(tmp_path: Path) -> None:
    """The -inf padded pool was PADV2, which XNNPACK does not take: one extra partition."""
    from calibration import tflite_int8

    info = tflite_int8.quantize_tflite(_Stem().eval(), tmp_path / "stem.tflite", _calib(), method="minmax")
    assert info["rewrites"] == {"max_pool2d(-inf pad) -> PAD(0) + max_pool2d": 1}
    ops = _litert_ops(tmp_path / "stem.tflite")
    assert "PADV2" not in [op["op_name"] for op in ops]
    assert [op["op_name"] for op in ops if not op["delegated"]] == []


class _ShuffleUnit(nn.Module):
    """ShuffleNetV1's stride-2 unit: ReLU input, a 3x3/2 average-pool shortcut beside a conv
    branch, concatenated, then ReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.stem(x))
        return self.head(self.relu(torch.cat((self.shortcut(x), self.branch(x)), 1))).mean((2, 3))


def test_shuffle_unit_rewrites_are_exact_in_float() -> None:
    from exporters.rewrites import avg_pools_as_depthwise, relus_through_concats

    net, x = _ShuffleUnit().eval(), torch.from_numpy(_calib())
    graph = torch.export.export(net, (x[:1],)).module()
    assert relus_through_concats(graph) == 1
    assert avg_pools_as_depthwise(graph) == 1
    ops = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert not any("avg_pool2d" in op for op in ops)
    assert (
        sum("relu" in op for op in ops) == 2
    )  # the stem's, and the conv branch's; the pooled ReLU input needs none
    with torch.no_grad():
        ref, got = net(x[:1]), graph(x[:1])
    # The same sums of 9 values divided by 9, in another order: float32 rounding only.
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6 * float(ref.abs().max()))


def test_tflite_int8_shuffle_unit_is_delegated_whole(tmp_path: Path) -> None:
    """Before: AVERAGE_POOL_2D (float-only in XNNPACK) and RELU after the concat left the delegate."""
    from calibration import tflite_int8
    from edgekit.verify import cosine
    from runtimes import run_file

    net, calib = _ShuffleUnit().eval(), _calib()
    info = tflite_int8.quantize_tflite(net, tmp_path / "unit.tflite", calib, method="minmax")
    assert info["rewrites"] == {"relu(cat) -> cat(relu)": 1, "avg_pool2d -> depthwise conv2d (1/k^2)": 1}
    ops = _litert_ops(tmp_path / "unit.tflite")
    assert [op["op_name"] for op in ops if not op["delegated"]] == []
    assert not {"AVERAGE_POOL_2D", "RELU"} & {op["op_name"] for op in ops}
    with torch.no_grad():
        ref = net(torch.from_numpy(calib)).numpy()
    out = run_file(tmp_path / "unit.tflite", calib, "NHWC", "litert")
    assert cosine(ref, out).min() > 0.99  # 8-bit activations on 8 of the calibration inputs themselves


class _Condensed(nn.Module):
    """A stem and two CondenseNet layers (gather -> BN -> ReLU -> grouped 1x1 -> shuffle -> ...):
    growth 4 folds for 3 x 4 = 12 multiply-adds per gathered value, growth 32 would cost 96.

    Each gathered BN takes its constants from the source channel, as CondenseNet's conversion
    writes them; ``skew`` gives one repeated index of the first layer other constants."""

    def __init__(self, skew: bool = False) -> None:
        from edgekit.zoo.condensenet import DenseLayer

        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layers = nn.Sequential(DenseLayer(16, 4, 4, seed=1), DenseLayer(20, 32, 4, seed=2))
        for layer in self.layers:
            norm, index = layer.conv1.norm, layer.conv1.index
            source = torch.rand(4, int(index.max()) + 1) + torch.tensor([[0.5], [-0.5], [-0.5], [0.5]])
            for tensor, values in zip(
                (norm.weight, norm.bias, norm.running_mean, norm.running_var), source, strict=True
            ):
                tensor.data.copy_(values[index])
        if skew:
            first = self.layers[0].conv1
            repeated = next(j for j, c in enumerate(first.index.tolist()) if c in first.index[:j])
            first.norm.bias.data[repeated] += 0.25
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x)).mean((2, 3))


def _gathers(graph: torch.fx.GraphModule) -> int:
    return sum(n.target is torch.ops.aten.index_select.default for n in graph.graph.nodes)


def test_gather_folds_into_the_next_conv_exactly() -> None:
    from exporters.rewrites import gathers_into_convs

    x = torch.from_numpy(_calib())
    for limit, folded in ((48, 1), (float("inf"), 2)):  # the default keeps the growth-32 layer
        net = _Condensed()
        graph = torch.export.export(net, (x[:1],)).module()
        assert gathers_into_convs(graph, max_macs_per_value=limit) == folded
        assert _gathers(graph) == 2 - folded
        with torch.no_grad():
            ref, got = net(x), torch.cat([graph(x[i : i + 1]) for i in range(len(x))])
        # The BN as x * s + t instead of (x - mean) / std * w + b, the 1x1 sums in another order
        # and over zero columns: float32 rounding only (the output is ~1, fp32 eps 1.2e-7).
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))


def test_gather_probe_sees_index_select_and_indexing() -> None:
    """The eager probe that spares the TFLite export a second trace: a gather in any spelling."""
    from exporters.rewrites import calls_a_gather

    x = torch.from_numpy(_calib())[:1]
    index = torch.tensor([2, 0, 0])

    class Indexed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, index]

    assert calls_a_gather(_Condensed(), x) and calls_a_gather(Indexed(), x)
    assert not calls_a_gather(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1)), x)


def test_gather_with_differing_bn_constants_is_kept() -> None:
    """Two copies of a channel with other BN constants: the BN cannot move before the gather."""
    from exporters.rewrites import gathers_into_convs

    x = torch.from_numpy(_calib())
    graph = torch.export.export(_Condensed(skew=True), (x[:1],)).module()
    assert gathers_into_convs(graph, max_macs_per_value=float("inf")) == 1  # the second layer only


def test_tflite_files_of_a_condensed_conv_have_no_gather(tmp_path: Path) -> None:
    """fp32 and int8 TFLite: GATHER_ND (not in XNNPACK) gone, every op delegated, same outputs."""
    from calibration import tflite_int8
    from edgekit.verify import cosine
    from edgekit.zoo.condensenet import CondenseConv
    from exporters import tflite
    from exporters.rewrites import GATHER_FOLD
    from runtimes import run_file

    # No BN left after the fold: a BN outside a conv costs PT2E's convert ~50 s of pattern exports.
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        CondenseConv(16, 16, 4, 4, seed=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    calib = _calib()
    fp32 = tflite.export(net, torch.from_numpy(calib[:1]), tmp_path / "fp32.tflite")
    int8 = tflite_int8.quantize_tflite(net, tmp_path / "int8.tflite", calib, method="minmax")
    assert fp32["rewrites"] == {GATHER_FOLD: 1} and int8["rewrites"] == {GATHER_FOLD: 1}
    with torch.no_grad():
        ref = net(torch.from_numpy(calib)).numpy()
    for name in ("fp32", "int8"):
        ops = _litert_ops(tmp_path / f"{name}.tflite")
        assert "GATHER_ND" not in [op["op_name"] for op in ops]
        assert [op["op_name"] for op in ops if not op["delegated"]] == []
    out = run_file(tmp_path / "fp32.tflite", calib, "NHWC", "litert")
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())  # float rounding
    out = run_file(tmp_path / "int8.tflite", calib, "NHWC", "litert")
    assert cosine(ref, out).min() > 0.99  # 8-bit activations on the calibration inputs themselves


def test_avg_pool_before_batch_norm_quantises() -> None:
    """PT2E folds a BN into the depthwise conv that replaced the pool, reassigning its weight as a
    parameter: the rewrite's weight was a buffer of that name, and prepare failed (KeyError)."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    from calibration.annotations import fast_path_quantizer
    from calibration.tflite_int8 import quantization_config
    from exporters.rewrites import avg_pools_as_depthwise

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1))
    x = torch.from_numpy(_calib()[:1])
    graph = torch.export.export(net.eval(), (x,)).module()
    assert avg_pools_as_depthwise(graph) == 1
    quantizer = fast_path_quantizer(quantization_config(True, False, "minmax"))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        prepared(x)


class _PreActivation(nn.Module):
    """A BN on a concatenation, and one on a conv whose output the concatenation also reads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.side = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in (8, 16, 8))
        self.conv = nn.Conv2d(8, 8, 1)
        for norm in self.norms:
            for tensor in (norm.weight, norm.bias, norm.running_mean, norm.running_var):
                tensor.data.uniform_(0.5, 1.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([x, self.norms[0](x)], 1)  # the stem conv is read twice: not PT2E's to fold
        return self.norms[1](y).mean((2, 3)) + self.norms[2](self.conv(x)).mean((2, 3)).repeat(1, 2)


def test_batch_norms_outside_a_conv_become_affine_exactly() -> None:
    from exporters.rewrites import batch_norms_as_affine

    net, x = _PreActivation(), torch.from_numpy(_calib()[:1])
    graph = torch.export.export(net, (x,)).module()
    assert batch_norms_as_affine(graph) == 2  # the conv -> BN pair read once stays for PT2E
    norms = [n for n in graph.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    assert len(norms) == 1 and norms[0].args[0].target is torch.ops.aten.conv2d.default
    with torch.no_grad():
        ref, got = net(x), graph(x)
    # x * s + t instead of (x - mean) / sqrt(var + eps) * w + b: float32 rounding only.
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6 * float(ref.abs().max()))


class _Shuffled(nn.Module):
    """Two convs with ShuffleNet's channel shuffle (3 groups) between them, a head after."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(12, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from edgekit.zoo.common import channel_shuffle

        return self.head(channel_shuffle(torch.relu(self.conv(x)), 3)).mean((2, 3))


def _ort_pairs(first: Path, second: Path, calib: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Both ONNX files' outputs in ONNX Runtime, image by image."""
    import onnxruntime as ort

    runs = [ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]) for f in (first, second)]
    return [tuple(s.run(None, {"input": x[None]})[0] for s in runs) for x in calib]


def test_onnx_channel_shuffle_becomes_one_gather_exactly(tmp_path: Path) -> None:
    """The int8 file moves whole planes of int8 codes (Gather) instead of ORT's element-by-element
    5-D Transpose; a Gather only copies values, so the float graph computes bit for bit the same."""
    import onnx

    from calibration import onnx_int8
    from exporters import onnx as onnx_exporter

    calib = _calib()
    onnx_exporter.export(_Shuffled().eval(), torch.from_numpy(calib[:1]), tmp_path / "m.onnx")
    proto = onnx.load(tmp_path / "m.onnx")
    assert onnx_exporter.channel_shuffles_as_gathers(proto) == 1
    assert not any(n.op_type in ("Transpose", "Reshape") for n in proto.graph.node)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, tmp_path / "g.onnx")
    for before, after in _ort_pairs(tmp_path / "m.onnx", tmp_path / "g.onnx", calib):
        np.testing.assert_array_equal(after, before)
    info = onnx_int8.quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", calib, method="minmax")
    assert info["rewrites"]["Reshape + Transpose + Reshape (channel shuffle) -> Gather"] == 1
    assert "Transpose" not in onnx_int8.fused_ops(tmp_path / "q.onnx")


def _qdq_scaled(c: float, s_a: float, z_a: int, s_b: float, z_b: int) -> object:
    """x -> Q(a) -> DQ -> Mul(DQ(c)) -> Q(b) -> DQ: how quantize_static writes ``x * c``."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.array(v, dtype), name)
        for name, v, dtype in [
            ("s_a", s_a, np.float32), ("z_a", z_a, np.uint8),
            ("s_b", s_b, np.float32), ("z_b", z_b, np.uint8),
            ("c_q", 255, np.uint8), ("c_s", c / 255, np.float32), ("c_z", 0, np.uint8),
        ]
    ]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_a", "z_a"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s_a", "z_a"], ["xd"]),
        helper.make_node("DequantizeLinear", ["c_q", "c_s", "c_z"], ["c"]),
        helper.make_node("Mul", ["xd", "c"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s_b", "z_b"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s_b", "z_b"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scaled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 64, 64])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_onnx_constant_mul_becomes_the_quantize_scale(tmp_path: Path) -> None:
    """Hard-swish's 1/6 in the int8 file: one rounding onto b's grid instead of two, no Mul left."""
    import onnx
    import onnxruntime as ort

    from calibration import onnx_int8

    c, s_a, z_a, s_b, z_b = 1 / 6, 0.05, 128, 0.05 / 6 * 1.1, 120
    onnx.save(_qdq_scaled(c, s_a, z_a, s_b, z_b), tmp_path / "before.onnx")
    onnx.save(_qdq_scaled(c, s_a, z_a, s_b, z_b), tmp_path / "after.onnx")
    assert onnx_int8.constant_muls_as_scales(tmp_path / "after.onnx") == 1
    folded = onnx.load(tmp_path / "after.onnx")
    onnx.checker.check_model(folded, full_check=True)
    assert [n.op_type for n in folded.graph.node] == ["QuantizeLinear", "DequantizeLinear"]

    x = np.random.default_rng(0).uniform(s_a * -z_a, s_a * (255 - z_a), (1, 1, 64, 64)).astype(np.float32)
    before, after = (
        ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for f in ("before.onnx", "after.onnx")
    )
    exact = np.clip(c * x.astype(np.float64), -z_b * s_b, (255 - z_b) * s_b)
    eps = 1e-6  # float32 rounding of the scale and of x / scale
    assert np.abs(after - exact).max() <= s_b / 2 + eps  # the nearest code
    assert np.all(np.abs(after - exact) <= np.abs(before - exact) + eps)  # never further from float
    assert np.abs(after - before).max() <= s_b + eps  # within one code inside a's range
    assert (after != before).any()  # the two roundings did differ somewhere: the test can fail


def test_onnx_int8_hardswish_has_one_qlinearmul(int8_files: dict[str, Path]) -> None:
    """x * relu6(x + 3) * (1/6): the 1/6 folds into a scale, one QLinearMul a hard-swish is left."""
    from calibration import onnx_int8

    assert onnx_int8.fused_ops(int8_files["onnx-after"]).get("QLinearMul") == 3  # tiny_net's three


def test_onnx_int8_stem_conv_stays_float(int8_files: dict[str, Path], tmp_path: Path) -> None:
    """The conv reading the image runs ORT's float stem kernel; the rest is integer, and the bench
    does not count the stem as an op off the int8 fast path."""
    from calibration import onnx_int8

    fused = onnx_int8.fused_ops(int8_files["onnx-after"])
    assert fused.get("Conv") == 1 and fused.get("QLinearConv") == 2  # tiny_net: stem, depthwise, pointwise
    assert _ort_float_ops(int8_files["onnx-after"], tmp_path) == 0


class _Pooled(nn.Module):
    """A conv, ShuffleNetV1's shortcut pool (3x3, stride 2, padded, padding counted), a head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(12, 4, 1)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x)))).mean((2, 3))


def test_onnx_avg_pool_becomes_a_depthwise_conv(tmp_path: Path) -> None:
    """Same sums in another order (float32: a few ulps); the int8 file has no QLinearAveragePool."""
    import onnx

    from calibration import onnx_int8
    from exporters import onnx as onnx_exporter

    calib = _calib()
    onnx_exporter.export(_Pooled().eval(), torch.from_numpy(calib[:1]), tmp_path / "m.onnx")
    proto = onnx.shape_inference.infer_shapes(onnx.load(tmp_path / "m.onnx"))
    assert onnx_exporter.avg_pools_as_depthwise(proto) == 1
    assert "AveragePool" not in [n.op_type for n in proto.graph.node]
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, tmp_path / "c.onnx")
    for before, after in _ort_pairs(tmp_path / "m.onnx", tmp_path / "c.onnx", calib):
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-5 * np.abs(before).max())
    info = onnx_int8.quantize_onnx(tmp_path / "m.onnx", tmp_path / "q.onnx", calib, method="minmax")
    assert info["rewrites"]["AveragePool -> depthwise Conv (1/k^2)"] == 1
    fused = onnx_int8.fused_ops(tmp_path / "q.onnx")
    assert "QLinearAveragePool" not in fused and fused["QLinearConv"] == 2  # the pool and the head


@pytest.mark.parametrize("pool", [False, True])
def test_onnx_stem_stays_float_unless_a_max_pool_follows(tmp_path: Path, pool: bool) -> None:
    """The conv reading the image is left float, except before a max pool (ORT would then run the
    pool on uint8 NCHW, its slow kernel)."""
    from calibration import onnx_int8
    from exporters import onnx as onnx_exporter

    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()]
    layers += [nn.MaxPool2d(3, stride=2, padding=1)] if pool else []
    net = nn.Sequential(*layers, nn.Conv2d(8, 4, 1)).eval()
    onnx_exporter.export(net, torch.from_numpy(_calib()[:1]), tmp_path / "m.onnx")
    stems = onnx_int8.stem_convs(tmp_path / "m.onnx")
    assert len(stems) == (0 if pool else 1)


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it symbolically."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if float(y.sum()) > 0 else -y


def test_batch_norms_fold_into_a_copy_for_the_converters() -> None:
    """Every BN after a conv folded (a copy; the reference keeps its BNs); a BN with no conv of its
    own stays; an untraceable module folds its nn.Sequential neighbours only; a training-mode
    module comes back as it is."""
    from exporters.rewrites import batch_norms_folded

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8, affine=False),
    )  # fmt: skip
    for bn in (net[1], net[4], net[6]):  # statistics far from the identity, so a missed fold shows
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.1, 4)
        if bn.affine:
            bn.weight.data.uniform_(0.5, 2)
    net.eval()
    folded = batch_norms_folded(net)
    norms = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 1 and sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3
    x = torch.from_numpy(_calib())
    with torch.no_grad():
        ref, got = net(x), folded(x)
    # w * (gamma / sigma) and the shifted bias rounded once each: float32 rounding only.
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    branchy = _Branchy().eval()
    assert batch_norms_folded(branchy) is branchy  # nothing fx or an nn.Sequential shows to fold
    branchy.conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))  # neighbours: folded
    folded = batch_norms_folded(branchy.eval())
    assert isinstance(folded.conv[1], nn.Identity) and isinstance(branchy.conv[1], nn.BatchNorm2d)
    assert batch_norms_folded(net.train()) is net
