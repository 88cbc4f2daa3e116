"""The artifact folder and its ``manifest.json``: the only hand-over between steps.

Layout of a folder (keys of ``manifest["files"]`` are the format names used everywhere:
``torch``, ``onnx-fp32``, ``onnx-int8``, ``tflite-fp32``, ``tflite-fp16``, ``tflite-int8``)::

    manifest.json   model, input, preprocess, files{format: {path, sha256, size, layout, ...}},
                    tools, calibration, results{verification, eval, bench}, created, command
    model.pt2       torch.export program (the float reference, runs without zoo code)
    model.onnx, model_int8.onnx, model_fp32.tflite, model_fp16.tflite, model_int8.tflite
    report.md

Writes are atomic: files go to a temp name and are renamed; a whole export is built in a staging
folder and swapped in only when every step (verification included) passed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError

MANIFEST = "manifest.json"
SCHEMA = 1
FORMATS = ("torch", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-int8")


def sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp's 0600 would make artifacts private
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike[str], keep_existing: bool = False) -> Iterator[Path]:
    """Build a folder in a sibling staging folder and swap it in only on success.

    A failure leaves an earlier good ``out_dir`` untouched. With ``keep_existing`` the staging
    folder starts as a copy of ``out_dir`` (for steps that add files to a folder).
    """
    out = Path(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
        os.chmod(stage, 0o777 & ~_umask())
    except OSError as exc:
        raise ArtifactError(
            f"cannot write to {out.parent}: {exc.strerror}", "choose a writable --out folder"
        ) from exc
    try:
        if keep_existing and out.is_dir():
            shutil.copytree(out, stage, dirs_exist_ok=True)
        yield stage
        backup = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            os.replace(out, backup)
        os.replace(stage, out)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_entry(folder: str | os.PathLike[str], filename: str, **info: Any) -> dict[str, Any]:
    """A ``files`` entry: path (relative), sha256, size, plus format-specific ``info``."""
    path = Path(folder) / filename
    return {"path": filename, "sha256": sha256(path), "size": path.stat().st_size, **info}


def new_manifest(**sections: Any) -> dict[str, Any]:
    return {"schema": SCHEMA, "created": now(), "files": {}, "results": {}, **sections}


def read_manifest(folder: str | os.PathLike[str], check_hashes: bool = True) -> dict[str, Any]:
    """Read and validate ``folder/manifest.json``; with ``check_hashes`` every file's sha256 too."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{folder} has no {MANIFEST}", "create the folder with `edgekit export NAME --out DIR`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{path} is not valid JSON ({exc})", "re-run `edgekit export` to rebuild it"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA or "files" not in manifest:
        raise ArtifactError(f"{path} is not an edgekit manifest (schema {SCHEMA})", "re-run `edgekit export`")
    if check_hashes:
        for fmt, entry in manifest["files"].items():
            file = folder / entry["path"]
            if not file.is_file():
                raise ArtifactError(f"{fmt}: {file} is missing", "re-run `edgekit export` for this folder")
            if sha256(file) != entry["sha256"]:
                raise ArtifactError(
                    f"{fmt}: {file} does not match its sha256 in the manifest (corrupt or edited)",
                    "re-run `edgekit export` for this folder",
                )
    return manifest


def write_manifest(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    manifest["updated"] = now()
    return write_json(Path(folder) / MANIFEST, manifest)


def model_path(folder: str | os.PathLike[str], manifest: dict[str, Any], fmt: str) -> Path:
    try:
        return Path(folder) / manifest["files"][fmt]["path"]
    except KeyError as exc:
        have = ", ".join(manifest["files"]) or "none"
        raise ArtifactError(
            f"{folder} has no {fmt} artifact (it has: {have})", "export it, e.g. `edgekit export NAME --int8`"
        ) from exc


def record_result(folder: str | os.PathLike[str], key: str, result: Any) -> None:
    """Store a later step's result (eval, bench...) in the manifest, atomically."""
    manifest = read_manifest(folder, check_hashes=False)
    manifest.setdefault("results", {})[key] = result
    write_manifest(folder, manifest)
