"""A run's outputs, in one process or sharded across torchrun's processes.

A command writes through RecordOutput (classify) or EmbeddingOutput (embed). In one process they are
thin wrappers over open_record_writer / EmbeddingWriter. Under torchrun (world > 1) every rank
writes its share to its own part file beside the output, `.NAME.rank{r}of{w}.part`, each entry
tagged with its global input index; after a barrier rank 0 merges the parts in input order into the
one requested output and removes them. With `resume`, parts left by a killed run are first merged
into the output (by rank 0, before a barrier), so that every rank then reads the same set of
finished paths and shards the remaining inputs identically.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import math
import os
import re
import zipfile
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from .outputs import (
    RESUMABLE_FORMATS,
    EmbeddingWriter,
    RecordWriter,
    _clean_record,
    _line_unescape,
    atomic_write,
    load_done,
    open_record_writer,
    prepare_resume,
    safe_text,
)

log = logging.getLogger(__name__)

_MERGE_ROWS = 1024  # embedding rows moved per write while merging


def part_path(path: str, rank: int, world: int) -> str:
    """The file rank `rank` of `world` writes its share of `path` to (hidden, beside `path`)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.rank{rank}of{world}.part")


def find_parts(path: str) -> list[str]:
    """Part files of `path` left by any earlier run, grouped by world size, then by rank."""
    directory, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(f".{name}.rank") + r"(\d+)of(\d+)\.part")
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(directory) as entries:
        for entry in entries:
            match = pattern.fullmatch(entry.name)
            if match:
                rank, world = int(match.group(1)), int(match.group(2))
                found.append((world, rank, entry.path))
    return [found_path for _, _, found_path in sorted(found)]


def _part_groups(parts: list[str]) -> list[list[str]]:
    """Parts of one run belong together (same world size): their indices share one numbering."""
    groups: dict[str, list[str]] = {}
    for part in parts:
        groups.setdefault(part.rsplit("of", 1)[1], []).append(part)
    return list(groups.values())


