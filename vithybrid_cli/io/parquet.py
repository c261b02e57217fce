"""Parquet output for `classify` records and `embed` vectors; pyarrow, the `parquet` extra.

Files are streamed: rows are buffered up to one row group and then written, so memory stays flat
however many rows there are. A file target is written to a temp file beside it and renamed into
place on close(); abort() removes the temp file and leaves the target untouched.

Columns
    records:    path (string), label (string), score (double), index (int64) for the top-1;
                top_k_labels (list<string>), top_k_scores (list<double>), top_k_indices
                (list<int64>) best first; error (string). A failed input has only path and error.
    embeddings: path (string), embedding (fixed_size_list<float32>[D]; nested for row shapes
                such as (tokens, D) from `embed --tokens`); key-value metadata
                ``vithybrid.settings``: the settings that made them (JSON, as the journal's).

pandas, polars, DuckDB and pyarrow read both as they are.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, BinaryIO

import numpy as np

from ..extras import require
from ..files import atomic_write
from .outputs import json_safe, safe_text

RECORD_ROW_GROUP = 32_768  # rows; a few tens of MB of Python objects at most while buffering
EMBEDDING_ROW_GROUP_BYTES = 64 << 20  # vector bytes buffered before a row group is written
# A folder of parts (the Ray engine's output) has its settings beside them in this file
PARTS_SETTINGS = "_vithybrid.json"
SETTINGS_KEY = b"vithybrid.settings"  # embeddings: the journal's settings, as JSON


def _pyarrow() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), or MissingExtra naming the `parquet` extra."""
    pa = require("pyarrow", "parquet")
    return pa, require("pyarrow.parquet", "parquet", "pyarrow")


RECORD_COLUMNS = (
    "path", "label", "score", "index", "top_k_labels", "top_k_scores", "top_k_indices", "error"
)  # fmt: skip


def record_schema(pa: Any) -> Any:
    return pa.schema(
        [
            ("path", pa.string()),
            ("label", pa.string()),
            ("score", pa.float64()),
            ("index", pa.int64()),
            ("top_k_labels", pa.list_(pa.string())),
            ("top_k_scores", pa.list_(pa.float64())),
            ("top_k_indices", pa.list_(pa.int64())),
            ("error", pa.string()),
        ]
    )


class _ParquetFile:
    """A ParquetWriter over an atomically replaced file or a stream; shared close/abort."""

    def __init__(self, target: str | os.PathLike[str] | BinaryIO) -> None:
        self._pa, self._pq = _pyarrow()
        # A file target is files.atomic_write's temp file, renamed when the stack closes; a
        # stream (e.g. stdout) is the caller's, written through and never closed here.
        self._stack = contextlib.ExitStack()
        if hasattr(target, "write"):
            self._sink: Any = target
        else:
            self._sink = self._stack.enter_context(atomic_write(target, "wb"))
        self._writer: Any = None
        self.closed = False
        self.count = 0

    def _open(self, schema: Any) -> None:
        self._writer = self._pq.ParquetWriter(self._sink, schema)

    def _write_table(self, table: Any) -> None:
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))

    def _finish(self) -> None:
        """Write buffered rows (and the schema, for an empty file), then close the writer."""
        raise NotImplementedError

    def close(self) -> None:
        """Finish the file and move it into place (atomically)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._finish()
            self._writer.close()
        except BaseException as error:
            self._stack.__exit__(type(error), error, error.__traceback__)  # temp file removed
            raise
        self._stack.close()  # the temp file renamed onto the target

    def abort(self) -> None:
        """Stop without a result: the temp file is removed and the target left untouched."""
        if self.closed:
            return
        self.closed = True
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        aborted = RuntimeError("aborted")
        self._stack.__exit__(RuntimeError, aborted, None)  # removes the temp file, target kept

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ParquetRecordWriter(_ParquetFile):
    """classify records -> Parquet: one row per record, in the order written.

    `write` takes ``{"path", "top_k": [{"index", "label", "score"}, ...]}`` (best first) or
    ``{"path", "error"}``, the records the JSONL writer takes. A record's own top-level
    ``label`` (None: abstain under --min-score) fills the `label` column when it has one.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | BinaryIO,
        top_k: int,
        *,
        row_group_size: int = RECORD_ROW_GROUP,
        decision: bool = False,  # the record's own label/score (--head, --min-score) come first
    ) -> None:
        super().__init__(path)
        self.top_k, self.row_group_size = top_k, max(1, row_group_size)
        metadata = {b"vithybrid.top_k": str(top_k).encode()}
        self.schema = record_schema(self._pa).with_metadata(metadata)
        self._open(self.schema)
        self._columns: dict[str, list] = {name: [] for name in self.schema.names}

    def write(self, record: dict[str, Any]) -> None:
        if self.closed:
            raise ValueError("write to a closed ParquetRecordWriter")
        if "path" not in record:
            raise ValueError(f"record without a 'path': {record!r}")
        for name, value in record_row(record).items():
            self._columns[name].append(value)
        self.count += 1
        if len(self._columns["path"]) >= self.row_group_size:
            self._flush_rows()

    def _flush_rows(self) -> None:
        if self._columns["path"]:
            self._write_table(self._pa.table(self._columns, schema=self.schema))
            self._columns = {name: [] for name in self.schema.names}

    def _finish(self) -> None:
        self._flush_rows()


