"""What is inside a .tflite file: I/O tensors, op histogram, and which ops XNNPACK takes.

LiteRT applies XNNPACK by default; delegation replaces the ops it takes with ``DELEGATE`` nodes
appended to the node list (the original nodes stay listed). An op is on the fast path when it
lies between a delegate node's outputs and its inputs; every other op runs as a plain LiteRT
kernel, often with a layout or dtype round trip around it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

DELEGATE_OP = "DELEGATE"


def describe(path: str | Path) -> dict[str, Any]:
    """``inputs``, ``outputs``, ``ops`` (histogram) and ``xnnpack`` (coverage) of a .tflite."""
    from edgekit.console import captured_output

    with captured_output():  # LiteRT prints "Created TensorFlow Lite XNNPACK delegate" from C++
        plain = _interpreter(path, delegates=False)
        delegated = _interpreter(path, delegates=True)
        info = {
            "inputs": [_tensor(t) for t in plain.get_input_details()],
            "outputs": [_tensor(t) for t in plain.get_output_details()],
            "ops": op_histogram(plain),
            "xnnpack": xnnpack_coverage(delegated),
        }
    return info


def _interpreter(path: str | Path, delegates: bool) -> Any:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    return interpreter


def _tensor(detail: dict[str, Any]) -> dict[str, Any]:
    info = {
        "name": detail["name"],
        "shape": [int(d) for d in detail["shape_signature"]],
        "dtype": detail["dtype"].__name__,
    }
    scale, zero_point = detail["quantization"]
    if scale:  # quantised I/O: real = scale * (q - zero_point)
        info.update(scale=float(scale), zero_point=int(zero_point))
    return info


def op_histogram(interpreter: Any) -> dict[str, int]:
    """Builtin op name -> count, most frequent first (delegate nodes excluded)."""
    names = (op["op_name"] for op in interpreter._get_ops_details())
    return dict(Counter(n for n in names if n != DELEGATE_OP).most_common())


def xnnpack_coverage(interpreter: Any) -> dict[str, Any]:
    """How many ops the default delegate took, and the op names it left on plain kernels."""
    ops = interpreter._get_ops_details()
    originals = [op for op in ops if op["op_name"] != DELEGATE_OP]
    partitions = [op for op in ops if op["op_name"] == DELEGATE_OP]
    producer = {int(t): op["index"] for op in originals for t in op["outputs"]}
    by_index = {op["index"]: op for op in originals}
    covered: set[int] = set()
    for partition in partitions:
        covered |= _ops_between(partition, producer, by_index)
    left = Counter(op["op_name"] for op in originals if op["index"] not in covered)
    return {
        "partitions": len(partitions),
        "ops": len(originals),
        "delegated_ops": len(covered),
        "fully_delegated": not left,
        "not_delegated": dict(left.most_common()),
    }


def _ops_between(partition: dict[str, Any], producer: dict[int, int], by_index: dict[int, dict]) -> set[int]:
    """Original ops a delegate node replaced: walk back from its outputs to its inputs."""
    boundary = {int(t) for t in partition["inputs"]}
    stack = [int(t) for t in partition["outputs"]]
    found: set[int] = set()
    while stack:
        tensor = stack.pop()
        index = producer.get(tensor)
        if tensor in boundary or index is None or index in found:
            continue
        found.add(index)
        stack.extend(int(t) for t in by_index[index]["inputs"] if t >= 0)
    return found
