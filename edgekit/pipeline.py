"""``edgekit export``: build the model, write every format, verify each against PyTorch.

Steps, in order: build (zoo name or ``file.py:factory``) -> ``model.pt2`` (the float reference)
-> each exporter, verified in its own engine -> the int8 hook (calibration.int8) -> report.md and
manifest.json. Everything is written into a staging folder swapped in only when all steps
passed, so a failed export leaves an earlier good folder untouched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calibration.preprocess import PreprocessSpec
from edgekit.errors import UsageError
from edgekit.manifest import file_entry, new_manifest, staged_dir, write_manifest, write_text
from edgekit.report import fp16_cost, int8_section
from edgekit.verify import (
    GATES,
    METHOD,
    fp16_reference,
    int8_exactness,
    reference_inputs,
    torch_logits,
    verify_file,
)
from edgekit.verify import check as check_gate

if TYPE_CHECKING:
    from torch import nn

MIN_RESOLUTION, MAX_RESOLUTION, STRIDE = 32, 1024, 32
DETERMINISM = 1e-5  # two forward passes may differ by kernel summation order, never by more
QUANT_OPTIONS = (
    "calib",
    "calib_samples",
    "calib_method",
    "per_tensor",
    "symmetric_activations",
    "skip_bad_images",
    "equalize",
    "equalize_streams",
    "gptq",
    "bias_correct",
)
TOOLS = ("torch", "onnx", "onnxruntime", "onnxslim", "litert-torch", "ai-edge-litert", "ai-edge-quantizer")
IMAGENET = PreprocessSpec()


@dataclass
class Built:
    """A network ready to export, with what the manifest says about it."""

    name: str
    model: nn.Module
    spec: PreprocessSpec
    info: dict[str, Any]


def export(
    name: str,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    formats: list[str] | None = None,
    argv: list[str] | None = None,
    width: float | None = None,
    resolution: int | None = None,
    groups: int | None = None,
    pretrained: bool = False,
    dynamic_batch: bool = False,
    int8: bool = False,
    seed: int = 0,
    **quant_options: Any,
) -> dict[str, Any]:
    """Export ``name`` to the requested formats in ``out_dir``; returns the manifest."""
    import exporters

    chosen = exporters.resolve(formats)
    exporters.check_available(chosen)
    _check_quant_options(int8, quant_options)
    _check_args(name, resolution)
    _check_out(out_dir)
    if int8:
        from calibration.sources import check_source

        check_source(quant_options.get("calib"), quant_options.get("calib_samples"))
    with _Steps(len(chosen) + 3 + int8) as steps:
        with steps.step(f"build {name}"):
            built = build(
                name, width=width, resolution=resolution, groups=groups, pretrained=pretrained, seed=seed
            )
        out = Path(out_dir) if out_dir else Path("artifacts") / built.name
        _check_space(out, built.info["params"], chosen, int8)
        with staged_dir(out) as stage:
            manifest = _new_manifest(built, dynamic_batch, argv)
            files = manifest["files"]
            check = _Checker(built, seed)
            with steps.step("torch reference (model.pt2)"):
                files["torch"] = write_reference(stage, built.model, dynamic_batch, check)
            for exporter in chosen:
                with steps.step(f"{exporter.fmt} ({exporter.filename})"):
                    files[exporter.fmt] = _export_one(exporter, stage, manifest, built, check, dynamic_batch)
            if int8:
                with steps.step("int8 (calibration)"):
                    from calibration.int8 import quantize_all

                    quantize_all(stage, manifest, built.model, {**quant_options, "seed": seed})
                    if "onnx-int8" in files:
                        files["onnx-int8"]["exactness"] = int8_exactness(
                            stage / files["onnx-int8"]["path"], check.inputs["images"][:1]
                        )
            with steps.step("report.md + manifest.json"):
                write_export_report(stage, manifest)
                write_manifest(stage, manifest)
        manifest["folder"] = str(out)
    return manifest


# --- building the model -------------------------------------------------------------------------


def build(
    name: str,
    *,
    width: float | None = None,
    resolution: int | None = None,
    groups: int | None = None,
    pretrained: bool = False,
    seed: int = 0,
) -> Built:
    """A zoo model, or ``path/to/file.py:factory`` for a user's own ``nn.Module``."""
    import torch

    torch.manual_seed(seed)  # random-init weights must be the same on every run
    if _is_file_spec(name):
        if width is not None or groups is not None or pretrained:
            raise UsageError(
                "--width, --groups and --pretrained apply to zoo models only",
                "set them inside your factory function",
            )
        built = _build_file(name, resolution)
    else:
        built = _build_zoo(name, width, resolution, groups, pretrained)
    counts = _counts(built.model, built.spec.resolution)
    built.info["args"]["num_classes"] = counts.pop("num_classes")
    built.info.update(counts)
    return built