def record_row(record: dict[str, Any]) -> dict[str, Any]:
    """One record as a row of `record_schema`'s columns (the Ray engine's parts use it too)."""
    row: dict[str, Any] = dict.fromkeys(RECORD_COLUMNS)
    row["path"] = safe_text(str(record["path"]))
    entries = record.get("top_k")
    if record.get("error") is not None or entries is None:
        row["error"] = safe_text(" ".join(str(record.get("error") or "no result").split()))
        return row
    labels = [safe_text(str(entry["label"])) for entry in entries]
    scores = [_finite(entry["score"]) for entry in entries]
    indices = [int(entry["index"]) for entry in entries]
    label = record["label"] if "label" in record else (labels[0] if labels else None)
    row["label"] = None if label is None else safe_text(str(label))
    row["score"] = scores[0] if scores else None
    row["index"] = indices[0] if indices else None
    row["top_k_labels"], row["top_k_scores"], row["top_k_indices"] = labels, scores, indices
    return row


def _finite(score: Any) -> float | None:
    value = float(score)
    return value if math.isfinite(value) else None  # as the JSON writers write it


class ParquetEmbeddingWriter(_ParquetFile):
    """embed vectors -> Parquet: `path` and a fixed-size float32 list per row, in order written.

    The row shape is fixed by the first vector; a later one of another shape is a ValueError.
    Vectors are buffered in one preallocated float32 block of about `row_group_bytes`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | BinaryIO,
        *,
        row_group_bytes: int = EMBEDDING_ROW_GROUP_BYTES,
        settings: dict[str, Any] | None = None,  # what made the vectors: key-value metadata
    ) -> None:
        super().__init__(path)
        self.row_group_bytes = row_group_bytes
        self.settings = settings
        self.row_shape: tuple[int, ...] | None = None
        self.schema: Any = None
        self._paths: list[str] = []
        self._block: np.ndarray | None = None

    def write(self, path: str, vector: np.ndarray) -> None:
        if self.closed:
            raise ValueError("write to a closed ParquetEmbeddingWriter")
        vector = np.asarray(vector)
        if self.row_shape is None:
            self._start(tuple(int(n) for n in vector.shape))
        elif vector.shape != self.row_shape:
            raise ValueError(f"vector of shape {vector.shape} differs from {self.row_shape}")
        assert self._block is not None
        self._block[len(self._paths)] = vector
        self._paths.append(safe_text(str(path)))
        self.count += 1
        if len(self._paths) == len(self._block):
            self._flush_rows()

    def _start(self, shape: tuple[int, ...]) -> None:
        if not shape or math.prod(shape) == 0:
            raise ValueError(f"vectors of shape {shape} hold no values")
        self.row_shape = shape
        rows = max(1, self.row_group_bytes // (4 * math.prod(shape)))
        self._block = np.empty((rows, *shape), dtype=np.float32)
        self._open_schema(shape)

    def _open_schema(self, shape: tuple[int, ...]) -> None:
        self.schema = embedding_schema(self._pa, shape, self.settings)
        self._open(self.schema)

    def _flush_rows(self) -> None:
        if not self._paths:
            return
        assert self._block is not None and self.row_shape is not None
        pa = self._pa
        values = embedding_array(pa, self._block[: len(self._paths)])
        self._write_table(
            pa.Table.from_arrays([pa.array(self._paths, pa.string()), values], schema=self.schema)
        )
        self._paths = []

    def _finish(self) -> None:
        if self.row_shape is None:  # nothing written: a valid file with zero rows
            self._open_schema((0,))
        self._flush_rows()


def embedding_schema(pa: Any, shape: tuple[int, ...], settings: dict | None = None) -> Any:
    """path + embedding: fixed_size_list<float32>[D], nested for row shapes such as (T, D);
    the run's settings (job_settings) in the metadata when given."""
    value_type = pa.float32()
    for size in reversed(shape):
        value_type = pa.list_(value_type, size)
    metadata = {b"vithybrid.row_shape": ",".join(map(str, shape)).encode()}
    if settings is not None:
        metadata[SETTINGS_KEY] = json.dumps(json_safe(settings), sort_keys=True).encode()
    return pa.schema([("path", pa.string()), ("embedding", value_type)], metadata=metadata)


def embedding_array(pa: Any, vectors: np.ndarray, mask: np.ndarray | None = None) -> Any:
    """(N, *shape) float32 vectors as one `embedding` column; rows where `mask` is True null."""
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    for size in reversed(vectors.shape[2:]):
        values = pa.FixedSizeListArray.from_arrays(values, size)
    if mask is None or not mask.any():
        return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])
    return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1], mask=pa.array(mask))
