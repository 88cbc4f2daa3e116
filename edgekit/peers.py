"""``edgekit bench DIR --peers``: edgekit's int8 files against the files the peers' defaults give.

For each engine, a peer builds the int8 file a user gets by following that tool's documented
default recipe, from the same float network and the same calibration tensors edgekit used (the
manifest's calibration record, regenerated: same source, samples, seed and preprocessing):

- ``ort-quantize-static``: ONNX Runtime's ``quant_pre_process`` + ``quantize_static`` with its
  defaults (QDQ, MinMax, per-tensor weights, uint8 activations x int8 weights) on ``model.onnx``;
- ``litert-torch-pt2e``: litert-torch's PT2E recipe (``PT2EQuantizer`` with
  ``get_symmetric_quantization_config(is_per_channel=True)``, ``prepare_pt2e`` / ``convert_pt2e``,
  ``litert_torch.convert``) on the network in ``model.pt2``, NCHW input as the converter leaves it.

Both files are timed in one run, interleaved (rounds of ``RUNS_PER_ROUND`` invokes each, the order
alternating every round) so that a busy host slows both alike; the figure is the ratio of p50s.
Agreement is top-1 agreement with the float ``model.onnx`` on the same images (``--data`` or the
built-in photographs).
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import formats as fmts
from edgekit.console import captured_output
from edgekit.errors import ArtifactError, UsageError
from edgekit.manifest import Manifest, read_manifest, record_result
from runtimes.base import time_calls

ROUNDS = 40
RUNS_PER_ROUND = 5


@dataclass(frozen=True)
class Peer:
    """A peer's default int8 recipe, and the edgekit format and engine it is compared in."""

    name: str
    ours: str  # edgekit's format
    runtime: str
    layout: fmts.Layout
    recipe: str  # what the user would run, in one line
    build: Callable[[Manifest, np.ndarray, Path], None]


@dataclass
class PeerRow:
    """One engine: edgekit's file against the peer's, timed interleaved in one run."""

    runtime: str
    threads: int
    ours: str
    peer: str
    ours_p50_ms: float
    peer_p50_ms: float
    ratio: float  # edgekit p50 / peer p50: < 1 is edgekit faster
    ours_agreement: float
    peer_agreement: float
    ours_bytes: int
    peer_bytes: int
    runs: int
    recipe: str