def _build_zoo(
    name: str, width: float | None, resolution: int | None, groups: int | None, pretrained: bool
) -> Built:
    from edgekit.zoo import create_model, get_entry

    entry = get_entry(name)
    resolution = resolution or entry.resolution
    if resolution != entry.resolution:
        check_resolution(resolution)
    model = create_model(entry.name, width=width, pretrained=pretrained, groups=groups)
    spec = PreprocessSpec(
        resolution=resolution,
        resize=round(resolution / entry.crop_pct),
        mean=tuple(entry.mean),
        std=tuple(entry.std),
    )
    args = {"width": width or 1.0, "resolution": resolution, "groups": groups, "pretrained": pretrained}
    info = {"name": entry.name, "source": "zoo", "family": entry.family, "paper": entry.paper, "args": args}
    if not pretrained:
        info["weights"] = {"init": "random (seeded)", **recalibrate_batchnorm(model, spec)}
    # The default folder name tells variants apart: mobilenet_v2_w0.5_r96.
    changed = (("w", width), ("r", None if resolution == entry.resolution else resolution), ("g", groups))
    suffix = "".join(f"_{k}{v}" for k, v in changed if v is not None)
    return Built(name + suffix, model, spec, info)  # the folder keeps the name as typed (an alias too)


BN_IMAGES = 32


def recalibrate_batchnorm(model: Any, spec: PreprocessSpec, images: int = BN_IMAGES) -> dict[str, Any]:
    """Re-estimate a random-init network's batch-norm statistics on the built-in photographs.

    With batch norm at identity, activations of a fresh deep network shrink layer by layer (logits
    ~1e-10 in MobileNetV2): int8 ranges, XNNPACK's scale checks and agreement figures would then
    describe rounding dust, not a network. Running statistics measured on real images give every
    layer the unit-scale activations a trained network has; the weights are untouched.
    """
    import torch

    from calibration.sources import builtin_tensors
    from calibration.threads import one_thread

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return {"batchnorm_statistics": "none in this network"}
    batch = torch.from_numpy(builtin_tensors(spec, images, seed=0))
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    model.train()
    try:
        with torch.no_grad(), one_thread():  # a fixed summation order: the same bytes every run
            for chunk in batch.split(8):
                model(chunk)
    finally:
        model.eval()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return {"batchnorm_statistics": f"re-estimated on {images} crops of the built-in photographs"}


def _check_args(name: str, resolution: int | None) -> None:
    """Fail fast, before any progress output, on what needs no network built."""
    from edgekit.zoo import get_entry

    if _is_file_spec(name):
        path = Path(name.rpartition(":")[0]).expanduser()
        if not path.is_file():
            raise UsageError(f"no such file {path}", "pass path/to/module.py:factory")
        default = None
    else:
        default = get_entry(name).resolution  # raises UnknownModelError with suggestions
    if resolution not in (None, default):
        check_resolution(resolution)


def _check_out(out_dir: str | os.PathLike[str] | None) -> None:
    """A --out the converters can write: UTF-8, writable, with room (they abort natively otherwise)."""
    from edgekit.manifest import check_path, check_writable

    out = check_path(out_dir, "--out") if out_dir else Path("artifacts")
    check_writable(out)


BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "int8": 1}


