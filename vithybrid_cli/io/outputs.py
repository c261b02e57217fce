"""Output formats: the record schema, one table of writers (records and embeddings), atomic files.

This module knows formats, not runs: a run's results reach it from the journal (journal.py), in
input order, or straight from the runner when records stream to stdout.

Records
    success: ``{"path": str, "top_k": [{"index": int, "label": str, "score": float}, ...]}``
    failure: ``{"path": str, "error": "one line"}``

The writer table ``WRITERS`` maps (kind, format) to a class; ``SUFFIXES`` maps file suffixes to
formats. Every writer is written all-or-nothing to a file (a temp file beside it, renamed by
``close()``, removed by ``abort()``) or, for records, to a stream:

    records:     Writer(target: str | TextIO, *, top_k: int = 5, decision: bool = False)
                 write(record)
    embeddings:  Writer(path: str, settings: dict | None = None)    write(path, vector)
    both:        close() finishes the output; abort() leaves the target as it was

To add a format, write such a class and register it in the table at the end of this module,
as Parquet (parquet.py, imported only when used: pyarrow is an optional extra) is.

Paths may hold lone surrogates (undecodable file names). Every string written passes through
`safe_text` first, so no writer fails on encoding; the same function gives the key a path is
known by when resuming.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, BinaryIO, Protocol, TextIO

import numpy as np

SURROGATE = re.compile("[\ud800-\udfff]")
CHUNK = 8 << 20  # bytes copied per read; bounds memory when finishing large files


# --------------------------------------------------------------------------- text


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    # U+DC80..U+DCFF are bytes smuggled in by surrogateescape: show the original byte, exactly
    # as `.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")` would.
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """`text` with lone surrogates replaced by backslash escapes, so it encodes as UTF-8."""
    if not SURROGATE.search(text):
        return text
    return SURROGATE.sub(_escape_surrogate, text)


def json_safe(value: Any) -> Any:
    """A JSON-ready copy: surrogates escaped, numpy scalars unwrapped, NaN/inf -> None."""
    if isinstance(value, np.floating):
        value = float(str(value))  # shortest repr at the scalar's precision: float32 0.9 -> 0.9
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {safe_text(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# --------------------------------------------------------------------------- the record schema


def record_of(path: str, payload: Any = None, error: str | None = None) -> dict[str, Any]:
    """The record of one input: its error, or its payload.

    A classify payload, [(index, label, score), ...], becomes ``top_k``; a task whose payload is
    a dict has it merged into the record as is.
    """
    key = safe_text(os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path))
    if error is not None:
        return {"path": key, "error": " ".join(str(error).splitlines())}
    if isinstance(payload, dict):
        return {"path": key, **json_safe(payload)}
    top_k = [{"index": int(i), "label": label, "score": score} for i, label, score in payload]
    return {"path": key, "top_k": json_safe(top_k)}


def csv_header(top_k: int, decision: bool = False) -> list[str]:
    """CSV columns: ``path, label_1, score_1, index_1, ..., label_k, score_k, index_k, error``.

    With `decision` (classify --head / --min-score), ``label, score`` follow ``path``: the
    record's decided label (empty: abstain) and its best score.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    ranks = [[f"label_{r}", f"score_{r}", f"index_{r}"] for r in range(1, top_k + 1)]
    decided = ["label", "score"] if decision else []
    return ["path", *decided, *(name for group in ranks for name in group), "error"]


def csv_row(record: dict[str, Any], top_k: int, decision: bool = False) -> list[str]:
    predictions = record.get("top_k") or []
    if len(predictions) > top_k:
        raise ValueError(f"record has {len(predictions)} predictions but the CSV has {top_k}")
    cells = [record["path"]]
    if decision:
        score = record.get("score")
        cells += [record.get("label") or "", "" if score is None else repr(float(score))]
    for entry in predictions:
        score = entry.get("score")
        cells += [entry.get("label", ""), "" if score is None else repr(float(score))]
        cells.append(str(entry.get("index", "")))
    cells += [""] * (3 * (top_k - len(predictions)))
    cells.append(record.get("error") or "")
    return cells


# --------------------------------------------------------------------------- atomic files


