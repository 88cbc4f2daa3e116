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

from calibration.preprocess import PreprocessSpec, preprocess_pil
from edgekit.errors import VerificationError
from edgekit.formats import Format

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


def method(formats: list[str]) -> str:
    """How the files of ``formats`` were verified, naming the engines that ran them."""
    from edgekit.formats import get

    engines = ", ".join(dict.fromkeys(get(name).engine for name in formats))
    return (
        f"each file in its format's engine ({engines}), 1 thread, on {N_RANDOM} seeded N(0,1) "
        f"tensors + {N_IMAGES} built-in photos, vs PyTorch float32 logits "
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

    from calibration.fakequant import quant_layers
    from exporters.rewrites import fold_batchnorm

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


def verify_file(
    path: str | Path,
    fmt: Format,
    inputs: dict[str, np.ndarray],
    references: dict[str, np.ndarray],
    float_references: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Figures per input set, the gate applied, and whether it passed (gates from ``GATES``).

    The file runs in its format's engine, loaded once (``runtimes.run_batches``). ``references``
    are what the file should compute (for fp16: :func:`fp16_reference`'s logits);
    ``float_references``, when given, are the float32 model's: their figures go to
    ``vs_float32``, ungated (what the precision costs)."""
    from runtimes import run_batches

    outputs = run_batches(path, inputs, fmt.layout, fmt.engine)
    figures = {kind: compare(references[kind], out) for kind, out in outputs.items()}
    gate = GATES.get(fmt.precision, {})
    failures = [f"{kind} {msg}" for kind, fig in figures.items() for msg in _failures(fig, gate)]
    against = "PyTorch with fp16-rounded weights" if fmt.precision == "fp16" else "PyTorch float32"
    result = {
        **figures,
        "gate": gate,
        "passed": not failures,
        "failures": failures,
        "measured": f"{fmt.engine}, 1 thread, {fmt.layout} input; {len(inputs.get('random', []))} "
        f"seeded N(0,1) tensors + {len(inputs.get('images', []))} built-in photos vs {against}",
    }
    if float_references is not None:
        result["vs_float32"] = {kind: compare(float_references[kind], out) for kind, out in outputs.items()}
    return result


class Checker:
    """The verification inputs and PyTorch's logits for them, computed once per model."""

    def __init__(self, model: Any, spec: PreprocessSpec, seed: int = 0) -> None:
        self.inputs = reference_inputs(spec, seed)
        self.model = model
        self.references = {kind: torch_logits(model, batch) for kind, batch in self.inputs.items()}
        self._fp16: dict[str, np.ndarray] | None = None

    def example(self, batch: int = 1) -> Any:
        """An NCHW example input for the converters (a symbolic batch needs 2 samples to trace)."""
        import torch

        return torch.from_numpy(self.inputs["random"][:1].copy()).repeat(batch, 1, 1, 1)

    def for_model(self, model: Any) -> Checker:
        """The same inputs, references from another model (an int8 file's remedied network)."""
        other = object.__new__(Checker)
        other.inputs, other.model, other._fp16 = self.inputs, model, None
        other.references = {kind: torch_logits(model, batch) for kind, batch in self.inputs.items()}
        return other

    def verify(self, path: Path, fmt: Format) -> dict[str, Any]:
        if fmt.precision != "fp16":
            return verify_file(path, fmt, self.inputs, self.references)
        if self._fp16 is None:
            emulated = fp16_reference(self.model)
            self._fp16 = {kind: torch_logits(emulated, batch) for kind, batch in self.inputs.items()}
        return verify_file(path, fmt, self.inputs, self._fp16, self.references)


def _failures(figures: dict[str, float], gate: dict[str, float]) -> list[str]:
    out = []
    if "max_rel_err" in gate and figures["max_rel_err"] > gate["max_rel_err"]:
        out.append(f"max_rel_err {figures['max_rel_err']:.2e} > {gate['max_rel_err']:.0e}")
    if "min_cosine" in gate and figures["cosine_min"] < gate["min_cosine"]:
        out.append(f"cosine {figures['cosine_min']:.6f} < {gate['min_cosine']}")
    if "min_top1_agreement" in gate and figures["top1_agreement"] < gate["min_top1_agreement"]:
        out.append(f"top-1 agreement {figures['top1_agreement']:.0%} < {gate['min_top1_agreement']:.0%}")
    return out


def exactness_paths(exactness: dict[str, Any]) -> dict[str, Any]:
    """A writer's int8 exactness report (its weights' pair arithmetic, the node-by-node check on
    this host) with, per CPU int8 path, whether the file is exact there, and the host named."""
    from edgekit.machine import Int8Path, facts

    over = exactness.get("over_limit") or []
    saturating = (
        f"may saturate: {len(over)} layers have same-sign pairs up to {exactness.get('max_pair_sum')}"
    )
    paths = {p.value: saturating if p.saturates_pairs and over else "exact" for p in Int8Path}
    result = {**exactness, "paths": paths}
    if "host" in exactness:
        host = facts()
        result["host"] = {"cpu": host["cpu"], "int8_path": host["int8_path"], **exactness["host"]}
    return result


def check(fmt: str, result: dict[str, Any]) -> None:
    """Raise VerificationError with the figures when a file failed its gate."""
    if not result["passed"]:
        raise VerificationError(
            f"{fmt} disagrees with PyTorch: {'; '.join(result['failures'])} ({result['measured']})",
            "the file was not written; rerun with --debug, or report the network and format",
        )
