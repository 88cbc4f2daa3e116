"""A user's trained weights into a zoo network: what training code saves, read safely.

    state = read_checkpoint("runs/best.pt")      # tensors only (torch.load(weights_only=True))
    classes = classifier_classes(state)          # from the last layer's weight
    load_into(model, state, "runs/best.pt")      # strict: every tensor, every shape

Accepted: a bare ``state_dict``; a dict holding it under ``state_dict``, ``model``,
``model_state_dict``, ``ema``, ``model_ema`` or ``state_dict_ema`` (nested one level too, as EMA
helpers save ``{"ema": {"module": ...}}``); keys prefixed ``module.`` (DataParallel/DDP) or
``_orig_mod.`` (torch.compile). Nothing else is unpickled: a file that needs the training code's
classes is refused with the name of the class it asked for.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from edgekit.errors import WeightsError

STATE_KEYS = ("state_dict", "model_state_dict", "model", "ema", "model_ema", "state_dict_ema", "module")
PREFIXES = ("module.", "_orig_mod.")


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The state dict inside a checkpoint file (tensors only), prefixes stripped."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"--weights {path} does not exist", "pass the .pt/.pth file your training saved")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise WeightsError(
                f"{path} is not a PyTorch checkpoint ({exc})", "pass the file torch.save wrote"
            ) from exc
        needed = re.search(r"GLOBAL ([\w.]+)", str(exc)) or re.search(r"global ([\w.]+)", str(exc))
        what = f" ({needed.group(1)})" if needed else ""
        raise WeightsError(
            f"{path} holds pickled Python objects{what}, which edgekit does not unpickle",
            "save the weights alone: torch.save(model.state_dict(), path)",
        ) from exc
    except Exception as exc:  # torch.load fails in many ways on what is not a checkpoint
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint (torch.load: {type(exc).__name__}: {str(exc)[:120]})",
            "pass the file torch.save wrote",
        ) from exc
    state = _find_state(raw)
    if state is None:
        keys = ", ".join(list(raw)[:6]) if isinstance(raw, dict) else type(raw).__name__
        raise WeightsError(
            f"{path} holds no state dict (found: {keys})",
            f"save model.state_dict(), alone or under one of {', '.join(STATE_KEYS)}",
        )
    return strip_prefixes(state)


def _find_state(obj: Any, depth: int = 0) -> dict[str, Any] | None:
    """A dict of tensors: ``obj`` itself, or under one of STATE_KEYS (two levels at most)."""
    import torch

    if not isinstance(obj, dict) or depth > 2:
        return None
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in STATE_KEYS:
        found = _find_state(obj.get(key), depth + 1)
        if found is not None:
            return found
    return None


def strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Drop the wrappers' prefixes (``module.`` of DDP, ``_orig_mod.`` of torch.compile)."""
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def classifier_classes(state: dict[str, Any]) -> int | None:
    """The number of classes the checkpoint's last layer produces (its weight's first dimension)."""
    weights = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) in (2, 4)]
    return int(weights[-1].shape[0]) if weights else None


def load_into(model: Any, state: dict[str, Any], source: str | os.PathLike[str]) -> None:
    """``model.load_state_dict(state, strict=True)``, its failure said in one line."""
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{source}: {key} is {list(tensor.shape)} in the checkpoint but {list(expected[key].shape)} "
                "in the network built",
                "build the network the checkpoint was trained as (--width, --groups, --num-classes)",
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
        raise WeightsError(
            f"{source} does not fit the network: {'; '.join(parts)}",
            "export the zoo network it was trained from, with the same --width/--groups",
        )
    model.load_state_dict(state, strict=True)
