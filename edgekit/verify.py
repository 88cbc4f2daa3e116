"""Does an exported file compute what PyTorch computes? Metrics, gates, and the engines to ask.

Every file is run in its real engine (ONNX Runtime, the LiteRT interpreter with its default
XNNPACK delegate, torch.export for ``model.pt2``) on two input sets: seeded standard-normal
tensors (they reach every channel) and real photographs preprocessed with the model's spec (they
give realistic logits). Each is compared with the PyTorch module's logits.

Errors are judged relative to the logit scale: a randomly initialised network (BN at identity,
torchvision's init) has logits around 1e-8, a trained one around 10, and an absolute tolerance
cannot serve both. ``max_rel_err = max|out - ref| / max|ref|``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibration.preprocess import PreprocessSpec, preprocess_pil, to_layout
from edgekit.errors import VerificationError

# The documented gates, per precision (docs/export.md lists the measurements behind them).
# fp32: only the summation order differs between engines; measured max_rel_err <= 2.1e-6 over
#       the zoo at 96 px (random init), so 1e-4 leaves ~50x headroom yet catches any real bug.
# fp16: judged against PyTorch with the same fp16-rounded weights (fp16_reference), so the gate
#       checks the conversion, not the precision. What fp16 costs against float32 depends on the
#       network (random-init ResNeXt-101: cosine 0.9974) and is recorded, not gated.
GATES: dict[str, dict[str, float]] = {
    "fp32": {"max_rel_err": 1e-4, "min_cosine": 0.99999},
    "fp16": {"max_rel_err": 2e-3, "min_cosine": 0.99999},
}
N_RANDOM = 4
N_IMAGES = 4
ENGINES = {"onnx": "ONNX Runtime CPU", "tflite": "LiteRT + XNNPACK", "torch": "torch.export"}
METHOD = (
    f"each file in its own engine (ONNX Runtime CPU, LiteRT + XNNPACK, torch.export), 1 thread, on "
    f"{N_RANDOM} seeded N(0,1) tensors + {N_IMAGES} built-in photos, vs PyTorch float32 logits "
    "(fp16 files: vs PyTorch with the same fp16-rounded weights)"
)


def sample_images(spec: PreprocessSpec, n: int) -> np.ndarray:
    """The first ``n`` built-in photographs, resized and centre-cropped like validation images."""
    from calibration.sources import builtin_photos

    photos = builtin_photos()[:n]
    return np.stack([preprocess_pil(img, spec) for _, img in photos]).astype(np.float32)


def reference_inputs(spec: PreprocessSpec, seed: int = 0) -> dict[str, np.ndarray]:
    """NCHW float32 batches: ``random`` (seeded N(0, 1)) and ``images`` (built-in photographs)."""
    from calibration.sources import random_tensors

    return {"random": random_tensors(spec, N_RANDOM, seed), "images": sample_images(spec, N_IMAGES)}


def torch_logits(model: Any, batch: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return model(torch.from_numpy(batch)).float().numpy()


def fp16_reference(model: Any) -> Any:
    """A copy of ``model`` computing what an fp16-weight file should: batch norm folded into the
    convolutions (as the converter does), then every conv/linear weight rounded to float16."""
    import copy

    import torch

    from calibration.equalize import fold_batchnorm
    from calibration.fakequant import quant_layers

    emulated = fold_batchnorm(copy.deepcopy(model).eval())
    with torch.no_grad():
        for _, layer in quant_layers(emulated):
            layer.weight.copy_(layer.weight.half().float())
    return emulated


def compare(reference: np.ndarray, output: np.ndarray) -> dict[str, float]:
    """max/mean abs error, error relative to the logit scale, worst-sample cosine, top-1 agreement."""
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    out = output.astype(np.float64).reshape(len(output), -1)
    diff = np.abs(out - ref)
    scale = max(float(np.abs(ref).max()), np.finfo(np.float32).tiny)
    return {
        "max_abs_err": float(diff.max()),
        "mean_abs_err": float(diff.mean()),
        "max_rel_err": float(diff.max() / scale),
        "logit_scale": scale,
        "cosine_min": float(cosine(ref, out).min()),
        "top1_agreement": top1_agreement(ref, out),
    }


# The metrics shared by verification (gates) and `edgekit eval` (accuracy tables).


def cosine(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per-sample cosine similarity of two logit batches."""
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    return np.sum(ref * out, axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)


def top1_agreement(ref: np.ndarray, out: np.ndarray) -> float:
    """Fraction of samples whose argmax is the reference's."""
    return float(np.mean(ref.argmax(1) == out.argmax(1)))


