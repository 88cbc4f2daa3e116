"""The artifact folder and its ``manifest.json``: the only hand-over between steps.

Layout of a folder (keys of ``manifest["files"]`` are the format names used everywhere:
``torch``, ``onnx-fp32``, ``onnx-int8``, ``tflite-fp32``, ``tflite-fp16``, ``tflite-int8``)::

    manifest.json   model, input, preprocess, files{format: {path, sha256, size, layout, ...}},
                    tools, calibration, results{verification, eval, bench}, created, command
    model.pt2       torch.export program (the float reference, runs without zoo code)
    model.onnx, model_int8.onnx, model_fp32.tflite, model_fp16.tflite, model_int8.tflite
    report.md

Writes are atomic: files go to a temp name and are renamed; a whole export is built in a staging
folder and swapped in only when every step (verification included) passed. Later steps never
rewrite the manifest: ``edgekit eval`` / ``bench`` store their results beside it (``eval.json``,
``bench.json``), and only when the folder is writable, so a read-only folder can be measured.
Staging and temp folders carry the process id: a later run removes those of dead processes
(``kill -9`` leaves them behind).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError, UsageError

MANIFEST = "manifest.json"
SCHEMA = 1
FORMATS = ("torch", "onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-fp16", "tflite-int8")


def select_formats(present: list[str], wanted: list[str] | None) -> list[str]:
    """The formats of ``present`` that ``wanted`` names: exact names (``onnx-int8``), families
    (``onnx``) or precisions (``int8``); all of them when nothing is named."""
    if not wanted:
        return list(present)
    known = {*FORMATS, *(f.split("-")[0] for f in FORMATS), *(f.split("-")[-1] for f in FORMATS if "-" in f)}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(
            f"unknown format {', '.join(unknown)}",
            "name formats (onnx-int8), families (onnx) or precisions (int8)",
        )
    chosen = [f for f in present if f in wanted or f.split("-")[0] in wanted or f.split("-")[-1] in wanted]
    if not chosen:
        raise UsageError(
            f"none of {', '.join(wanted)} is in this folder (it has {', '.join(present)})",
            "pick from those, or export the missing formats",
        )
    return chosen


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
    return write_text(path, dumps(obj) + "\n")


def dumps(obj: Any) -> str:
    """Strict JSON: NaN and infinities (an SQNR of identical outputs) become null, which every
    parser reads; the tables say why a figure is missing."""
    return json.dumps(finite(obj), indent=2, sort_keys=False, default=_jsonable, allow_nan=False)


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (recursively)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, str):
        return finite(obj.tolist())
    return obj


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


STAGING = re.compile(r"^\.(?P<name>.+)\.(?:staging|old)-(?P<pid>\d+)(?:-.*)?$")
MIN_FREE_BYTES = 64 << 20  # converters abort natively on a full disk: refuse to start below this


def check_path(path: str | os.PathLike[str], what: str) -> Path:
    """A path the converters can take: it must encode as UTF-8 (their C++ layers abort otherwise)."""
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        shown = raw.decode("utf-8", "backslashreplace")
        raise UsageError(
            f"{what} {shown!r} is not valid UTF-8",
            "rename it (or choose another path) using UTF-8 characters",
        ) from exc
    return Path(path)


def check_writable(folder: Path, need_bytes: int = MIN_FREE_BYTES) -> None:
    """Fail before the work when ``folder`` (or its nearest existing parent) is not writable or full."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ArtifactError(f"{probe} is a file, not a folder", "choose a path inside a folder")
    if not os.access(probe, os.W_OK):
        raise ArtifactError(f"{probe} is not writable", "choose a writable --out folder")
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise ArtifactError(
            f"only {free / 2**20:.1f} MB free at {probe} "
            f"(an export needs at least {need_bytes / 2**20:.0f} MB)",
            "free some space or choose another --out",
        )


TEMP = re.compile(r"^edgekit-(?P<pid>\d+)-")