def _check_space(out: Path, params: int, chosen: list[Any], int8: bool) -> None:
    """Room for every file this export writes, and for the int8 step's temporary copies: the
    converters abort natively (no error to catch) when the disk fills under them."""
    import tempfile

    from edgekit.manifest import MIN_FREE_BYTES, check_writable

    files = 4 + sum(BYTES_PER_PARAM[e.precision] for e in chosen) + (2 if int8 else 0)
    need = int(1.5 * params * files) + MIN_FREE_BYTES
    check_writable(out, need)
    if int8:
        check_writable(Path(tempfile.gettempdir()), int(params * 12) + MIN_FREE_BYTES)


def _is_file_spec(name: str) -> bool:
    path, _, factory = name.rpartition(":")
    return path.endswith(".py") and bool(factory)


def _build_file(spec_str: str, resolution: int | None) -> Built:
    from torch import nn

    path_str, _, factory_name = spec_str.rpartition(":")
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise UsageError(f"no such file {path}", "pass path/to/module.py:factory")
    module_spec = importlib.util.spec_from_file_location(f"edgekit_user_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: say where it failed, not ours
        raise UsageError(
            f"{path} failed to import: {type(exc).__name__}: {exc}",
            "fix the module; --debug shows the traceback",
        ) from exc
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UsageError(
            f"{path} has no function {factory_name!r}", "name a function that returns an nn.Module"
        )
    try:
        model = factory()
    except Exception as exc:
        raise UsageError(
            f"{spec_str} raised {type(exc).__name__}: {exc}", "fix the factory; --debug shows the traceback"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"{spec_str} returned {type(model).__name__}, not an nn.Module", "return the network itself"
        )
    resolution = resolution or getattr(model, "resolution", None)
    if resolution is None:
        raise UsageError(f"{spec_str}: input resolution unknown", "pass --resolution or set model.resolution")
    check_resolution(int(resolution))
    resolution = int(resolution)
    mean, std = tuple(getattr(model, "mean", IMAGENET.mean)), tuple(getattr(model, "std", IMAGENET.std))
    spec = PreprocessSpec(resolution=resolution, resize=round(resolution / 0.875), mean=mean, std=std)
    info = {
        "name": f"{path.stem}:{factory_name}",
        "source": "file",
        "path": str(path.resolve()),
        "args": {"width": None, "resolution": resolution, "groups": None, "pretrained": False},
    }
    return Built(path.stem, model.eval(), spec, info)


def check_resolution(resolution: int) -> None:
    """The zoo's networks downsample by 32: other sizes break concatenations or lose pixels."""
    if not (MIN_RESOLUTION <= resolution <= MAX_RESOLUTION and resolution % STRIDE == 0):
        raise UsageError(
            f"resolution {resolution} is not supported",
            f"use a multiple of {STRIDE} from {MIN_RESOLUTION} to {MAX_RESOLUTION}, e.g. 96, 160 or 224",
        )


def _counts(model: nn.Module, resolution: int) -> dict[str, Any]:
    """Parameters, MACs (FlopCounterMode's FLOPs / 2) and classes, from one forward pass; and a
    second pass: an output that changes for the same input cannot be verified in any format."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    x = torch.randn(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(0))
    try:
        with counter, torch.inference_mode():
            logits = model(x)
        with torch.inference_mode():
            again = model(x)
    except RuntimeError as exc:
        raise UsageError(
            f"the network fails at {resolution}x{resolution}: {str(exc).splitlines()[0]}",
            "choose another --resolution",
        ) from exc
    change = float((again - logits).abs().max()) / max(float(logits.abs().max()), 1e-30)
    if change > DETERMINISM:
        raise UsageError(
            f"the model gives different outputs for the same input (max change {change:.2g} of its output "
            "scale): exported files cannot be checked against it",
            "call model.eval() and remove random ops (dropout in train mode, torch.randn, ...) from forward",
        )
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": counter.get_total_flops() // 2,
        "num_classes": int(logits.shape[-1]),
    }


def _check_quant_options(int8: bool, options: dict[str, Any]) -> None:
    unknown = set(options) - set(QUANT_OPTIONS)
    if unknown:
        raise TypeError(f"export() got unexpected options {sorted(unknown)}")
    given = [k for k, v in options.items() if v not in (None, False)]
    if given and not int8:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UsageError(f"int8 options without --int8: {flags}", "add --int8 or drop them")


# --- writing and verifying ----------------------------------------------------------------------


class _Checker:
    """The verification inputs and PyTorch's logits for them, computed once per export."""

    def __init__(self, built: Built, seed: int) -> None:
        import torch

        self.inputs = reference_inputs(built.spec, seed)
        self.references = {kind: torch_logits(built.model, batch) for kind, batch in self.inputs.items()}
        self.example = torch.from_numpy(self.inputs["random"][:1].copy())
        self.model = built.model
        self._fp16: dict[str, Any] | None = None

    def example_for(self, dynamic_batch: bool) -> Any:
        """torch.export specialises a batch of 1 to a constant: a symbolic batch needs 2 samples."""
        return self.example.repeat(2, 1, 1, 1) if dynamic_batch else self.example

    def verify(self, path: Path, fmt: str, precision: str, layout: str) -> dict[str, Any]:
        if precision != "fp16":
            return verify_file(path, fmt, precision, layout, self.inputs, self.references)
        if self._fp16 is None:
            emulated = fp16_reference(self.model)
            self._fp16 = {kind: torch_logits(emulated, batch) for kind, batch in self.inputs.items()}
        return verify_file(path, fmt, precision, layout, self.inputs, self._fp16, self.references)


def write_reference(folder: Path, model: nn.Module, dynamic_batch: bool, check: _Checker) -> dict[str, Any]:
    """``model.pt2``: the torch.export program, runnable without the zoo's code."""
    import torch

    from edgekit.console import captured_output
    from exporters import conversion_error

    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    example = check.example_for(dynamic_batch)
    error = None
    with captured_output() as log:
        try:
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
        except Exception as exc:  # torch.export names the untraceable op or the data-dependent branch
            error = exc
    if error is not None:
        raise conversion_error("torch.export", error, log[0]) from error
    torch.export.save(program, folder / "model.pt2")
    result = check.verify(folder / "model.pt2", "torch", "fp32", "NCHW")
    check_gate("torch", result)
    batch = "batch" if dynamic_batch else 1
    input_name = program.graph_signature.user_inputs[0]
    classes = check.references["random"].shape[1]
    return file_entry(
        folder,
        "model.pt2",
        format="torch",
        precision="fp32",
        layout="NCHW",
        inputs=[{"name": input_name, "shape": [batch, *example.shape[1:]], "dtype": "float32"}],
        outputs=[{"name": "logits", "shape": [batch, classes], "dtype": "float32"}],
        verification=result,
    )


def _export_one(
    exporter: Any, stage: Path, manifest: dict[str, Any], built: Built, check: _Checker, dynamic_batch: bool
) -> dict[str, Any]:
    """Write one format, record its I/O and ops, verify it; a failed gate raises."""
    import exporters

    path = stage / exporter.filename
    options: dict[str, Any] = {}
    if exporter.family == "onnx":
        options["dynamic_batch"] = dynamic_batch
    if exporter.fmt == "tflite-fp16" and "tflite-fp32" in manifest["files"]:
        options["fp32_path"] = stage / manifest["files"]["tflite-fp32"]["path"]
    example = check.example_for(dynamic_batch and exporter.family == "onnx")
    info = exporters.export(exporter.fmt, built.model, example, path, **options)
    result = check.verify(path, exporter.fmt, exporter.precision, exporter.layout)
    check_gate(exporter.fmt, result)
    return file_entry(
        stage,
        exporter.filename,
        format=exporter.fmt,
        precision=exporter.precision,
        layout=exporter.layout,
        **info,
        verification=result,
    )


def _new_manifest(built: Built, dynamic_batch: bool, argv: list[str] | None) -> dict[str, Any]:
    res = built.spec.resolution
    return new_manifest(
        model=built.info,
        input={"shape": ["batch" if dynamic_batch else 1, 3, res, res], "dtype": "float32", "layout": "NCHW"},
        preprocess=built.spec.to_dict(),
        tools=tool_versions(),
        command=list(argv or []),
    )


def tool_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in TOOLS:
        try:
            versions[dist.replace("-", "_")] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist.replace("-", "_")] = None
    return versions