def top5_overlap(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean fraction of the reference's top-5 classes that the output's top-5 also has."""
    a = np.argsort(-ref, axis=1)[:, :5]
    b = np.argsort(-out, axis=1)[:, :5]
    return float(np.mean([len(set(x) & set(y)) / 5 for x, y in zip(a, b, strict=True)]))


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio of the logits, in dB (inf when identical)."""
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    noise = float(np.sum((ref - out) ** 2))
    return float("inf") if noise == 0 else 10.0 * float(np.log10(np.sum(ref**2) / noise))


def run_file(path: str | Path, fmt: str, layout: str, batch: np.ndarray) -> np.ndarray:
    """Logits of an artifact in its own engine for an NCHW ``batch`` (fed in ``layout``)."""
    data = to_layout(batch, layout)
    if fmt.startswith("onnx"):
        return _run_onnx(path, data)
    if fmt.startswith("tflite"):
        return _run_tflite(path, data)
    if fmt == "torch":
        return _run_program(path, data)
    raise ValueError(f"no engine for format {fmt!r}")


def _run_onnx(path: str | Path, data: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    from edgekit.console import ort_log_level

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = ort_log_level()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if isinstance(session.get_inputs()[0].shape[0], int):  # static batch: one sample at a time
        return np.concatenate([session.run(None, {name: data[i : i + 1]})[0] for i in range(len(data))])
    return session.run(None, {name: data})[0]


def _run_tflite(path: str | Path, data: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.console import quiet_native

    with quiet_native():  # the XNNPACK "Created delegate" line comes from C++
        interpreter = Interpreter(model_path=str(path), num_threads=1)
        interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for sample in data:
        interpreter.set_tensor(inp["index"], _quantize(sample[None], inp))
        interpreter.invoke()
        results.append(_dequantize(interpreter.get_tensor(out["index"]), out))
    return np.concatenate(results)


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if not scale:
        return x.astype(detail["dtype"])
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * scale if scale else y.astype(np.float32)


def _run_program(path: str | Path, data: np.ndarray) -> np.ndarray:
    import torch

    module = torch.export.load(str(path)).module()
    with torch.inference_mode():  # one sample at a time: a static program is specialised to batch 1
        return np.concatenate([module(torch.from_numpy(data[i : i + 1])).numpy() for i in range(len(data))])


def verify_file(
    path: str | Path,
    fmt: str,
    precision: str,
    layout: str,
    inputs: dict[str, np.ndarray],
    references: dict[str, np.ndarray],
    float_references: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Figures per input set, the gate applied, and whether it passed (gates from ``GATES``).

    ``references`` are what the file should compute (for fp16: :func:`fp16_reference`'s logits);
    ``float_references``, when given, are the float32 model's: their figures go to ``vs_float32``,
    ungated (what the precision costs)."""
    outputs = {kind: run_file(path, fmt, layout, batch) for kind, batch in inputs.items()}
    figures = {kind: compare(references[kind], out) for kind, out in outputs.items()}
    gate = GATES.get(precision, {})
    failures = [f"{kind} {msg}" for kind, fig in figures.items() for msg in _failures(fig, gate)]
    engine = ENGINES[fmt.split("-")[0]]
    against = "PyTorch with fp16-rounded weights" if precision == "fp16" else "PyTorch float32"
    result = {
        **figures,
        "gate": gate,
        "passed": not failures,
        "failures": failures,
        "measured": f"{engine}, 1 thread, {layout} input; {len(inputs.get('random', []))} seeded N(0,1) "
        f"tensors + {len(inputs.get('images', []))} built-in photos vs {against}",
    }
    if float_references is not None:
        result["vs_float32"] = {kind: compare(float_references[kind], out) for kind, out in outputs.items()}
    return result


def _failures(figures: dict[str, float], gate: dict[str, float]) -> list[str]:
    out = []
    if "max_rel_err" in gate and figures["max_rel_err"] > gate["max_rel_err"]:
        out.append(f"max_rel_err {figures['max_rel_err']:.2e} > {gate['max_rel_err']:.0e}")
    if "min_cosine" in gate and figures["cosine_min"] < gate["min_cosine"]:
        out.append(f"cosine {figures['cosine_min']:.6f} < {gate['min_cosine']}")
    if "min_top1_agreement" in gate and figures["top1_agreement"] < gate["min_top1_agreement"]:
        out.append(f"top-1 agreement {figures['top1_agreement']:.0%} < {gate['min_top1_agreement']:.0%}")
    return out


def int8_exactness(path: str | Path, batch: np.ndarray) -> dict[str, Any]:
    """Where a QDQ int8 file computes its own definition: per CPU int8 path from its weights'
    arithmetic, and measured node by node on this host (``calibration.onnx_check``)."""
    from calibration.onnx_check import layer_check, pair_report
    from edgekit.machine import Int8Path, facts

    pairs = pair_report(path)
    over = f"may saturate: {len(pairs.over_limit)} layers have same-sign pairs up to {pairs.max_pair_sum}"
    paths = {p.value: over if p.saturates_pairs and not pairs.pairs_fit_int16 else "exact" for p in Int8Path}
    host = facts()
    return {
        **pairs.to_dict(),
        "paths": paths,
        "host": {"cpu": host["cpu"], "int8_path": host["int8_path"], **layer_check(path, batch).to_dict()},
    }


def check(fmt: str, result: dict[str, Any]) -> None:
    """Raise VerificationError with the figures when a file failed its gate."""
    if not result["passed"]:
        raise VerificationError(
            f"{fmt} disagrees with PyTorch: {'; '.join(result['failures'])} ({result['measured']})",
            "the file was not written; rerun with --debug, or report the network and format",
        )
