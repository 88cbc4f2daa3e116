"""Run one model file, time it, print ONE JSON object on stdout. Executed unchanged on every target.

Standalone on purpose: stdlib + numpy + the engine (onnxruntime; ai_edge_litert with
tflite_runtime as fallback; ncnn; openvino; ExecuTorch through edgekit's C API, no torch), nothing
of the project, Python >= 3.8, so it can be copied to a Raspberry Pi, an Android shell or a qemu
rootfs and run as is. Each engine is imported only when asked for: a board without it gets a clean
"not installed" (exit 3), never a crash::

    python3 runner.py --model m.tflite --engine litert --threads 4 --warmup 5 --runs 50 \
        [--input in.npy] [--output out.npy] [--no-xnnpack] [--fp16] [--seed 0]
    python3 runner.py --model m.ncnn.param --engine ncnn     # reads m.ncnn.bin beside it
    python3 runner.py --model m.pte --engine executorch      # XNNPACK, as delegated in the file
    python3 runner.py --probe        # machine + which engines import

Input is a float array in the file's own layout; int8/uint8 inputs are quantised with the file's
own scale/zero-point and int8 outputs dequantised, so callers always see float. A batch larger
than the model's fixed batch runs sample by sample. Failures print {"ok": false, "error", "hint"}
and exit non-zero.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

ENGINES = ("onnxruntime", "litert", "ncnn", "openvino", "executorch")
EXIT_FAILED = 2
EXIT_NO_ENGINE = 3

# The runner needs nothing beside it, and its home folder in the project (runtimes/, which holds
# engine wrappers named onnxruntime.py and litert.py) must not shadow the real engine packages.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _HERE]


class RunnerError(Exception):
    def __init__(self, error, hint, code=EXIT_FAILED):
        super().__init__(error)
        self.error, self.hint, self.code = error, hint, code


# --- the machine --------------------------------------------------------------------------------


def _cpuinfo():
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return {}
    info = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


# ARM "CPU part" ids of the cores one meets on boards and phones.
_ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77",
    "0xd41": "Cortex-A78",
    "0xd44": "Cortex-X1",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
    "0xd4d": "Cortex-A715",
}


def _os_name():
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def machine():
    info = _cpuinfo()
    cpu = info.get("model name") or info.get("Model") or ""
    part = _ARM_PARTS.get(info.get("CPU part", "").lower())
    if part:
        cpu = f"{cpu} ({part})" if cpu else part
    return {
        "arch": platform.machine(),
        "cpu": cpu or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "features": (info.get("flags") or info.get("Features") or "").split(),
        "python": platform.python_version(),
        "os": _os_name(),
    }


# --- the engines ------------------------------------------------------------------------------


def _ort_version():
    import onnxruntime

    return onnxruntime.__version__


def _litert_version():
    try:
        import ai_edge_litert

        return "ai-edge-litert " + getattr(ai_edge_litert, "__version__", "?")
    except ImportError:
        import tflite_runtime

        return "tflite-runtime " + getattr(tflite_runtime, "__version__", "?")


def _ncnn_version():
    import ncnn

    return ncnn.__version__


def _openvino_version():
    import openvino

    return openvino.__version__.split("-")[0]


def _executorch_version():
    """From the wheel's ``executorch-VERSION.dist-info`` beside the C API's folder (importlib.metadata
    would scan the whole path: half a second under emulation)."""
    site = os.path.dirname(os.path.dirname(_executorch_capi()._name))
    for name in os.listdir(site):
        if name.startswith("executorch-") and name.endswith(".dist-info"):
            return name[len("executorch-") : -len(".dist-info")]
    raise ImportError(f"no executorch-*.dist-info in {site}: install the executorch wheel there")


_VERSIONS = {
    "onnxruntime": _ort_version,
    "litert": _litert_version,
    "ncnn": _ncnn_version,
    "openvino": _openvino_version,
    "executorch": _executorch_version,
}


def _engine_versions(engines=ENGINES):
    """Each engine's version, or None when it does not import (a missing engine, not an error)."""
    versions = {}
    for engine in engines:
        try:
            versions[engine] = _VERSIONS[engine]()
        except ImportError:
            versions[engine] = None
    return versions


class OrtModel:
    def __init__(self, path, threads, no_xnnpack, fp16):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RunnerError(
                "onnxruntime is not installed on the target", "pip install onnxruntime", EXIT_NO_ENGINE
            ) from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.shape = [d if isinstance(d, int) else -1 for d in inp.shape]
        self.dtype = _ORT_TYPES.get(inp.type, "float32")
        self.quant = None  # QDQ models keep float I/O; the scale lives inside the graph
        self.output_quant = None

    def __call__(self, x):
        return self.session.run(None, {self.input_name: x})[0]

    def dequantize(self, y):
        return y


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
}