# --- report.md ----------------------------------------------------------------------------------


def write_export_report(folder: Path, manifest: dict[str, Any]) -> Path:
    """A short Markdown summary of the folder: model, files, verification, op coverage."""
    model = manifest["model"]
    lines = [
        f"# {model['name']}",
        "",
        f"- source: {model['source']}; args: {_args(model['args'])}",
        f"- params: {model['params']:,}; MACs: {model['macs']:,} at {manifest['input']['shape']}",
        f"- preprocess: resize {manifest['preprocess']['resize']}, centre crop "
        f"{manifest['preprocess']['resolution']}, mean {manifest['preprocess']['mean']}, "
        f"std {manifest['preprocess']['std']}",
        "",
        "## Files",
        "",
        "| format | file | size | sha256 | layout | max rel err (random / photos) | cosine min "
        "| top-1 agree |",
        "|---|---|---:|---|---|---|---:|---:|",
    ]
    for fmt, entry in manifest["files"].items():
        ver = entry.get("verification", {})
        rnd, img = ver.get("random", {}), ver.get("images", {})
        cos = min(rnd.get("cosine_min", 1.0), img.get("cosine_min", 1.0)) if ver else None
        agree = img.get("top1_agreement")
        lines.append(
            f"| {fmt} | {entry['path']} | {entry['size'] / 1e6:.2f} MB | `{entry['sha256'][:12]}` | "
            f"{entry.get('layout', '')} | {_fmt(rnd.get('max_rel_err'))} / {_fmt(img.get('max_rel_err'))} | "
            f"{'—' if cos is None else f'{cos:.6f}'} | {'—' if agree is None else f'{agree:.0%}'} |"
        )
    lines += [
        "",
        f"Verification: {METHOD}; max rel err = max|out - ref| / max|ref|. Gates: {_gates(manifest)}.",
        *fp16_cost(manifest),
        "",
    ]
    lines += int8_section(manifest)
    lines += _ops_section(manifest)
    return write_text(folder / "report.md", "\n".join(lines) + "\n")


