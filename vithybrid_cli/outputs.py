"""Result writers (JSONL, JSON, CSV), a streaming .npy/.npz embedding writer, resume, atomic writes.

This module knows nothing about models: it takes plain records and numpy arrays.

Records
    success: ``{"path": str, "top_k": [{"index": int, "label": str, "score": float}, ...]}``
    failure: ``{"path": str, "error": "one line"}``

Paths may hold lone surrogates (undecodable file names read with ``surrogateescape``). Every string
written is passed through :func:`safe_text` first, so no writer ever fails on encoding. The same
function gives the *key* under which a path appears in :func:`load_done` and
``EmbeddingWriter.done``: test ``safe_text(path) in done``.

Resume flow (``--resume``) for records::

    done = prepare_resume(out, fmt)            # repair a torn file, then read finished paths
    todo = [p for p in inputs if safe_text(p) not in done]
    with open_record_writer(fmt, out, resume=True, top_k=k) as writer:
        ...                                    # appends after the kept records
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, BinaryIO, TextIO

import numpy as np

log = logging.getLogger(__name__)

FORMATS = ("table", "json", "jsonl", "csv")
RESUMABLE_FORMATS = ("jsonl", "csv")
_SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}
_CHUNK = 8 << 20  # bytes copied per read when finalizing; bounds memory
_SURROGATE = re.compile("[\ud800-\udfff]")

__all__ = [
    "FORMATS",
    "RESUMABLE_FORMATS",
    "EmbeddingWriter",
    "RecordWriter",
    "atomic_write",
    "csv_header",
    "format_from_path",
    "load_done",
    "open_record_writer",
    "prepare_resume",
    "repair_csv",
    "repair_jsonl",
    "safe_text",
]


# --------------------------------------------------------------------------- text and paths


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    # U+DC80..U+DCFF are bytes smuggled in by surrogateescape: show the original byte, exactly
    # as `.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")` would.
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"


def safe_text(s: str) -> str:
    """Return `s` with lone surrogates replaced by backslash escapes, so it encodes as UTF-8.

    Strings without surrogates come back unchanged.
    """
    if not _SURROGATE.search(s):
        return s
    return _SURROGATE.sub(_escape_surrogate, s)


def _one_line(s: str) -> str:
    return " ".join(s.splitlines()) if ("\n" in s or "\r" in s) else s


def _sanitize(obj: Any) -> Any:
    """JSON-safe copy: surrogates escaped, numpy scalars unwrapped, non-finite floats -> None."""
    if isinstance(obj, np.floating):
        obj = float(str(obj))  # shortest repr at the scalar's precision: float32 0.9 -> 0.9
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None  # NaN/Infinity are not valid JSON
    if isinstance(obj, dict):
        return {safe_text(str(k)): _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    return obj


def _clean_record(record: dict[str, Any]) -> dict[str, Any]:
    if "path" not in record:
        raise ValueError(f"record without a 'path': {record!r}")
    clean = _sanitize(record)
    path = record["path"]
    clean["path"] = safe_text(os.fsdecode(path) if isinstance(path, bytes) else os.fspath(path))
    if "error" in clean:
        clean["error"] = _one_line(str(clean["error"]))
    return clean


def format_from_path(path: str | None) -> str | None:
    """Guess the output format from a file name: .jsonl/.ndjson, .json, .csv; else None."""
    if not path:
        return None
    return _SUFFIX_FORMATS.get(os.path.splitext(path)[1].lower())


# --------------------------------------------------------------------------- atomic files

_default_mode: int | None = None


def _new_file_mode() -> int:
    """Permissions an ordinary new file would get (temp files are created 0600)."""
    global _default_mode
    if _default_mode is None:
        umask = os.umask(0o022)
        os.umask(umask)
        _default_mode = 0o666 & ~umask
    return _default_mode


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows opening a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _AtomicFile:
    """A temp file beside `path` that replaces `path` on commit() and vanishes on discard()."""

    def __init__(self, path: str, mode: str = "w", **open_kwargs: Any) -> None:
        self.path = os.path.abspath(path)
        directory, name = os.path.split(self.path)
        if "b" not in mode:
            open_kwargs.setdefault("encoding", "utf-8")
        # The handle outlives __init__ (commit/discard close it), hence no `with`.
        self.file: IO[Any] = tempfile.NamedTemporaryFile(  # noqa: SIM115
            mode, dir=directory, prefix=f".{name}.", suffix=".tmp", delete=False, **open_kwargs
        )
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
                mode = _new_file_mode()
            os.chmod(self.file.name, mode)
            os.replace(self.file.name, self.path)
        except BaseException:
            self._remove()
            raise
        _fsync_dir(os.path.dirname(self.path))

    def discard(self) -> None:
        if self.done:
            return
        self.done = True
        self._remove()

    def _remove(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file.name)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Write `path` all-or-nothing: yields a temp file in the same directory, renamed on success.

    Text modes default to UTF-8. On an exception the temp file is removed and `path` is untouched.
    """
    target = _AtomicFile(os.fspath(path), mode, **open_kwargs)
    try:
        yield target.file
    except BaseException:
        target.discard()
        raise
    target.commit()


