"""Tiny real artifacts for the runtime, bench and report tests (built with the real converters).

A 5-layer MobileNet-style net (stem conv, depthwise, pointwise, pool, linear) with ReLU6 or
hard-swish, exported to every format the runtimes load, plus a manifest like `edgekit export`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = 10


def tiny_net(act: str = "relu6"):
    import torch
    from torch import nn

    def act_layer() -> nn.Module:
        return nn.Hardswish() if act == "hardswish" else nn.ReLU6()

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        act_layer(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        act_layer(),
        nn.Conv2d(16, 32, 1),
        act_layer(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )
    return net.eval()


def tiny_macs(res: int) -> int:
    """MACs of :func:`tiny_net` at ``res`` (conv, depthwise, pointwise, linear)."""
    s = (res + 1) // 2
    return s * s * (16 * 3 * 9 + 16 * 9 + 16 * 32) + 32 * CLASSES


def calib_batches(res: int, n: int = 8) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((1, 3, res, res), dtype=np.float32) for _ in range(n)]


def build(folder: Path, act: str = "relu6", res: int = 32, int8: bool = True) -> Path:
    """Write model.pt2, model.onnx, model_fp32.tflite (+ int8 .onnx/.tflite) and a manifest."""
    import torch

    from calibration.preprocess import PreprocessSpec
    from edgekit import formats
    from edgekit.manifest import FileEntry, Manifest, write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    net = tiny_net(act)
    x = torch.from_numpy(calib_batches(res, 1)[0])
    torch.export.save(torch.export.export(net, (x,)), folder / "model.pt2")
    torch.onnx.export(
        net,
        (x,),
        folder / "model.onnx",
        dynamo=True,
        external_data=False,
        input_names=["input"],
        output_names=["logits"],
    )
    _tflite(net, res, folder / "model_fp32.tflite", int8=False)
    io = {"name": "input", "shape": [1, 3, res, res], "dtype": "float32", "scale": None, "zero_point": None}
    nhwc = {**io, "shape": [1, res, res, 3]}
    names = ["torch", "onnx-fp32", "tflite-fp32"]
    if int8:
        _onnx_int8(folder / "model.onnx", folder / "model_int8.onnx", res)
        _tflite(net, res, folder / "model_int8.tflite", int8=True)
        names += ["onnx-int8", "tflite-int8"]
    files = {}
    for name in names:
        fmt = formats.get(name)
        files[name] = FileEntry.of(folder, fmt, {"input": nhwc if fmt.layout == "NHWC" else io}, {})
    manifest = Manifest(
        model={"name": f"tiny_{act}", "resolution": res, "num_classes": CLASSES, "macs": tiny_macs(res)},
        input={"shape": [1, 3, res, res]},
        preprocess=PreprocessSpec(resolution=res, resize=res).to_dict(),
        files=files,
    )
    write_manifest(folder, manifest)
    return folder


def _onnx_int8(src: Path, dst: Path, res: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter({"input": b} for b in calib_batches(res))

        def get_next(self):
            return next(self._it, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def _tflite(net, res: int, path: Path, int8: bool) -> None:
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer, quant_config
    from torchao.quantization.pt2e import quantize_pt2e

    sample = (torch.from_numpy(calib_batches(res, 1)[0]).permute(0, 2, 3, 1).contiguous(),)
    model = litert_torch.to_channel_last_io(net, args=[0]).eval()
    if not int8:
        litert_torch.convert(model, sample).export(str(path))
        return
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )
    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, sample).module(), quantizer)
    for batch in calib_batches(res):
        prepared(torch.from_numpy(batch).permute(0, 2, 3, 1).contiguous())
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(
        converted, sample, quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)
    ).export(str(path))


def int8_io_tflite(src: Path, dst: Path) -> Path:
    """``src`` (float I/O int8 model) with its interface rewritten to int8 input and output."""
    from ai_edge_litert import _pywrap_modify_model_interface as mmi

    int8 = 9  # tflite TensorType.INT8
    if mmi.modify_model_interface(str(src), str(dst), int8, int8) != 0:
        raise RuntimeError(f"modify_model_interface failed on {src}")
    return dst


def int8_io_onnx(dst: Path, res: int = 8) -> Path:
    """A one-conv QDQ model whose graph input/output are uint8 (scale and zero point in the graph)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s_in"),
        numpy_helper.from_array(np.array(128, np.uint8), "z_in"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s_out"),
        numpy_helper.from_array(np.array(120, np.uint8), "z_out"),
        numpy_helper.from_array(w, "w"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["q_in", "s_in", "z_in"], ["x"]),
        helper.make_node("Conv", ["x", "w"], ["y"]),
        helper.make_node("GlobalAveragePool", ["y"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("QuantizeLinear", ["f", "s_out", "z_out"], ["q_out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "int8io",
        [helper.make_tensor_value_info("q_in", TensorProto.UINT8, [1, 3, res, res])],
        [helper.make_tensor_value_info("q_out", TensorProto.UINT8, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, dst)
    return dst