def _ops_section(manifest: dict[str, Any]) -> list[str]:
    lines = ["## Ops", ""]
    for fmt, entry in manifest["files"].items():
        if "ops" not in entry:
            continue
        ops = ", ".join(f"{op} x{n}" for op, n in entry["ops"].items())
        lines.append(f"- **{fmt}** ({sum(entry['ops'].values())} ops): {ops}")
        xnn = entry.get("xnnpack")
        if xnn:
            if xnn["fully_delegated"]:
                lines.append(
                    f"  - XNNPACK takes every op ({xnn['delegated_ops']}/{xnn['ops']}, "
                    f"{xnn['partitions']} partition)"
                )
            else:
                left = ", ".join(f"{op} x{n}" for op, n in xnn["not_delegated"].items())
                lines.append(
                    f"  - XNNPACK takes {xnn['delegated_ops']}/{xnn['ops']} ops in "
                    f"{xnn['partitions']} partitions; off the fast path: {left}"
                )
    return [*lines, ""]


def _gates(manifest: dict[str, Any]) -> str:
    used = {e.get("precision") for e in manifest["files"].values()}
    gates = {p: ", ".join(f"{k} {v}" for k, v in g.items()) for p, g in GATES.items() if p in used}
    return "; ".join(f"{p}: {g}" for p, g in gates.items())


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in args.items() if v is not None)


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"


# --- progress -----------------------------------------------------------------------------------


class _Steps:
    """Per-step progress on stderr: a rich spinner on a terminal, plain lines otherwise.

    It writes to a duplicate of fd 2 so that the converters' output capture (which redirects fd
    1 and 2 during a conversion) does not swallow the display.
    """

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.live = sys.stderr.isatty()

    def __enter__(self) -> _Steps:
        from rich.console import Console

        self.file = os.fdopen(os.dup(2), "w", buffering=1)
        self.console = Console(file=self.file, force_terminal=self.live, highlight=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.done += 1
        label = f"[{self.done}/{self.total}] {what}"
        start = time.perf_counter()
        if self.live:
            with self.console.status(label):
                yield
            self.console.print(f"[green]✓[/green] {label} [dim]({time.perf_counter() - start:.1f} s)[/dim]")
        else:
            print(f"edgekit export: {label} ...", file=self.file)
            yield
            print(f"edgekit export: {label} done ({time.perf_counter() - start:.1f} s)", file=self.file)