def sweep_stale(parent: Path, pattern: re.Pattern[str] = STAGING) -> list[Path]:
    """Remove the folders in ``parent`` named by ``pattern`` whose process no longer runs."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def process_tempdir() -> Iterator[Path]:
    """One temp folder for this process (``edgekit-<pid>-...``): every temp file of every step,
    and of the processes it starts, goes inside and leaves with it; those of killed runs are swept."""
    base = Path(tempfile.gettempdir())
    sweep_stale(base, TEMP)
    root = Path(tempfile.mkdtemp(prefix=f"edgekit-{os.getpid()}-", dir=base))
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir, os.environ["TMPDIR"] = str(root), str(root)
    try:
        yield root
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike[str], keep_existing: bool = False) -> Iterator[Path]:
    """Build a folder in a sibling staging folder and swap it in only on success.

    A failure leaves an earlier good ``out_dir`` untouched. With ``keep_existing`` the staging
    folder starts as a copy of ``out_dir`` (for steps that add files to a folder). When
    ``out_dir`` is a mount point (``docker run -v host:/out``), which cannot be renamed, the
    staging folder is made inside it and its files are moved in one by one at the end.
    """
    out = check_path(out_dir, "--out")
    inside = out.is_dir() and os.path.ismount(out)
    where = out if inside else out.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        sweep_stale(where)
        check_writable(where)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}-", dir=where))
        os.chmod(stage, 0o777 & ~_umask())
    except OSError as exc:
        raise ArtifactError(
            f"cannot write to {where}: {exc.strerror}", "choose a writable --out folder"
        ) from exc
    try:
        if keep_existing and out.is_dir():
            shutil.copytree(out, stage, dirs_exist_ok=True, ignore=shutil.ignore_patterns(stage.name))
        yield stage
        _swap_in(stage, out, inside)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ArtifactError(
                f"no space left on the device of {out} while writing it",
                "free some space or choose another --out",
            ) from exc
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_in(stage: Path, out: Path, inside: bool) -> None:
    if inside:  # a mount point: replace its files, each one atomically, the manifest last
        names = sorted(p.name for p in stage.iterdir())
        for name in _previous_files(out) - set(names):
            (out / name).unlink(missing_ok=True)  # the earlier export's files this one did not write
        for name in sorted(names, key=lambda n: n == MANIFEST):
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(stage / name, target)
        return
    backup = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        try:
            os.replace(out, backup)
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.EXDEV, errno.EPERM, errno.EACCES):
                raise ArtifactError(
                    f"cannot replace {out}: {exc.strerror}",
                    f"write inside it instead: --out {out / out.name}, or remove it first",
                ) from exc
            raise
    os.replace(stage, out)
    shutil.rmtree(backup, ignore_errors=True)


def _previous_files(folder: Path) -> set[str]:
    """The files an earlier export listed in ``folder``'s manifest (and its own outputs)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        listed = {entry["path"] for entry in manifest.get("files", {}).values()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return set()
    return {name for name in listed | {"report.md", *RESULT_FILES.values()} if "/" not in name}


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
    stale = stale_files(folder, manifest) if check_hashes else []
    if stale:
        names = ", ".join(f"{fmt} ({manifest['files'][fmt]['path']})" for fmt in stale)
        raise ArtifactError(
            f"{folder}: {names} missing or not matching the sha256 in the manifest (corrupt or edited)",
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


RESULT_FILES = {"eval": "eval.json", "bench": "bench.json"}


def record_result(folder: str | os.PathLike[str], key: str, result: Any) -> Path | None:
    """Store a later step's result (eval, bench) beside the manifest as ``<key>.json``.

    Returns the path written, or None when the folder is read-only (the caller says so): reading
    an artifact never needs writing it."""
    path = Path(folder) / RESULT_FILES[key]
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return None
    try:
        return write_json(path, result)
    except OSError:
        return None


def read_results(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The stored eval/bench results of a folder ({} for those never run)."""
    found = {}
    for key, name in RESULT_FILES.items():
        path = Path(folder) / name
        if path.is_file():
            try:
                found[key] = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
    return found


def stale_files(folder: str | os.PathLike[str], manifest: dict[str, Any]) -> list[str]:
    """Formats whose file is missing or no longer matches its sha256."""
    stale = []
    for fmt, entry in manifest["files"].items():
        file = Path(folder) / entry["path"]
        if not file.is_file() or sha256(file) != entry["sha256"]:
            stale.append(fmt)
    return stale