class LiteRtModel:
    def __init__(self, path, threads, no_xnnpack, fp16):
        try:
            from ai_edge_litert import interpreter as tfl
        except ImportError:
            try:
                from tflite_runtime import interpreter as tfl
            except ImportError as exc:
                raise RunnerError(
                    "LiteRT is not installed on the target",
                    "pip install ai-edge-litert (or tflite-runtime)",
                    EXIT_NO_ENGINE,
                ) from exc
        kwargs = {"model_path": path, "num_threads": threads}
        if no_xnnpack:
            # XNNPACK is LiteRT's default CPU delegate; without it the reference builtin kernels run.
            kwargs["experimental_op_resolver_type"] = tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.version = _litert_version()
        self.interp = tfl.Interpreter(**kwargs)
        self.interp.allocate_tensors()
        inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.input_index = inp["index"]
        self.shape = [int(d) for d in inp["shape"]]
        self.dtype = inp["dtype"].__name__
        scale, zero = inp["quantization"]
        self.quant = (float(scale), int(zero)) if scale else None
        scale, zero = self.out["quantization"]
        self.output_quant = (float(scale), int(zero)) if scale else None

    def __call__(self, x):
        self.interp.set_tensor(self.input_index, x)
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"]).copy()

    def dequantize(self, y):
        scale, zero = self.out["quantization"]
        if scale and y.dtype.kind in "iu":
            return ((y.astype("float32") - zero) * scale).astype("float32")
        return y


class NcnnModel:
    """A ``.param`` with its ``.bin`` beside. ncnn's options default to fp16 storage and arithmetic;
    they are set before loading: off for an fp32 file, ncnn's defaults with ``--fp16``."""

    def __init__(self, path, threads, no_xnnpack, fp16):
        try:
            import ncnn
        except ImportError as exc:
            raise RunnerError(
                "ncnn is not installed on the target", "pip install ncnn", EXIT_NO_ENGINE
            ) from exc
        weights = os.path.splitext(path)[0] + ".bin"
        if not os.path.isfile(weights):
            raise RunnerError(
                f"{os.path.basename(weights)} not found beside {os.path.basename(path)}",
                "copy the .bin with the .param (ncnn keeps the weights apart)",
            )
        self._ncnn = ncnn
        self.net = ncnn.Net()
        opt = self.net.opt
        opt.num_threads = threads
        opt.use_vulkan_compute = False
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = fp16
        opt.use_bf16_storage = False
        if self.net.load_param(path) != 0 or self.net.load_model(weights) != 0:
            raise RunnerError(
                f"ncnn cannot load {os.path.basename(path)} with {os.path.basename(weights)}",
                "check that the pair was written together and is not truncated",
            )
        self.version = ncnn.__version__
        self.input_name = self.net.input_names()[0]
        self.output_name = self.net.output_names()[0]
        self.shape = _ncnn_input_shape(path)
        self.dtype = "float32"
        self.quant = None
        self.output_quant = None

    def __call__(self, x):
        import numpy as np

        outputs = []
        for sample in x:  # ncnn takes one CHW image per extractor
            with self.net.create_extractor() as ex:
                ex.input(self.input_name, self._ncnn.Mat(np.ascontiguousarray(sample)).clone())
                _, out = ex.extract(self.output_name)
                outputs.append(np.array(out).reshape(-1))
        return np.stack(outputs)

    def dequantize(self, y):
        return y


