"""Label corrections: one JSON line per decision a person made about a photo's label.

    {"path": "photos/cat-3.jpg", "label": "dog", "was": "cat", "time": "2026-12-06T04:10:00Z"}

`vithybrid review` appends a line per decision; `vithybrid fit --corrections FILE` reads them:
for each path the LAST line wins, and an empty label ("" or null) drops the photo from training.
`path` is written exactly as the source (a classify output, an issues file) wrote it.

An append is one write of one whole line, flushed and fsynced before the call returns, so a
caller that answers only afterwards never acknowledges a decision that is not on disk. A last
line without its newline (a process killed mid-write, never acknowledged) is ignored on reading;
any other line that is not a correction is an error naming the file and line.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass


class CorrectionsError(ValueError):
    """A corrections file that cannot be read as one; the message is one line naming it."""


@dataclass(frozen=True)
class Correction:
    path: str
    label: str | None  # None: drop the photo
    was: str | None = None  # the label it had where the person saw it
    time: str = ""  # ISO 8601, UTC

    def record(self) -> dict[str, str | None]:
        return {"path": self.path, "label": self.label, "was": self.was, "time": self.time}


def now() -> str:
    """The current time as corrections record it (ISO 8601, UTC, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_correction_lines(path: str | os.PathLike) -> list[Correction]:
    """Every correction in file order; CorrectionsError (one line) for a file that is not one."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise CorrectionsError(f"{name}: {error.strerror or error}") from None
    lines = data.split(b"\n")
    torn = lines.pop() if lines else b""  # b"" when the file ends with a newline
    del torn  # a line without its newline was never acknowledged: left out
    corrections = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        corrections.append(_parse(name, number, raw))
    return corrections


def _parse(name: str, number: int, raw: bytes) -> Correction:
    where = f"{name}:{number}"
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        first = raw[:40].decode("utf-8", "replace")
        raise CorrectionsError(
            f"{where}: not a corrections line (JSON with path and label expected, got {first!r})"
        ) from None
    if not isinstance(record, dict) or "path" not in record or "label" not in record:
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise CorrectionsError(f"{where}: a corrections line needs path and label (has {keys})")
    path, label = record["path"], record["label"]
    if not isinstance(path, str) or not path:
        raise CorrectionsError(f"{where}: path must be a non-empty string")
    if label is not None and not isinstance(label, str):
        raise CorrectionsError(f"{where}: label must be a string or null")
    was = record.get("was")
    return Correction(path, label or None, was if isinstance(was, str) else None,
                      str(record.get("time") or ""))  # fmt: skip


def read_corrections(path: str | os.PathLike) -> dict[str, str | None]:
    """path -> its final label (None: dropped), the last line of each path winning."""
    final: dict[str, str | None] = {}
    for correction in read_correction_lines(path):
        final[correction.path] = correction.label
    return final


def append_correction(path: str | os.PathLike, correction: Correction) -> None:
    """Append one line, on disk (fsynced) before returning."""
    line = json.dumps(correction.record(), ensure_ascii=False) + "\n"
    name = os.fspath(path)
    descriptor = os.open(name, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _repair_torn_tail(descriptor)
        os.write(descriptor, line.encode("utf-8", "surrogateescape"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _repair_torn_tail(descriptor: int) -> None:
    """A file whose last line lacks its newline (a writer killed mid-line, never acknowledged):
    cut that line off, so the new line is not glued to it."""
    size = os.fstat(descriptor).st_size
    if size == 0:
        return
    if os.pread(descriptor, 1, size - 1) == b"\n":
        return
    start = size
    chunk = 4096
    while start > 0:  # find the start of the torn line
        offset = max(0, start - chunk)
        data = os.pread(descriptor, start - offset, offset)
        cut = data.rfind(b"\n")
        if cut >= 0:
            os.ftruncate(descriptor, offset + cut + 1)
            return
        start = offset
    os.ftruncate(descriptor, 0)
