"""The artifact folder and its ``manifest.json``: the only hand-over between steps.

Layout of a folder (keys of ``files`` are the format names of :mod:`edgekit.formats`)::

    manifest.json   model, input, preprocess, files{format: {path, sha256, size, precision, layout,
                    ..., verification}}, tools, calibration, created, command
    model.pt2       torch.export program (the float reference, runs without zoo code)
    model.onnx, model_int8.onnx, model_fp32.tflite, model_fp16.tflite, model_int8.tflite, ...
    report.md, eval.json, bench.json

:class:`Manifest` and :class:`FileEntry` are the typed form; ``to_dict``/``from_dict`` are the JSON
edge (the file's field names are those of the dataclasses, a file entry's format-specific details
flattened beside its common fields).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError, UsageError

MANIFEST = "manifest.json"
SCHEMA = 1


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
def staged_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder in a sibling staging folder and swap it in only on success.

    A failure leaves an earlier good ``out_dir`` untouched. When
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
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        listed = {entry["path"] for entry in data.get("files", {}).values()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return set()
    return {name for name in listed | {"report.md", *RESULT_FILES.values()} if "/" not in name}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


ENTRY_FIELDS = ("format", "path", "sha256", "size", "precision", "layout", "verification")


@dataclass
class FileEntry:
    """One written file: what it is, its hash, how it was verified, and what its writer recorded."""

    format: str
    path: str
    sha256: str
    size: int
    precision: str
    layout: str
    verification: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # ops, opset, I/O, exactness, XNNPACK...

    @classmethod
    def of(
        cls,
        folder: str | os.PathLike[str],
        fmt: Any,
        info: dict[str, Any],
        verification: dict[str, Any],
        filename: str | None = None,
    ) -> FileEntry:
        """The entry of ``folder/fmt.filename`` (an :class:`edgekit.formats.Format`; another file name
        for files written outside an export), hashed now."""
        name = filename or fmt.filename
        path = Path(folder) / name
        size = path.stat().st_size
        companions = getattr(fmt, "companions", ())
        if companions:  # ncnn's .bin beside its .param: hashed like the file itself
            info = {**info, "companions": {c: sha256(Path(folder) / c) for c in companions}}
            size += sum((Path(folder) / c).stat().st_size for c in companions)
        return cls(
            fmt.name, name, sha256(path), size, str(fmt.precision), str(fmt.layout), verification, info
        )

    def to_dict(self) -> dict[str, Any]:
        common = {k: getattr(self, k) for k in ENTRY_FIELDS if k != "verification"}
        return {**common, **self.info, "verification": self.verification}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileEntry:
        info = {k: v for k, v in data.items() if k not in ENTRY_FIELDS}
        return cls(
            data.get("format", ""),
            data["path"],
            data["sha256"],
            data["size"],
            data.get("precision", ""),
            data.get("layout", ""),
            data.get("verification") or {},
            info,
        )


@dataclass
class Manifest:
    """What an artifact folder holds and how it was made: the hand-over between the steps."""

    model: dict[str, Any]
    input: dict[str, Any]
    preprocess: dict[str, Any]
    tools: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    files: dict[str, FileEntry] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    labels: list[str] | None = None  # class names in output order (None: unknown)
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per export step
    schema: int = SCHEMA
    created: str = field(default_factory=lambda: now())
    updated: str | None = None
    folder: str | None = None  # where it was read from or written to (not stored in the file)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "schema": self.schema,
            "created": self.created,
            "model": self.model,
            "input": self.input,
            "preprocess": self.preprocess,
            "files": {name: entry.to_dict() for name, entry in self.files.items()},
            "tools": self.tools,
            "command": self.command,
        }
        if self.calibration is not None:
            data["calibration"] = self.calibration
        if self.labels is not None:
            data["labels"] = self.labels
        if self.timings:
            data["timings"] = self.timings
        if self.updated:
            data["updated"] = self.updated
        if self.folder:
            data["folder"] = self.folder
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        return cls(
            model=data.get("model", {}),
            input=data.get("input", {}),
            preprocess=data.get("preprocess", {}),
            tools=data.get("tools", {}),
            command=data.get("command", []),
            files={name: FileEntry.from_dict(e) for name, e in data.get("files", {}).items()},
            calibration=data.get("calibration"),
            labels=data.get("labels"),
            timings=data.get("timings", {}),
            schema=data.get("schema", SCHEMA),
            created=data.get("created", ""),
            updated=data.get("updated"),
        )

    def file(self, fmt: str) -> Path:
        """The path of format ``fmt``'s file in the folder the manifest was read from."""
        if fmt not in self.files:
            have = ", ".join(self.files) or "none"
            raise ArtifactError(
                f"{self.folder} has no {fmt} artifact (it has: {have})",
                "export it, e.g. `edgekit export NAME --int8`",
            )
        return Path(self.folder or ".") / self.files[fmt].path


def read_manifest(folder: str | os.PathLike[str], check_hashes: bool = True) -> Manifest:
    """Read and validate ``folder/manifest.json``; with ``check_hashes`` every file's sha256 too."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(
            f"{folder} has no {MANIFEST}", "create the folder with `edgekit export NAME --out DIR`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{path} is not valid JSON ({exc})", "re-run `edgekit export` to rebuild it"
        ) from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or "files" not in data:
        raise ArtifactError(f"{path} is not an edgekit manifest (schema {SCHEMA})", "re-run `edgekit export`")
    try:
        manifest = Manifest.from_dict(data)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(
            f"{path} is not a valid edgekit manifest ({exc})", "re-run `edgekit export`"
        ) from exc
    manifest.folder = str(folder)
    stale = stale_files(folder, manifest) if check_hashes else []
    if stale:
        names = ", ".join(f"{fmt} ({manifest.files[fmt].path})" for fmt in stale)
        raise ArtifactError(
            f"{folder}: {names} missing or not matching the sha256 in the manifest (corrupt or edited)",
            "re-run `edgekit export` for this folder",
        )
    return manifest


def write_manifest(folder: str | os.PathLike[str], manifest: Manifest) -> Path:
    manifest.updated = now()
    data = manifest.to_dict()
    data.pop("folder", None)
    return write_json(Path(folder) / MANIFEST, data)


RESULT_FILES = {"eval": "eval.json", "bench": "bench.json", "peers": "peers.json"}


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


def stale_files(folder: str | os.PathLike[str], manifest: Manifest) -> list[str]:
    """Formats whose file is missing or no longer matches its sha256."""
    stale = []
    for fmt, entry in manifest.files.items():
        expected = {entry.path: entry.sha256, **entry.info.get("companions", {})}
        for name, digest in expected.items():
            file = Path(folder) / name
            if not file.is_file() or sha256(file) != digest:
                stale.append(fmt)
                break
    return stale