def _ncnn_input_shape(path):
    """[1, c, h, w] from the Input layer's ``0=w 1=h 2=c`` (edgekit writes them; -1 when absent)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh.read().splitlines()[2:]:
            fields = line.split()
            if fields and fields[0] == "Input":
                params = dict(f.split("=", 1) for f in fields[5:] if "=" in f)
                return [1, *(int(params.get(k, -1)) for k in ("2", "1", "0"))]
    return [1, -1, -1, -1]


class OpenVinoModel:
    """OpenVINO's CPU plug-in on an ``.onnx`` file; f32 inference precision, never a silent bf16."""

    def __init__(self, path, threads, no_xnnpack, fp16):
        try:
            import openvino as ov
        except ImportError as exc:
            raise RunnerError(
                "openvino is not installed on the target",
                "pip install --no-deps openvino (its telemetry package is not needed)",
                EXIT_NO_ENGINE,
            ) from exc
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.compiled = ov.Core().compile_model(path, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.version = _openvino_version()
        shape = self.compiled.inputs[0].get_partial_shape()
        self.shape = [d.get_length() if d.is_static else -1 for d in shape]
        self.dtype = "float32"
        self.quant = None  # QDQ models keep float I/O, as in ONNX Runtime
        self.output_quant = None

    def __call__(self, x):
        return self.request.infer({0: x})[0].copy()

    def dequantize(self, y):
        return y


# edgekit's C API over ExecuTorch's runtime libraries (runtimes/executorch_capi.cpp), beside the
# executorch wheel on the Python path: <site>/edgekit_executorch/ and <site>/executorch/lib/.
CAPI = os.path.join("edgekit_executorch", "libexecutorch_capi.so")


@functools.lru_cache(maxsize=None)  # noqa: UP033  (functools.cache is 3.9+; boards may have 3.8)
def _executorch_capi():
    """The C API, loaded once; ImportError when it is not on the Python path or does not load."""
    import ctypes

    found = [os.path.join(p, CAPI) for p in sys.path if os.path.isfile(os.path.join(p or ".", CAPI))]
    if not found:
        raise ImportError(f"{CAPI} is not on the Python path")
    try:
        lib = ctypes.CDLL(found[0])
    except OSError as exc:
        raise ImportError(str(exc)) from exc
    text, size, handle = ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p
    lib.ek_load.argtypes, lib.ek_load.restype = [text, ctypes.c_int, text, size], handle
    dims = [handle, ctypes.POINTER(ctypes.c_int64), ctypes.c_int]
    lib.ek_input_sizes.argtypes = lib.ek_output_sizes.argtypes = dims
    lib.ek_forward.argtypes = [handle, handle, handle, text, size]
    return lib


class ExecuTorchModel:
    """A ``.pte`` in ExecuTorch's own runtime with its XNNPACK delegate, through edgekit's C API:
    the wheel's Python binding links libtorch, which a board does not need (docs/targets.md).
    XNNPACK's thread pool is global to the process; the C API sets it before loading."""

    def __init__(self, path, threads, no_xnnpack, fp16):
        import ctypes

        try:
            self._lib = _executorch_capi()
        except ImportError as exc:
            raise RunnerError(
                f"ExecuTorch is not installed on the target ({exc})",
                "pip install --no-deps executorch==1.5.1 and build edgekit's C API beside it "
                "(docs/targets.md: ExecuTorch on a Pi)",
                EXIT_NO_ENGINE,
            ) from exc
        self._err = ctypes.create_string_buffer(1024)
        self._handle = self._lib.ek_load(os.fsencode(path), threads, self._err, len(self._err))
        if not self._handle:
            raise RunnerError(
                f"executorch cannot load {os.path.basename(path)}: {self._error()}",
                "check that the file was written by the same ExecuTorch version and is not truncated",
            )
        self.version = _executorch_version()
        self.shape = self._sizes(self._lib.ek_input_sizes)
        self.output_shape = self._sizes(self._lib.ek_output_sizes)
        self.dtype = "float32"
        self.quant = None  # int8 files keep float I/O: the graph quantises inside, as in ONNX QDQ
        self.output_quant = None

    def _error(self):
        return self._err.value.decode(errors="replace")

    def _sizes(self, fn):
        import ctypes

        dims = (ctypes.c_int64 * 8)()
        return list(dims[: fn(self._handle, dims, len(dims))])

    def __call__(self, x):
        import numpy as np

        if list(x.shape) != self.shape:  # the C API reads exactly the input's size
            raise RunnerError(
                f"input shape {list(x.shape)} is not the .pte's {self.shape}",
                "ExecuTorch files have a static shape; pass batches of that shape",
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        y = np.empty(self.output_shape, dtype=np.float32)
        if self._lib.ek_forward(self._handle, x.ctypes.data, y.ctypes.data, self._err, len(self._err)):
            raise RunnerError(
                f"executorch: {self._error()}",
                "the file loaded but did not run; run it with --target local to compare",
            )
        return y

    def dequantize(self, y):
        return y


_MODELS = {
    "onnxruntime": OrtModel,
    "litert": LiteRtModel,
    "ncnn": NcnnModel,
    "openvino": OpenVinoModel,
    "executorch": ExecuTorchModel,
}


def _reason(exc):
    """The engine's own words: the first line that is not a C++ source location (OpenVINO's
    messages start with "Exception from src/...:132:")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    words = [line for line in lines if not line.startswith("Exception from ")]
    return (words or lines or [type(exc).__name__])[0]


def load(engine, path, threads, no_xnnpack, fp16=False):
    try:
        return _MODELS[engine](path, threads, no_xnnpack, fp16)
    except RunnerError:
        raise
    except Exception as exc:  # any engine's load failure is reported the same way
        raise RunnerError(
            f"{engine} cannot load {os.path.basename(path)}: {_reason(exc)}",
            "check that the file was written for this engine and is not truncated",
        ) from exc


# --- input -> model -> output --------------------------------------------------------------------


def prepare(model, x):
    """Float array in the file's layout -> the model's dtype (quantised with the file's own scale)."""
    import numpy as np

    # zip(strict=) is Python 3.10+; the runner also runs on older boards, and ndim is checked first.
    if x.ndim != len(model.shape) or any(m > 0 and m != d for m, d in zip(model.shape[1:], x.shape[1:])):  # noqa: B905
        raise RunnerError(
            f"input shape {list(x.shape)} does not match the model input {model.shape}",
            "pass an array in the file's layout (NCHW for ONNX, NHWC for TFLite)",
        )
    if model.quant is not None and model.dtype in ("int8", "uint8"):
        scale, zero = model.quant
        info = np.iinfo(model.dtype)
        x = np.clip(np.round(x / scale + zero), info.min, info.max)
    return np.ascontiguousarray(x.astype(model.dtype))


def random_input(model, seed):
    import numpy as np

    if any(d <= 0 for d in model.shape[1:]):
        raise RunnerError(
            f"the model's input shape {model.shape} is not fixed: no latency input can be made",
            "pass --input FILE.npy in the model's layout (edgekit's ncnn files record their shape)",
        )
    shape = [d if d > 0 else 1 for d in model.shape]
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def batches(model, x):
    """Fixed-batch models (every TFLite file) take one sample at a time."""
    step = model.shape[0] if model.shape and model.shape[0] > 0 else len(x)
    return [x[i : i + step] for i in range(0, len(x), step)]


def timed(fn, arg):
    start = time.perf_counter()
    fn(arg)
    return (time.perf_counter() - start) * 1e3


def run(args):
    try:
        import numpy as np
    except ImportError as exc:
        raise RunnerError(
            "numpy is not installed on the target", "pip install numpy", EXIT_NO_ENGINE
        ) from exc
    if not os.path.isfile(args.model):
        raise RunnerError(f"model file not found: {args.model}", "copy the model to the target first")
    start = time.perf_counter()
    model = load(args.engine, args.model, args.threads, args.no_xnnpack, args.fp16)
    load_ms = (time.perf_counter() - start) * 1e3

    if args.input:
        x = np.load(args.input, allow_pickle=False).astype("float32")
    else:
        x = random_input(model, args.seed)
    chunks = [prepare(model, c) for c in batches(model, x)]

    first_ms = timed(model, chunks[0])
    for _ in range(args.warmup):
        model(chunks[0])
    latencies = [timed(model, chunks[0]) for _ in range(args.runs)]

    result = {
        "ok": True,
        "engine": args.engine,
        "engine_version": model.version,
        "threads": args.threads,
        # LiteRT applies XNNPACK at run time; a .pte carries its delegation in the file.
        "xnnpack": args.engine == "executorch" or (args.engine == "litert" and not args.no_xnnpack),
        "fp16": args.fp16,
        "input": {"shape": model.shape, "dtype": model.dtype, "quant": model.quant},
        "output_quant": model.output_quant,
        "load_ms": round(load_ms, 4),
        "first_ms": round(first_ms, 4),
        "warmup": args.warmup,
        "latencies_ms": [round(t, 4) for t in latencies],
        "machine": machine(),
        "output_file": None,
    }
    if args.output:
        outputs = np.concatenate([model.dequantize(model(c)) for c in chunks])
        np.save(args.output, outputs)
        result["output_file"] = args.output
    return result


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe", action="store_true", help="print the machine and engine versions only")
    p.add_argument("--model")
    p.add_argument("--engine", choices=ENGINES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--input", help=".npy float array in the model's layout (default: seeded random)")
    p.add_argument("--output", help="write the (dequantised) outputs here as .npy")
    p.add_argument("--no-xnnpack", action="store_true", help="LiteRT: builtin kernels, no XNNPACK")
    p.add_argument(
        "--fp16", action="store_true", help="an fp16 file: ncnn runs it with fp16 storage/arithmetic"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.probe and not (args.model and args.engine):
        p.error("--model and --engine are required (or --probe)")
    if args.threads < 1 or args.runs < 1 or args.warmup < 0:
        p.error("--threads and --runs must be >= 1, --warmup >= 0")
    return args


def _fail(error, hint, code):
    print(json.dumps({"ok": False, "error": error, "hint": hint, "machine": machine()}))
    return code


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.probe:
            result = {"ok": True, "machine": machine(), "engines": _engine_versions()}
        else:
            result = run(args)
    except RunnerError as exc:
        return _fail(exc.error, exc.hint, exc.code)
    except Exception as exc:  # the caller parses stdout: never let a traceback replace the JSON
        return _fail(
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "unexpected runner failure; re-run with the same arguments locally to see more",
            EXIT_FAILED,
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