def _ort_quantize_static(manifest: Manifest, calib: np.ndarray, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter({"input": calib[i : i + 1]} for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(manifest.file("onnx-fp32")), str(pre))
    quantize_static(str(pre), str(out), Reader())
    pre.unlink()


def _litert_torch_pt2e(manifest: Manifest, calib: np.ndarray, out: Path) -> None:
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from edgekit.console import quiet_native

    litert_torch.config.show_progress = False
    network = torch.export.load(str(manifest.file("torch"))).module()
    sample = (torch.from_numpy(calib[:1]),)
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(network, sample).module(), quantizer)
    with torch.no_grad():
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i : i + 1]))
    converted = convert_pt2e(prepared, fold_quantize=False)
    with quiet_native():
        lowered = litert_torch.convert(converted, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    lowered.export(str(out))


PEERS: dict[str, Peer] = {
    "ort-quantize-static": Peer(
        "ort-quantize-static",
        "onnx-int8",
        "onnxruntime",
        fmts.Layout.NCHW,
        "quant_pre_process + quantize_static(model.onnx) with its defaults (QDQ, MinMax, per-tensor, U8S8)",
        _ort_quantize_static,
    ),
    "litert-torch-pt2e": Peer(
        "litert-torch-pt2e",
        "tflite-int8",
        "litert",
        fmts.Layout.NCHW,
        "PT2EQuantizer + get_symmetric_quantization_config(is_per_channel=True), litert_torch.convert",
        _litert_torch_pt2e,
    ),
}


def calibration_tensors(manifest: Manifest) -> np.ndarray:
    """The calibration tensors the folder's int8 files were made from, regenerated from its record."""
    from calibration.sources import calibration_set

    record = manifest.calibration
    if not record:
        raise UsageError(f"{manifest.folder} has no int8 files to compare", "export it with --int8 first")
    return calibration_set(record["source"], _spec(manifest), record["samples"], record["seed"]).tensors


def compare(
    folder: str | Path,
    threads: int = 1,
    data: str | Path | None = None,
    limit: int | None = None,
    peers: list[str] | None = None,
) -> dict[str, Any]:
    """Build each peer's file, time it interleaved with edgekit's, and measure both agreements."""
    from edgekit import machine
    from edgekit.evaluate import load_eval_images
    from runtimes import run_file

    manifest = read_manifest(folder)
    chosen = [PEERS[name] for name in (peers or PEERS)]
    calib = calibration_tensors(manifest)
    missing = [p.ours for p in chosen if p.ours not in manifest.files]
    if missing:
        raise ArtifactError(f"{folder} has no {', '.join(missing)}", "export it with --int8 (both families)")
    images, _, _, described = load_eval_images(_spec(manifest), data, limit)
    reference = run_file(manifest.file("onnx-fp32"), images).argmax(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgekit-peers-") as tmp:
        for peer in chosen:
            ours = manifest.file(peer.ours)
            theirs = Path(tmp) / f"{peer.name}{ours.suffix}"
            with captured_output():  # the converters' own log lines
                peer.build(manifest, calib, theirs)
            agree = {
                path: float(np.mean(run_file(path, images, layout, peer.runtime).argmax(1) == reference))
                for path, layout in ((ours, fmts.get(peer.ours).layout), (theirs, peer.layout))
            }
            times = interleaved({"ours": ours, "peer": theirs}, peer.runtime, threads)
            p50 = {k: statistics.median(v) for k, v in times.items()}
            row = PeerRow(
                runtime=peer.runtime,
                threads=threads,
                ours=peer.ours,
                peer=peer.name,
                ours_p50_ms=round(p50["ours"], 4),
                peer_p50_ms=round(p50["peer"], 4),
                ratio=round(p50["ours"] / p50["peer"], 3),
                ours_agreement=agree[ours],
                peer_agreement=agree[theirs],
                ours_bytes=ours.stat().st_size,
                peer_bytes=theirs.stat().st_size,
                runs=len(times["ours"]),
                recipe=peer.recipe,
            )
            rows.append(row)
    result = {
        "machine": machine.facts(),
        "method": (
            f"each file loaded once at {threads} thread(s); {ROUNDS} rounds of {RUNS_PER_ROUND} invokes "
            "per file, order alternating each round, batch 1, seeded N(0,1) input; p50 over all runs; "
            f"agreement = top-1 agreement with model.onnx (float32, ONNX Runtime) on {len(images)} images "
            f"({described}); peer files built from the same calibration tensors "
            f"({manifest.calibration['source']}, {len(calib)} samples)"
        ),
        "rows": [asdict(r) for r in rows],
    }
    record_result(folder, "peers", result)
    return result


def _spec(manifest: Manifest) -> Any:
    from calibration.preprocess import PreprocessSpec

    return PreprocessSpec.from_dict(manifest.preprocess)


def interleaved(paths: dict[str, Path], runtime: str, threads: int) -> dict[str, list[float]]:
    """Latencies (ms) of each file, timed in alternating rounds in this process."""
    from runtimes import get_runtime

    engine = get_runtime(runtime)
    calls = {}
    for key, path in paths.items():
        session = engine.load(path, threads=threads)
        shape = [1, *[int(d) for d in session.input["shape"][1:]]]
        native = session.prepare(np.random.default_rng(0).standard_normal(shape, dtype=np.float32))
        calls[key] = (lambda s, x: lambda: s.invoke(x))(session, native)
        time_calls(calls[key], 2 * RUNS_PER_ROUND)  # warm-up
    times: dict[str, list[float]] = {key: [] for key in calls}
    order = list(calls)
    for _ in range(ROUNDS):
        for key in order:
            times[key] += time_calls(calls[key], RUNS_PER_ROUND)
        order.reverse()
    return times