# --------------------------------------------------------------------------- record writers


class RecordWriter:
    """Base writer; use as a context manager.

    ``write`` takes one record, ``flush`` makes records so far visible (and durable for JSONL
    files), ``close`` finalizes. Leaving the ``with`` block by an exception calls ``abort``:
    atomic outputs (JSON, CSV files) are then discarded and the target is left untouched, while a
    JSONL (or resumed CSV) file keeps what was written, ready for ``--resume``.
    """

    closed = False

    def write(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Push buffered records out."""

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        """Stop without finalizing; by default the same as close()."""
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("write to a closed RecordWriter")

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _ascii_only(stream: TextIO) -> bool:
    # A non-UTF stdout (e.g. a Latin-1 locale) cannot take every label; JSON can escape instead.
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    return not encoding.startswith("utf")


class _JsonlWriter(RecordWriter):
    """One JSON object per line, appended as records come (streaming)."""

    def __init__(self, path: str | None, stream: TextIO | None, resume: bool) -> None:
        self._owned = path is not None
        if path is not None:
            mode = "a" if resume else "w"
            # Line buffered: each record reaches the OS as it is written, so a killed run loses
            # at most the batch in flight (and --resume repairs a torn last line).
            self._file: TextIO = open(  # noqa: SIM115
                path, mode, encoding="utf-8", newline="\n", buffering=1
            )
        else:
            assert stream is not None
            self._file = stream
        self._ascii = not self._owned and _ascii_only(self._file)

    def write(self, record: dict[str, Any]) -> None:
        self._check_open()
        line = json.dumps(_clean_record(record), ensure_ascii=self._ascii, allow_nan=False)
        self._file.write(line + "\n")

    def flush(self) -> None:
        if self.closed:
            return
        self._file.flush()
        if self._owned:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        if self._owned:
            self._file.close()
        self.closed = True


class _JsonWriter(RecordWriter):
    """A single JSON array, one record per line; spooled to a temp file so memory stays flat."""

    def __init__(self, path: str | None, stream: TextIO | None) -> None:
        self._stream = stream
        self._atomic = _AtomicFile(path, "w", newline="\n") if path is not None else None
        if self._atomic is not None:
            self._spool: TextIO = self._atomic.file
        else:
            self._spool = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
        self._ascii = stream is not None and _ascii_only(stream)
        self._count = 0

    def write(self, record: dict[str, Any]) -> None:
        self._check_open()
        line = json.dumps(_clean_record(record), ensure_ascii=self._ascii, allow_nan=False)
        self._spool.write(("[\n" if self._count == 0 else ",\n") + line)
        self._count += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._spool.write("\n]\n" if self._count else "[]\n")
        if self._atomic is not None:
            self._atomic.commit()
            return
        assert self._stream is not None
        self._spool.seek(0)
        shutil.copyfileobj(self._spool, self._stream)
        self._spool.close()
        self._stream.flush()

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._atomic is not None:
            self._atomic.discard()
        else:
            self._spool.close()


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


def _csv_row(record: dict[str, Any], top_k: int, decision: bool = False) -> list[str]:
    clean = _clean_record(record)
    preds = clean.get("top_k") or []
    if len(preds) > top_k:
        raise ValueError(f"record has {len(preds)} predictions but the CSV has {top_k} columns")
    cells = [clean["path"]]
    if decision:
        score = clean.get("score")
        cells += [clean.get("label") or "", "" if score is None else repr(float(score))]
    for pred in preds:
        score = pred.get("score")
        cells += [pred.get("label", ""), "" if score is None else repr(float(score))]
        cells.append(str(pred.get("index", "")))
    cells += [""] * (3 * (top_k - len(preds)))
    cells.append(clean.get("error") or "")
    return cells


class _CsvWriter(RecordWriter):
    """One row per image (see csv_header); atomic file, append-mode file on resume, or stream."""

    def __init__(
        self,
        path: str | None,
        stream: TextIO | None,
        resume: bool,
        top_k: int,
        decision: bool = False,
    ) -> None:
        self._top_k, self._decision = top_k, decision
        header = csv_header(top_k, decision)
        self._atomic: _AtomicFile | None = None
        self._owned = False
        if path is None:
            assert stream is not None
            self._file: TextIO = stream
            need_header = True
        elif resume:
            need_header = _check_csv_header(path, header)
            # Line buffered, as JSONL: a killed resumed run keeps every row it wrote.
            self._file = open(path, "a", encoding="utf-8", newline="", buffering=1)  # noqa: SIM115
            self._owned = True
        else:
            self._atomic = _AtomicFile(path, "w", newline="")
            self._file = self._atomic.file
            need_header = True
        self._writer = csv.writer(self._file, lineterminator="\n")
        if need_header:
            self._writer.writerow(header)

    def write(self, record: dict[str, Any]) -> None:
        self._check_open()
        self._writer.writerow(_csv_row(record, self._top_k, self._decision))

    def flush(self) -> None:
        if self.closed:
            return
        self._file.flush()
        if self._owned:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._atomic is not None:
            self._atomic.commit()
            return
        self._file.flush()
        if self._owned:
            os.fsync(self._file.fileno())
            self._file.close()

    def abort(self) -> None:
        if self._atomic is not None and not self.closed:
            self.closed = True
            self._atomic.discard()
            return
        self.close()


def _check_csv_header(path: str, header: list[str]) -> bool:
    """True when `path` is missing or empty (a header is needed); raise if its header differs."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            first = next(csv.reader(f), None)
    except FileNotFoundError:
        return True
    if first is None:
        return True
    if first != header:
        raise ValueError(f"{safe_text(path)}: existing CSV columns differ (other --top-k?)")
    return False


def open_record_writer(
    fmt: str,
    path: str | None,
    *,
    stream: TextIO | None = None,
    resume: bool = False,
    top_k: int = 5,
    decision: bool = False,
) -> RecordWriter:
    """Open a writer for `fmt` ("jsonl", "json", "csv") to file `path`, or to `stream` if no path.

    `stream` defaults to sys.stdout; a path of "-" also means the stream. "table" is rendered by
    the CLI and is rejected here. `resume` (JSONL or CSV files only) repairs a torn file and
    appends to it instead of replacing it. `top_k` fixes the CSV columns, `decision` adds the
    decided label and score (see csv_header).
    """
    if fmt == "table":
        raise ValueError("format 'table' is rendered by the CLI, not by open_record_writer")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if path == "-":
        path = None
    if path is None and stream is None:
        stream = sys.stdout
    if resume:
        if fmt not in RESUMABLE_FORMATS or path is None:
            raise ValueError("resume needs a .jsonl or .csv output file")
        _repair(path, fmt)  # a no-op when the file is already clean
    if fmt == "jsonl":
        return _JsonlWriter(path, stream, resume)
    if fmt == "json":
        return _JsonWriter(path, stream)
    return _CsvWriter(path, stream, resume, top_k, decision)


# --------------------------------------------------------------------------- resume


def _jsonl_records(path: str) -> Iterator[tuple[bytes, dict[str, Any] | None]]:
    """Yield (raw line, record or None if invalid); a last line without newline is torn: None."""
    with open(path, "rb") as f:
        for line in f:
            record = None
            if line.endswith(b"\n"):
                with contextlib.suppress(ValueError):  # UnicodeDecodeError is a ValueError
                    parsed = json.loads(line)
                    if isinstance(parsed, dict) and isinstance(parsed.get("path"), str):
                        record = parsed
            yield line, record


def _is_success(record: dict[str, Any] | None) -> bool:
    return record is not None and not record.get("error") and "top_k" in record


def repair_jsonl(path: str) -> int:
    """Rewrite a JSONL result file for resuming; return the number of lines dropped.

    Drops a torn last line, invalid lines and error records (their inputs get retried), and keeps
    only the last success per path. The file is rewritten atomically, and only if anything changed.
    Memory grows with the kept lines.
    """
    if not os.path.exists(path):
        return 0
    kept: dict[str, bytes] = {}
    total = 0
    for line, record in _jsonl_records(path):
        total += 1
        if _is_success(record):
            assert record is not None
            kept.pop(record["path"], None)  # re-insert so the last occurrence keeps its place
            kept[record["path"]] = line
    dropped = total - len(kept)
    if dropped:
        with atomic_write(path, "wb") as f:
            f.writelines(kept.values())
        log.info("%s: dropped %d torn, failed or duplicate lines", safe_text(path), dropped)
    return dropped


def _csv_rows(path: str) -> tuple[list[str] | None, list[list[str]], int]:
    """(header, complete data rows, number of torn or malformed rows left out) of a CSV file."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        text = f.read()
    rows: list[list[str]] = []
    torn = 0
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        rows.extend(reader)
    except csv.Error:  # an unterminated quote at the end: a torn row
        torn = 1
    if not torn and text and not text.endswith("\n") and rows:
        rows.pop()  # the writer ends every row with "\n"
        torn = 1
    if not rows:
        return None, [], torn
    header, data = rows[0], rows[1:]
    good = [row for row in data if len(row) == len(header)]
    return header, good, torn + len(data) - len(good)


def _csv_successes(header: list[str], rows: list[list[str]]) -> dict[str, list[str]]:
    kept: dict[str, list[str]] = {}
    for row in rows:
        if header[-1] == "error" and row[-1]:
            continue
        kept.pop(row[0], None)  # re-insert so the last occurrence keeps its place
        kept[row[0]] = row
    return kept


def repair_csv(path: str) -> int:
    """The CSV counterpart of repair_jsonl: keep the header and the last success row per path."""
    if not os.path.exists(path):
        return 0
    header, rows, bad = _csv_rows(path)
    if header is None:
        if bad:  # only a torn header: start over
            os.truncate(path, 0)
        return bad
    kept = _csv_successes(header, rows)
    dropped = bad + len(rows) - len(kept)
    if dropped:
        with atomic_write(path, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(kept.values())
        log.info("%s: dropped %d torn, failed or duplicate rows", safe_text(path), dropped)
    return dropped


def _repair(path: str, fmt: str) -> int:
    return repair_csv(path) if fmt == "csv" else repair_jsonl(path)


def load_done(path: str, fmt: str = "jsonl") -> set[str]:
    """Paths (as safe_text keys) that already have a success record in a JSONL or CSV output.

    Error records do not count, so failed inputs are retried. A missing file gives an empty set.
    """
    if fmt not in RESUMABLE_FORMATS:
        raise ValueError(f"cannot resume from format {fmt!r}")
    if not os.path.exists(path):
        return set()
    if fmt == "csv":
        header, rows, _ = _csv_rows(path)
        return set(_csv_successes(header, rows)) if header else set()
    done = set()
    for _, record in _jsonl_records(path):
        if _is_success(record):
            assert record is not None
            done.add(record["path"])
    return done


def prepare_resume(path: str, fmt: str = "jsonl") -> set[str]:
    """Repair `path` (see repair_jsonl / repair_csv) and return its finished paths."""
    if fmt not in RESUMABLE_FORMATS:
        raise ValueError(f"cannot resume from format {fmt!r}")
    _repair(path, fmt)
    return load_done(path, fmt)


# --------------------------------------------------------------------------- embeddings


def _line_escape(key: str) -> str:
    return key.replace("\n", "\\n").replace("\r", "\\r")


def _line_unescape(line: str) -> str:
    return line.replace("\\n", "\n").replace("\\r", "\r")


def _copy_exact(src: BinaryIO, dst: BinaryIO, nbytes: int) -> None:
    """Copy `nbytes` from src to dst in bounded chunks; raise if src ends early."""
    while nbytes > 0:
        chunk = src.read(min(_CHUNK, nbytes))
        if not chunk:
            raise ValueError("embedding data ended early")
        dst.write(chunk)
        nbytes -= len(chunk)


def _read_npy_header(fp: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    major, _ = np.lib.format.read_magic(fp)
    if major == 1:
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def _write_npy_header(fp: BinaryIO, shape: tuple[int, ...], dtype: str) -> None:
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(fp, header)


class EmbeddingWriter:
    """Streams float32 rows [N, *row_shape] to `path` (.npy or .npz) with paths beside them.

    Memory stays bounded: each write() appends to partial files beside the target
    (``.NAME.partial`` raw little-endian float32, ``.NAME.partial.paths`` one JSON string per
    line, ``.NAME.partial.json`` the row shape); close() streams them into the final file.

    Final layout: ``vecs.npy`` float32 (N, *row_shape) plus ``vecs.paths.txt`` with one path per
    line (safe_text, with newline/CR inside a path written as ``\\n``/``\\r``), or ``vecs.npz``
    with arrays ``embeddings`` and ``paths`` (unicode). Both are replaced atomically.

    With ``resume=True`` the partials of a killed run, or else a finished target, are the
    starting point and ``done`` holds their paths (safe_text keys); without it, old partials are
    discarded and the target is overwritten at close.
    """

    def __init__(self, path: str, *, resume: bool = False) -> None:
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in (".npy", ".npz"):
            raise ValueError(f"embeddings go to a .npy or .npz file, not {safe_text(path)!r}")
        self.path = os.path.abspath(path)
        self._npz = suffix == ".npz"
        directory, name = os.path.split(self.path)
        base = os.path.join(directory, f".{name}.partial")
        self._raw_path, self._paths_path, self._meta_path = base, base + ".paths", base + ".json"
        self.sidecar_path = None if self._npz else os.path.splitext(self.path)[0] + ".paths.txt"
        self.done: set[str] = set()
        self.row_shape: tuple[int, ...] | None = None
        self.count = 0
        self._raw: BinaryIO | None = None
        self._paths: BinaryIO | None = None
        self.closed = False
        if resume and os.path.exists(self._meta_path):
            self._resume_partials()
        else:
            self._discard_partials()
            if resume and os.path.exists(self.path):
                self._resume_final()

    # -- public

    def write(self, paths: list[str], rows: np.ndarray) -> None:
        """Append `rows` (first axis matches `paths`); the row shape is fixed by the first rows."""
        if self.closed:
            raise ValueError("write to a closed EmbeddingWriter")
        rows = np.asarray(rows)
        if rows.ndim < 1 or rows.shape[0] != len(paths):
            raise ValueError(f"{len(paths)} paths but rows of shape {rows.shape}")
        if not paths:
            return
        row_shape = tuple(int(n) for n in rows.shape[1:])
        if self.row_shape is None:
            self._start(row_shape)
        elif row_shape != self.row_shape:
            raise ValueError(f"row shape {row_shape} differs from earlier rows {self.row_shape}")
        assert self._raw is not None and self._paths is not None
        data = np.ascontiguousarray(rows, dtype="<f4")
        self._raw.write(memoryview(data).cast("B"))
        self._raw.flush()  # rows reach the OS before their paths: a kill never orphans a path
        keys = [safe_text(p) for p in paths]
        self._paths.write("".join(json.dumps(k) + "\n" for k in keys).encode("ascii"))
        self._paths.flush()
        self.done.update(keys)
        self.count += len(keys)

    def flush(self) -> None:
        """Make every row written so far durable in the partial files (fsync)."""
        for f in (self._raw, self._paths):
            if f is not None and not f.closed:
                f.flush()
                os.fsync(f.fileno())

    def close(self) -> None:
        """Finalize: write the target (and sidecar) atomically, then remove the partials."""
        if self.closed:
            return
        self.flush()
        self._close_files()
        self.closed = True
        if self.count == 0:
            log.warning("no embeddings to write; %s will be empty", safe_text(self.path))
        if self._npz:
            self._finalize_npz()
        else:
            self._finalize_npy()
        self._discard_partials()

    def abort(self) -> None:
        """Stop without finalizing; the partial files stay for a later resume."""
        if self.closed:
            return
        self.flush()
        self._close_files()
        self.closed = True

    def __enter__(self) -> EmbeddingWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- partial files

    @property
    def _row_bytes(self) -> int:
        assert self.row_shape is not None
        return 4 * math.prod(self.row_shape)

    def _start(self, row_shape: tuple[int, ...]) -> None:
        if math.prod(row_shape) == 0:
            raise ValueError(f"rows of shape {row_shape} hold no values")
        self.row_shape = row_shape
        # The meta file is the marker that the partials are valid: written first, removed first.
        with atomic_write(self._meta_path) as f:
            json.dump({"version": 1, "dtype": "<f4", "row_shape": list(row_shape)}, f)
        self._open_files()

    def _open_files(self) -> None:
        # Kept open across write() calls; closed by close()/abort().
        self._raw = open(self._raw_path, "ab")  # noqa: SIM115
        self._paths = open(self._paths_path, "ab")  # noqa: SIM115

    def _close_files(self) -> None:
        for f in (self._raw, self._paths):
            if f is not None:
                f.close()

    def _discard_partials(self) -> None:
        for name in (self._meta_path, self._raw_path, self._paths_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def _resume_partials(self) -> None:
        """Keep the rows of a killed run that have both their data and their path on disk."""
        with open(self._meta_path, encoding="utf-8") as f:
            self.row_shape = tuple(json.load(f)["row_shape"])
        keys, ends = self._read_partial_paths()
        try:
            raw_rows = os.path.getsize(self._raw_path) // self._row_bytes
        except FileNotFoundError:
            raw_rows = 0
        n = min(len(keys), raw_rows)
        with open(self._raw_path, "ab") as f:
            f.truncate(n * self._row_bytes)
        with open(self._paths_path, "ab") as f:
            f.truncate(ends[n - 1] if n else 0)
        self.done = set(keys[:n])
        self.count = n
        self._open_files()
        log.info("resuming %s from %d rows in partial files", safe_text(self.path), n)

    def _read_partial_paths(self) -> tuple[list[str], list[int]]:
        """Complete, valid lines of the partial paths file and the byte offset after each."""
        keys: list[str] = []
        ends: list[int] = []
        offset = 0
        with contextlib.suppress(FileNotFoundError), open(self._paths_path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    key = json.loads(line)
                except ValueError:
                    break
                if not isinstance(key, str):
                    break
                offset += len(line)
                keys.append(key)
                ends.append(offset)
        return keys, ends

    def _resume_final(self) -> None:
        """Copy a finished target into fresh partials so new rows are appended after it."""
        if self._npz:
            with zipfile.ZipFile(self.path) as zf:
                with zf.open("paths.npy") as fp:
                    keys = [str(p) for p in np.lib.format.read_array(fp)]
                with zf.open("embeddings.npy") as fp:
                    self._import_rows(fp, keys)
        else:
            if self.sidecar_path is None or not os.path.exists(self.sidecar_path):
                raise ValueError(f"cannot resume {safe_text(self.path)}: its paths file is missing")
            with open(self.sidecar_path, encoding="utf-8", newline="\n") as f:
                keys = [_line_unescape(line.rstrip("\n")) for line in f]
            with open(self.path, "rb") as fp:
                self._import_rows(fp, keys)

    def _import_rows(self, fp: BinaryIO, keys: list[str]) -> None:
        shape, fortran, dtype = _read_npy_header(fp)
        if dtype != np.dtype("<f4") or fortran or not shape:
            raise ValueError(f"cannot resume {safe_text(self.path)}: not a C-order float32 array")
        if shape == (0,):
            return  # an empty earlier run: nothing to keep, row shape still open
        if shape[0] != len(keys):
            log.warning(
                "%s: %d rows but %d paths; keeping the first %d",
                safe_text(self.path),
                shape[0],
                len(keys),
                min(shape[0], len(keys)),
            )
        n = min(shape[0], len(keys))
        if n == 0:
            return
        self._start(tuple(int(s) for s in shape[1:]))
        assert self._raw is not None and self._paths is not None
        _copy_exact(fp, self._raw, n * self._row_bytes)
        self._raw.flush()
        self._paths.write("".join(json.dumps(k) + "\n" for k in keys[:n]).encode("ascii"))
        self.flush()
        self.done = set(keys[:n])
        self.count = n
        log.info("resuming %s after its %d finished rows", safe_text(self.path), n)

    def _partial_keys(self) -> Iterator[str]:
        if self.count == 0:
            return
        with open(self._paths_path, "rb") as f:
            for _, line in zip(range(self.count), f, strict=False):
                yield json.loads(line)

    # -- finalizing

    def _final_shape(self) -> tuple[int, ...]:
        return (0,) if self.row_shape is None else (self.count, *self.row_shape)

    def _write_rows(self, out: BinaryIO) -> None:
        _write_npy_header(out, self._final_shape(), "<f4")
        if self.count:
            with open(self._raw_path, "rb") as raw:
                _copy_exact(raw, out, self.count * self._row_bytes)

    def _finalize_npy(self) -> None:
        with atomic_write(self.path, "wb") as out:
            self._write_rows(out)
        assert self.sidecar_path is not None
        with atomic_write(self.sidecar_path, "w", newline="\n") as f:
            for key in self._partial_keys():
                f.write(_line_escape(key) + "\n")

    def _finalize_npz(self) -> None:
        width = max((len(k) for k in self._partial_keys()), default=1) or 1
        with atomic_write(self.path, "wb") as out, zipfile.ZipFile(out, "w") as zf:
            with zf.open("embeddings.npy", "w", force_zip64=True) as member:
                self._write_rows(member)
            with zf.open("paths.npy", "w", force_zip64=True) as member:
                _write_npy_header(member, (self.count,), f"<U{width}")
                for key in self._partial_keys():  # streamed: fixed-width UTF-32, zero padded
                    member.write(key.ljust(width, "\0").encode("utf-32-le"))