def new_file_mode() -> int:
    """Permissions an ordinary new file gets (temp files are created 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


class AtomicFile:
    """A temp file beside `path` that replaces `path` on commit() and vanishes on discard()."""

    def __init__(self, path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> None:
        self.path = os.path.abspath(os.fspath(path))
        directory, name = os.path.split(self.path)
        if "b" not in mode:
            open_kwargs.setdefault("encoding", "utf-8")
        # The handle outlives __init__ (commit/discard close it), hence no `with`.
        try:
            self.file: IO[Any] = tempfile.NamedTemporaryFile(  # noqa: SIM115
                mode, dir=directory, prefix=f".{name}.", suffix=".tmp", delete=False, **open_kwargs
            )
        except OSError as error:  # the temp file is ours: name the user's file, and its folder
            message = f"{error.strerror} (cannot create files in {os.path.dirname(path) or '.'})"
            raise type(error)(error.errno, message, os.fspath(path)) from error
        self.done = False

    def commit(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            try:
                mode = stat.S_IMODE(os.stat(self.path).st_mode)
            except FileNotFoundError:
                mode = new_file_mode()
            os.chmod(self.file.name, mode)
            os.replace(self.file.name, self.path)
        except BaseException:
            self.remove()
            raise
        with contextlib.suppress(OSError):  # makes the rename durable, where directories open
            fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self) -> None:
        if not self.done:
            self.done = True
            self.remove()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file.name)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Write `path` all-or-nothing: a temp file in the same folder, renamed on success."""
    target = AtomicFile(path, mode, **open_kwargs)
    try:
        yield target.file
    except BaseException:
        target.discard()
        raise
    target.commit()


@contextmanager
def naming(path: str) -> Iterator[None]:
    """OSErrors without a file name (a full disk on write) get `path`, the file the user named."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            raise type(error)(error.errno, error.strerror, path) from error
        raise


# --------------------------------------------------------------------------- record writers


class RecordWriter(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def ascii_only(stream: TextIO) -> bool:
    """A non-UTF stdout (a Latin-1 locale) cannot take every label; JSON can escape instead."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return not encoding.startswith("utf")


class TextTarget:
    """A file written atomically, or a stream written as it comes (flushed per write)."""

    def __init__(self, target: str | TextIO, newline: str) -> None:
        self.atomic = AtomicFile(target, "w", newline=newline) if isinstance(target, str) else None
        self.file: TextIO = self.atomic.file if self.atomic else target  # type: ignore[assignment]
        self.ascii = self.atomic is None and ascii_only(self.file)

    def write(self, text: str) -> None:
        self.file.write(text)
        if self.atomic is None:
            self.file.flush()

    def close(self) -> None:
        if self.atomic is not None:
            self.atomic.commit()
        else:
            self.file.flush()

    def abort(self) -> None:
        if self.atomic is not None:
            self.atomic.discard()


class JsonlWriter:
    """One JSON object per line."""

    def __init__(self, target: str | TextIO, **options: Any) -> None:
        self.out = TextTarget(target, "\n")

    def write(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, ensure_ascii=self.out.ascii, allow_nan=False) + "\n")

    def close(self) -> None:
        self.out.close()

    def abort(self) -> None:
        self.out.abort()


class JsonWriter:
    """One JSON array, a record per line; to a stream only once whole (spooled: memory flat)."""

    def __init__(self, target: str | TextIO, **options: Any) -> None:
        self.stream = None if isinstance(target, str) else target
        if self.stream is not None:  # spooled: an interrupted run prints nothing
            target = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self.out = TextTarget(target, "\n")
        self.ascii = self.stream is not None and ascii_only(self.stream)
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=self.ascii, allow_nan=False)
        self.out.file.write(("[\n" if self.count == 0 else ",\n") + line)
        self.count += 1

    def close(self) -> None:
        self.out.file.write("\n]\n" if self.count else "[]\n")
        if self.stream is None:
            self.out.close()
            return
        self.out.file.seek(0)
        shutil.copyfileobj(self.out.file, self.stream)
        self.out.file.close()
        self.stream.flush()

    def abort(self) -> None:
        self.out.abort()


