"""The issues file `vithybrid fit --issues FILE` writes: one JSON line per flagged example.

    {"path": "photos/cat/3.jpg", "label": "cat", "suggested": "dog", "score": 0.71, "kind": "label"}

`kind` is "label" (the given label is probably wrong; `suggested` is the likely one), "outlier"
(far from every class; `suggested` null) or "leak" (a validation example with a near copy in
training, named by `copy_of`); `score` is higher for a likelier issue (pipeline/fit/issues.py
says what it is per kind). Lines come most likely first. `path` is as the fit found it
(relative to where it ran, or absolute), undecodable bytes written as \\xNN escapes; a
correction (io/corrections.py) may quote it as it stands.

The file is written whole, atomically; an existing file is only replaced when it is an issues
file itself (anything else is refused: IssuesError, one line naming the file and line).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from ..files import atomic_write
from .outputs import json_safe

FIELDS = ("path", "label", "suggested", "score", "kind")
KINDS = ("label", "outlier", "leak")


class IssuesError(ValueError):
    """A file that is not an issues file; the message is one line naming it (and the line)."""


def read_issues(path: str | os.PathLike) -> list[dict]:
    """Every issue in file order; IssuesError for a file that is not an issues file."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise IssuesError(f"{name}: {error.strerror or error}") from None
    issues = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"{name}:{number}"
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            first = raw[:40].decode("utf-8", "replace")
            raise IssuesError(
                f"{where}: not an issues line (JSON expected, got {first!r})"
            ) from None
        if not isinstance(record, dict) or not set(FIELDS) <= set(record):
            keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            raise IssuesError(f"{where}: an issues line needs {', '.join(FIELDS)} (has {keys})")
        if record["kind"] not in KINDS:
            raise IssuesError(f"{where}: kind {record['kind']!r} is not one of {', '.join(KINDS)}")
        issues.append(record)
    return issues


def is_issues_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a .jsonl/.ndjson file whose first record has an issue's fields (`review`
    tells an issues file from a classify output by this)."""
    name = os.fspath(path)
    if not name.lower().endswith((".jsonl", ".ndjson")) or not os.path.isfile(name):
        return False
    with open(name, "rb") as handle:
        for raw in handle:
            if raw.strip():
                try:
                    record = json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    return False
                return isinstance(record, dict) and set(FIELDS) <= set(record)
    return False


def check_issues_target(path: str | os.PathLike) -> None:
    """Refuse (IssuesError) to replace an existing file that is not an issues file."""
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        read_issues(path)


def write_issues(path: str | os.PathLike, issues: Iterable[dict]) -> int:
    """Write `issues` (most likely first) as JSON lines, atomically; how many were written."""
    count = 0
    with atomic_write(path) as handle:
        for issue in issues:
            handle.write(json.dumps(json_safe(issue), ensure_ascii=False) + "\n")
            count += 1
    return count