def remove_parts(path: str, parts: list[str] | None = None) -> None:
    """Delete part files of `path` (all found ones by default), with their side files."""
    for part in find_parts(path) if parts is None else parts:
        for name in (part, part + ".index", part + ".json"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def _json_lines(path: str) -> Iterator[Any]:
    """Values of the complete, valid lines of a file, stopping at the first torn or bad one."""
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            try:
                yield json.loads(line)
            except ValueError:
                return


class RecordPartWriter:
    """One rank's share of a record output: JSON lines ``{"index": i, "record": {...}}``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = open(path, "w", encoding="utf-8", newline="\n", buffering=1)  # noqa: SIM115

    def write(self, index: int, record: dict[str, Any]) -> None:
        line = json.dumps({"index": index, "record": _clean_record(record)}, allow_nan=False)
        self._file.write(line + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def _record_part_entries(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for entry in _json_lines(path):
        if not (isinstance(entry, dict) and isinstance(entry.get("record"), dict)):
            return
        yield int(entry["index"]), entry["record"]


def merge_record_parts(parts: list[str], writer: RecordWriter) -> int:
    """Write the records of `parts` to `writer`, each run's parts interleaved by input index."""
    count = 0
    for group in _part_groups(parts):
        streams = [_record_part_entries(part) for part in group]
        for _, record in heapq.merge(*streams, key=lambda entry: entry[0]):
            writer.write(record)
            count += 1
    return count


class EmbeddingPartWriter:
    """One rank's share of an embedding output, streamed to disk.

    ``PART`` holds raw little-endian float32 rows, ``PART.index`` one JSON line ``[index, path]``
    per row (written after the row's data, so a kill never orphans a path) and ``PART.json`` the
    row shape (written with the first row).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.row_shape: tuple[int, ...] | None = None
        remove_parts(path, [path])
        self._raw = open(path, "wb")  # noqa: SIM115
        self._index = open(path + ".index", "wb")  # noqa: SIM115

    def write(self, indices: list[int], paths: list[str], rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype="<f4")
        if self.row_shape is None:
            self.row_shape = tuple(int(n) for n in rows.shape[1:])
            with atomic_write(self.path + ".json") as f:
                json.dump({"dtype": "<f4", "row_shape": list(self.row_shape)}, f)
        self._raw.write(memoryview(rows).cast("B"))
        self._raw.flush()
        lines = (json.dumps([i, safe_text(p)]) + "\n" for i, p in zip(indices, paths, strict=True))
        self._index.write("".join(lines).encode("ascii"))
        self._index.flush()

    def close(self) -> None:
        for f in (self._raw, self._index):
            if not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()


def _embedding_part_entries(path: str) -> Iterator[tuple[int, str, np.ndarray]]:
    try:
        with open(path + ".json", encoding="utf-8") as f:
            row_shape = tuple(json.load(f)["row_shape"])
    except FileNotFoundError:
        return  # no row was written
    row_bytes = 4 * math.prod(row_shape)
    with open(path, "rb") as raw:
        for entry in _json_lines(path + ".index"):
            data = raw.read(row_bytes)
            if len(data) < row_bytes:
                return  # the index line outlived its row: cannot happen, but never misalign
            index, key = entry
            yield int(index), key, np.frombuffer(data, dtype="<f4").reshape(row_shape)


def merge_embedding_parts(
    parts: list[str], writer: EmbeddingWriter, *, skip_done: bool = False
) -> int:
    """Append the rows of `parts` to `writer` in input order; `skip_done` drops rows of paths
    the writer already holds (parts merged once before by a run that was killed)."""
    count = 0
    for group in _part_groups(parts):
        streams = [_embedding_part_entries(part) for part in group]
        keys: list[str] = []
        rows: list[np.ndarray] = []
        for _, key, row in heapq.merge(*streams, key=lambda entry: entry[0]):
            if skip_done and key in writer.done:
                continue
            keys.append(key)
            rows.append(row)
            if len(keys) >= _MERGE_ROWS:
                writer.write(keys, np.stack(rows))
                count += len(keys)
                keys, rows = [], []
        if keys:
            writer.write(keys, np.stack(rows))
            count += len(keys)
    return count


def load_embedding_done(path: str) -> set[str]:
    """Read-only: the paths EmbeddingWriter(path, resume=True) would find finished."""
    directory, name = os.path.split(os.path.abspath(path))
    base = os.path.join(directory, f".{name}.partial")
    if os.path.exists(base + ".json"):
        with open(base + ".json", encoding="utf-8") as f:
            row_bytes = 4 * math.prod(json.load(f)["row_shape"])
        try:
            rows = os.path.getsize(base) // row_bytes
        except FileNotFoundError:
            rows = 0
        keys = [key for key in _json_lines(base + ".paths") if isinstance(key, str)]
        return set(keys[:rows])
    if not os.path.exists(path):
        return set()
    if path.lower().endswith(".npz"):
        with zipfile.ZipFile(path) as zf, zf.open("paths.npy") as fp:
            return {str(p) for p in np.lib.format.read_array(fp)}
    sidecar = os.path.splitext(path)[0] + ".paths.txt"
    if not os.path.exists(sidecar):
        return set()
    with open(sidecar, encoding="utf-8", newline="\n") as f:
        return {_line_unescape(line.rstrip("\n")) for line in f}


class Job(Protocol):
    """The processes of a run (runner.Distributed): this one's rank, their number, a barrier."""

    rank: int
    world: int

    def barrier(self) -> None: ...


def _no_barrier() -> None:
    pass


class RecordOutput:
    """Where `classify` writes records, in one process or as one rank of a torchrun job.

    Use as a context manager around the run: ``done`` (set on entry; None without resume) holds
    the finished paths to skip; ``write(index, record)`` takes each result. A clean exit merges
    (world > 1) and finalizes; an exception keeps what was written for ``--resume``.
    """

    def __init__(
        self,
        fmt: str,
        path: str | None,
        *,
        resume: bool = False,
        top_k: int = 5,
        job: Job | None = None,
        decision: bool = False,  # CSV label/score columns (classify --head / --min-score)
    ) -> None:
        self.rank, self.world = (job.rank, job.world) if job else (0, 1)
        self.barrier = job.barrier if job else _no_barrier
        if path == "-":
            path = None
        if self.world > 1 and path is None:
            raise ValueError("with several processes (torchrun) give --output FILE")
        self.fmt, self.path, self.top_k = fmt, path, top_k
        self.columns = {"top_k": top_k, "decision": decision}
        self.resume = resume and path is not None
        if self.resume and fmt not in RESUMABLE_FORMATS:  # checked by every rank, up front
            raise ValueError("resume needs a .jsonl or .csv output file")
        self.done: set[str] | None = None
        self._writer: RecordWriter | None = None
        self._part: RecordPartWriter | None = None

    def __enter__(self) -> RecordOutput:
        path = self.path
        if path is not None and self.rank == 0:
            leftovers = find_parts(path)
            if self.resume and leftovers:
                with open_record_writer(self.fmt, path, resume=True, **self.columns) as writer:
                    merge_record_parts(leftovers, writer)
                log.info("merged %d part files of a killed run", len(leftovers))
            remove_parts(path, leftovers)
            if self.resume:
                self.done = prepare_resume(path, self.fmt)
        if self.world == 1:
            self._writer = open_record_writer(self.fmt, path, resume=self.resume, **self.columns)
            return self
        assert path is not None
        self.barrier()  # rank 0 has merged leftovers and repaired: every rank sees the same output
        if self.resume and self.rank != 0:
            self.done = load_done(path, self.fmt)
        self._part = RecordPartWriter(part_path(path, self.rank, self.world))
        return self

    def write(self, index: int, record: dict[str, Any]) -> None:
        if self._part is not None:
            self._part.write(index, record)
        else:
            assert self._writer is not None
            self._writer.write(record)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._writer is not None:
            self._writer.__exit__(exc_type, exc, tb)
            return
        assert self._part is not None and self.path is not None
        self._part.close()
        if exc_type is not None:
            return  # the part stays for --resume
        self.barrier()  # every rank's part is complete
        if self.rank == 0:
            parts = [part_path(self.path, r, self.world) for r in range(self.world)]
            with open_record_writer(
                self.fmt, self.path, resume=self.resume, **self.columns
            ) as writer:
                merge_record_parts(parts, writer)
            remove_parts(self.path, parts)
        self.barrier()  # nobody exits (which makes torchrun stop the others) before the merge


class EmbeddingOutput:
    """Where `embed` writes rows, in one process or as one rank of a torchrun job.

    The counterpart of RecordOutput: ``done`` (set on entry) holds the finished paths,
    ``write(index, path, row)`` takes each success; ``count`` is the rows in the final file (on
    rank 0, after a clean exit). A clean exit merges and finalizes; an exception keeps the partial
    files for ``--resume``.
    """

    def __init__(
        self,
        path: str,
        *,
        resume: bool = False,
        job: Job | None = None,
    ) -> None:
        if os.path.splitext(path)[1].lower() not in (".npy", ".npz"):  # every rank, up front
            raise ValueError(f"embeddings go to a .npy or .npz file, not {safe_text(path)!r}")
        self.path, self.resume = path, resume
        self.rank, self.world = (job.rank, job.world) if job else (0, 1)
        self.barrier = job.barrier if job else _no_barrier
        self.done: set[str] = set()
        self._writer: EmbeddingWriter | None = None
        self._part: EmbeddingPartWriter | None = None

    @property
    def count(self) -> int:
        return self._writer.count if self._writer is not None else 0

    @property
    def sidecar_path(self) -> str | None:
        return self._writer.sidecar_path if self._writer is not None else None

    def __enter__(self) -> EmbeddingOutput:
        if self.rank == 0:
            self._writer = EmbeddingWriter(self.path, resume=self.resume)
            leftovers = find_parts(self.path)
            if self.resume and leftovers:
                merge_embedding_parts(leftovers, self._writer, skip_done=True)
                self._writer.flush()
                log.info("merged %d part files of a killed run", len(leftovers))
            remove_parts(self.path, leftovers)
        if self.world == 1:
            assert self._writer is not None
            self.done = self._writer.done
            return self
        self.barrier()  # rank 0's partial files now hold everything finished so far
        if self.resume:
            self.done = load_embedding_done(self.path)
        self._part = EmbeddingPartWriter(part_path(self.path, self.rank, self.world))
        return self

    def write(self, index: int, path: str, row: np.ndarray) -> None:
        if self._part is not None:
            self._part.write([index], [path], row[None])
        else:
            assert self._writer is not None
            self._writer.write([path], row[None])

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._part is not None:
            self._part.close()
            if exc_type is not None:
                if self._writer is not None:
                    self._writer.abort()
                return
            self.barrier()  # every rank's part is complete
            if self._writer is not None:
                parts = [part_path(self.path, r, self.world) for r in range(self.world)]
                merge_embedding_parts(parts, self._writer)
                self._writer.close()
                remove_parts(self.path, parts)
            self.barrier()  # nobody exits before the merge
            return
        assert self._writer is not None
        self._writer.__exit__(exc_type, exc, tb)