class CsvWriter:
    """A header row (see csv_header), then one row per record."""

    def __init__(
        self, target: str | TextIO, *, top_k: int = 5, decision: bool = False, **options: Any
    ) -> None:
        self.top_k, self.decision = top_k, decision
        self.out = TextTarget(target, "")
        self.rows = csv.writer(self.out.file, lineterminator="\n")
        self.rows.writerow(csv_header(top_k, decision))

    def write(self, record: dict[str, Any]) -> None:
        self.rows.writerow(csv_row(record, self.top_k, self.decision))
        if self.out.atomic is None:
            self.out.file.flush()

    def close(self) -> None:
        self.out.close()

    def abort(self) -> None:
        self.out.abort()


# --------------------------------------------------------------------------- embedding writers

NPY_HEADER_BYTES = 256  # room for any (N, T, hidden) shape, so the count is filled in at close


def npy_header(shape: tuple[int, ...], descr: str = "<f4", size: int = NPY_HEADER_BYTES) -> bytes:
    """A .npy (version 1.0) header of exactly `size` bytes."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    length = size - 10  # magic (6) + version (2) + header length (2)
    if len(text) + 1 > length:
        raise ValueError(f"shape {shape} does not fit a {size}-byte header")
    return (
        b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + (text.ljust(length - 1) + "\n").encode()
    )


def sidecar_path(path: str) -> str:
    """Where a .npy output's paths go: NAME.paths.txt beside NAME.npy."""
    return os.path.splitext(path)[0] + ".paths.txt"


def settings_path(path: str) -> str:
    """Where an .npy / .npz output's settings go: NAME.settings.json beside it."""
    return os.path.splitext(path)[0] + ".settings.json"


def write_settings(path: str, settings: dict[str, Any] | None) -> AtomicFile | None:
    """NAME.settings.json beside `path` (the journal's settings: what shaped the vectors), to
    commit together with the vectors; None without settings."""
    if settings is None:
        return None
    target = AtomicFile(settings_path(path), "w", newline="\n")
    target.file.write(json.dumps(json_safe(settings), indent=1, sort_keys=True) + "\n")
    return target


def path_line(key: str) -> str:
    """One sidecar line: newline and CR inside a path written as \\n and \\r."""
    return key.replace("\n", "\\n").replace("\r", "\\r") + "\n"


class EmbeddingWriter(Protocol):
    def write(self, path: str, vector: np.ndarray) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class Rows:
    """float32 rows of one fixed shape (set by the first), streamed to a binary file."""

    def __init__(self, file: BinaryIO) -> None:
        self.file, self.shape, self.count = file, None, 0

    def write(self, vector: np.ndarray) -> None:
        data = np.ascontiguousarray(vector, dtype="<f4")
        shape = tuple(int(n) for n in data.shape)
        if self.shape is None:
            if math.prod(shape) == 0:
                raise ValueError(f"rows of shape {shape} hold no values")
            self.shape = shape
        elif shape != self.shape:
            raise ValueError(f"row shape {shape} differs from earlier rows {self.shape}")
        self.file.write(memoryview(data).cast("B"))
        self.count += 1

    @property
    def array_shape(self) -> tuple[int, ...]:
        return (0,) if self.shape is None else (self.count, *self.shape)


class NpyWriter:
    """NAME.npy, float32 (N, *row shape), with the paths one per line in NAME.paths.txt (and
    the settings that made them, when given, in NAME.settings.json)."""

    def __init__(self, path: str, settings: dict[str, Any] | None = None, **options: Any) -> None:
        self.settings = write_settings(path, settings)
        self.target = AtomicFile(path, "wb")
        self.target.file.write(b"\0" * NPY_HEADER_BYTES)
        self.rows = Rows(self.target.file)
        self.paths = AtomicFile(sidecar_path(path), "w", newline="\n")

    def write(self, path: str, vector: np.ndarray) -> None:
        self.rows.write(vector)
        self.paths.file.write(path_line(safe_text(path)))

    def close(self) -> None:
        self.target.file.seek(0)
        self.target.file.write(npy_header(self.rows.array_shape))
        if self.settings is not None:
            self.settings.commit()
        self.target.commit()
        self.paths.commit()

    def abort(self) -> None:
        if self.settings is not None:
            self.settings.discard()
        self.target.discard()
        self.paths.discard()


