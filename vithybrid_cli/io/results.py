"""Reading a `classify` output back: JSONL, JSON, CSV, Parquet or a folder of Parquet parts.

Whatever the format, each record becomes one `Row`: the path, the label shown (the decision of a
--head / --min-score run, None for an abstention; else the top-1 label), its score, the top-k
as (label, score) pairs, or the error of a failed input. A file that is not a classify output
raises NotResults, one line naming the file.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ".jsonl, .json, .csv, .parquet or a folder of .parquet parts"


class NotResults(ValueError):
    """RESULTS is not a classify output (one line, naming it)."""


@dataclass
class Row:
    """One classify record, whatever format it was read from."""

    path: str
    label: str | None = None  # the decision (None: abstained), else the top-1 label
    score: float | None = None
    top_k: list[tuple[str, float | None]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def margin(self) -> float | None:
        """How far the best label leads the second (the best score when there is no second)."""
        scores = [score for _, score in self.top_k if score is not None]
        if not scores:
            return None
        return scores[0] - scores[1] if len(scores) > 1 else scores[0]


@dataclass
class Results:
    rows: list[Row]
    decision: bool  # a --head / --min-score run: labels are decisions, abstentions possible


def read_results(path: str | os.PathLike[str]) -> Results:
    """The records of classify output `path` (a file, or a folder of Parquet parts)."""
    source = Path(path)
    name = os.fspath(path)
    if source.is_dir():
        parts = sorted(source.glob("*.parquet"))
        if not parts:
            raise NotResults(f"{name}: a folder of results holds .parquet parts; found none")
        return _read_parquet(parts, name)
    if not source.exists():
        raise NotResults(f"{name}: no such file")
    suffix = source.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet([source], name)
    if suffix == ".csv":
        return _read_csv(source, name)
    if suffix in (".jsonl", ".ndjson", ".json"):
        return _read_json(source, name)
    raise NotResults(f"{name}: not a classify output (give {FORMATS})")


# ---------------------------------------------------------------------------- JSON and JSONL


def _read_json(source: Path, name: str) -> Results:
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise NotResults(f"{name}: not a classify output (not UTF-8 text)") from error
    records: Iterable[tuple[int, Any]]
    stripped = text.lstrip()
    if stripped.startswith("["):  # classify --format json: one array
        try:
            array = json.loads(text)
        except json.JSONDecodeError as error:
            raise NotResults(f"{name}: not a classify output (bad JSON: {error})") from error
        records = ((1, record) for record in array)
    else:
        records = _json_lines(text.splitlines(), name)
    rows, decision = [], False
    for line, record in records:
        row, decided = _row_of_record(record, name, line)
        rows.append(row)
        decision = decision or decided
    return Results(rows, decision)


def _json_lines(lines: list[str], name: str) -> Iterator[tuple[int, Any]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise NotResults(
                f"{name}: line {number} is not a classify record (bad JSON: {error.msg})"
            ) from error


def _row_of_record(record: Any, name: str, line: int) -> tuple[Row, bool]:
    """A JSON record, {"path", "top_k": [{"label", "score", ...}]} (with "label"/"score" of a
    decision) or {"path", "error"}, and whether it holds a decision."""
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise NotResults(f'{name}: record {line} is not a classify record (no "path")')
    if record.get("error") is not None:
        return Row(record["path"], error=str(record["error"])), False
    entries = record.get("top_k")
    if not isinstance(entries, list) or not all(
        isinstance(entry, dict) and "label" in entry for entry in entries
    ):
        raise NotResults(f'{name}: record {line} is not a classify record (no "top_k" labels)')
    top_k = [(str(entry["label"]), _score(entry.get("score"))) for entry in entries]
    row = _row_of(record["path"], top_k)
    if "label" not in record:
        return row, False
    row.label = None if record["label"] is None else str(record["label"])  # None: abstained
    row.score = _score(record.get("score", row.score))
    return row, True


def _row_of(path: str, top_k: list[tuple[str, float | None]]) -> Row:
    label, score = top_k[0] if top_k else (None, None)
    return Row(path, label, score, top_k)


def _score(value: Any) -> float | None:
    """A finite float, or None (missing, empty, NaN, not a number)."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


# ---------------------------------------------------------------------------- CSV


def _read_csv(source: Path, name: str) -> Results:
    """classify's CSV: path, [label, score,] label_1, score_1, index_1, ..., error."""
    with open(source, newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if not header or header[0] != "path" or "label_1" not in header or header[-1] != "error":
            raise NotResults(
                f"{name}: not a classify CSV (its header is path, label_1, score_1, ..., error)"
            )
        decision = len(header) > 2 and header[1] == "label"
        ranks = [(header.index(column), header.index(f"score_{column[6:]}"))
                 for column in header if column.startswith("label_")]  # fmt: skip
        rows = []
        for line, cells in enumerate(reader, 2):
            if len(cells) != len(header):
                raise NotResults(f"{name}: row {line} has {len(cells)} cells, not {len(header)}")
            if cells[-1]:
                rows.append(Row(cells[0], error=cells[-1]))
                continue
            top_k = [(cells[i], _score(cells[j])) for i, j in ranks if cells[i]]
            row = _row_of(cells[0], top_k)
            if decision:
                row.label, row.score = cells[1] or None, _score(cells[2])
            rows.append(row)
    return Results(rows, decision)


# ---------------------------------------------------------------------------- Parquet


def _read_parquet(parts: list[Path], name: str) -> Results:
    from ..extras import require

    pq = require("pyarrow.parquet", "parquet", "pyarrow")
    needed = {"path", "label", "score", "top_k_labels", "top_k_scores", "error"}
    rows: list[Row] = []
    decision = False
    for part in parts:
        try:
            table = pq.read_table(part, columns=sorted(needed))
        except Exception as error:  # pyarrow's errors: ArrowInvalid, KeyError on a column, ...
            what = " ".join(str(error).split())[:120]
            raise NotResults(f"{part}: not a classify output ({what})") from error
        columns = table.to_pydict()
        for path, label, score, labels, scores, error in zip(
            *(columns[key] for key in ("path", "label", "score", "top_k_labels",
                                       "top_k_scores", "error")), strict=True
        ):  # fmt: skip
            if error is not None:
                rows.append(Row(path, error=error))
                continue
            top_k = [(label, _score(value)) for label, value in zip(labels or [], scores or [],
                                                                       strict=True)]  # fmt: skip
            # classify writes the top-1 label there unless a decision differs (an abstention)
            decision = decision or label != (labels[0] if labels else None)
            rows.append(Row(path, label, _score(score), top_k))
    return Results(rows, decision)