class NpzWriter:
    """NAME.npz with arrays ``embeddings`` (float32) and ``paths`` (unicode), rows in order;
    the settings, when given, in NAME.settings.json."""

    def __init__(self, path: str, settings: dict[str, Any] | None = None, **options: Any) -> None:
        self.path = path
        self.settings = write_settings(path, settings)
        directory = os.path.dirname(os.path.abspath(path))
        # Spooled beside the target (not in /tmp, which may be small): the zip needs the count
        # and the longest path before it can stream either array.
        self.rows = Rows(tempfile.TemporaryFile(dir=directory))  # noqa: SIM115
        self.keys = tempfile.TemporaryFile("w+", encoding="utf-8", dir=directory)  # noqa: SIM115
        self.width = 1

    def write(self, path: str, vector: np.ndarray) -> None:
        self.rows.write(vector)
        key = safe_text(path)
        self.keys.write(json.dumps(key) + "\n")
        self.width = max(self.width, len(key))

    def close(self) -> None:
        self.rows.file.seek(0)
        self.keys.seek(0)
        with atomic_write(self.path, "wb") as out, zipfile.ZipFile(out, "w") as archive:
            with archive.open("embeddings.npy", "w", force_zip64=True) as member:
                member.write(npy_header(self.rows.array_shape))
                shutil.copyfileobj(self.rows.file, member, CHUNK)
            with archive.open("paths.npy", "w", force_zip64=True) as member:
                member.write(npy_header((self.rows.count,), f"<U{self.width}"))
                for line in self.keys:  # fixed-width UTF-32, zero padded
                    member.write(json.loads(line).ljust(self.width, "\0").encode("utf-32-le"))
            if self.settings is not None:
                self.settings.commit()
                self.settings = None
        self.abort()

    def abort(self) -> None:
        if self.settings is not None:
            self.settings.discard()
        self.rows.file.close()
        self.keys.close()


# --------------------------------------------------------------------------- the table


def parquet_records(target: str | BinaryIO, **options: Any) -> Any:
    from .parquet import ParquetRecordWriter

    return ParquetRecordWriter(target, **options)


def parquet_embeddings(target: str | BinaryIO, **options: Any) -> Any:
    from .parquet import ParquetEmbeddingWriter

    return ParquetEmbeddingWriter(target, **options)


WRITERS: dict[tuple[str, str], Callable[..., Any]] = {
    ("records", "jsonl"): JsonlWriter,
    ("records", "json"): JsonWriter,
    ("records", "csv"): CsvWriter,
    ("records", "parquet"): parquet_records,
    ("embeddings", "npy"): NpyWriter,
    ("embeddings", "npz"): NpzWriter,
    ("embeddings", "parquet"): parquet_embeddings,
}
SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".npy": "npy",
    ".npz": "npz",
    ".parquet": "parquet",
}


# Formats whose writer needs an optional package: format -> (module, extra, package).
WRITER_EXTRAS = {"parquet": ("pyarrow.parquet", "parquet", "pyarrow")}


def require_writer(fmt: str) -> None:
    """MissingExtra (the one-line install hint) now, not after the run, when `fmt`'s writer
    needs a package that is not installed."""
    if fmt in WRITER_EXTRAS:
        from ..data.sources import require

        require(*WRITER_EXTRAS[fmt])


def format_from_path(path: str | None) -> str | None:
    """The format a file name asks for (by its suffix), or None."""
    if not path:
        return None
    return SUFFIXES.get(os.path.splitext(path)[1].lower())


def formats(kind: str) -> list[str]:
    """The formats registered for `kind` ("records" or "embeddings")."""
    return [fmt for (k, fmt) in WRITERS if k == kind]


def open_writer(kind: str, fmt: str, target: str | TextIO, **options: Any) -> Any:
    """A writer for `kind` in format `fmt` to file `target` (or a stream, for records)."""
    try:
        writer = WRITERS[kind, fmt]
    except KeyError:
        names = ", ".join(f".{f}" for f in formats(kind))
        raise ValueError(f"{kind} go to {names}, not {fmt or 'this file type'}") from None
    return writer(target, **options)
