"""The journal: every result of a run, appended as it comes; the output file is written from it.

Each process of a run (the only one, or each torchrun rank) appends its results to its own file
in a hidden folder beside the output, ``.NAME.journal/run0002.rank1of4``, flushed as each result
comes, so a killed run loses at most the batch in flight. A file starts with a header line that
records the settings shaping a result (model, weights, dtype, task options...), then holds one
entry per input, in input order:

    {"index": 7, "path": "a.jpg", "error": "..."}             a failure
    {"index": 8, "path": "b.jpg", "value": [...]}             a JSON payload (classify's top-k)
    {"index": 9, "path": "c.jpg", "array": [768]} + bytes     float32 values, raw, after the line

Resume reads every file in the folder: their settings must be the run's (else SettingsMismatch
names each difference); a path's answer is its latest run's; a path answered with a success is
done and skipped. A torn last entry (a kill mid-write) is cut off when the journal is opened.
Finishing merges the files by input index (each file is in index order) and hands the entries to
a writer. The journal stays beside the output afterwards, so a later ``--resume`` can add to it.

A resume appends to a finished output. Once a run has written the output, its finish records
that in ``completed`` (the runs that wrote the file, and the file's size and mtime then). A later
finish orders the entries by group, then input index: the runs up to the first completed one,
then those up to the next, ..., then the runs since the last. So the rows already in the file
keep their order and positions and the new ones come after them, in input order among
themselves; and the kept clustered index of a vectors file (search/) extends with the new rows
instead of being rebuilt. A path keeps its latest answer, placed in the group of the run that
gave it: a failure retried later moves to the later group (for embeddings a failure was never a
row; a records file loses that error record from its place and gets the answer at the end).
The rule holds for every output kind alike, records too (``classify --resume`` adds after the
records written): the journal does not know kinds, and one rule is simpler to say. When the
output is not the file a finish recorded (none yet: a resume after a crash; or it was replaced,
touched, or deleted since), the runs are one group: input order across them, as before.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..files import atomic_write
from ..io.outputs import json_safe, safe_text

VERSION = 1
FILE_NAME = re.compile(r"run(\d+)\.rank(\d+)of(\d+)")
COMPLETED = "completed"  # which runs' finishes wrote the output, and its size and mtime then
# Settings that are not command-line options, and how a difference in them is said.
NOT_OPTIONS = {"command": "by {old}, not {new}", "weights": "with weights {old}, not {new}"}
# settings added after journals were first written, and what an older journal ran with
RECORDED_SINCE = {"backend": "torch"}


class Job(Protocol):
    """The processes of a run (runtime.Distributed): this one's rank, their number, a barrier."""

    rank: int
    world: int

    def barrier(self) -> None: ...
    def all_sum(self, *values: int) -> tuple[int, ...]: ...


class SingleProcess:
    rank, world = 0, 1

    def barrier(self) -> None:
        pass

    def all_sum(self, *values: int) -> tuple[int, ...]:
        return values


@dataclass
class Entry:
    index: int  # position in the run's input stream
    path: str  # the input as written in outputs (safe_text)
    error: str | None = None
    payload: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None


class SettingsMismatch(ValueError):
    """A resume whose record-shaping settings differ from the journal's."""


def journal_dir(output: str) -> str:
    directory, name = os.path.split(os.path.abspath(output))
    return os.path.join(directory, f".{name}.journal")


def describe_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One phrase per setting that differs: ``with --pool cls, not mean``."""

    def shown(value: Any) -> str:
        if isinstance(value, list):
            return "x".join(str(v) for v in value)
        return "none" if value is None else str(value)

    old = {**{key: value for key, value in RECORDED_SINCE.items() if key in new}, **old}
    phrases = []
    for key in [*old, *(k for k in new if k not in old)]:
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key in NOT_OPTIONS:
            phrases.append(NOT_OPTIONS[key].format(old=shown(before), new=shown(after)))
        elif isinstance(before, bool) or isinstance(after, bool):
            phrases.append(f"with --{key}, not without" if before else f"without --{key}, not with")
        else:
            phrases.append(f"with --{key} {shown(before)}, not {shown(after)}")
    return phrases


# --------------------------------------------------------------------------- one file


def encode(index: int, path: str, error: str | None, payload: Any) -> bytes:
    entry: dict[str, Any] = {"index": index, "path": safe_text(path)}
    data = b""
    if error is not None:
        entry["error"] = error
    elif isinstance(payload, np.ndarray):
        values = np.ascontiguousarray(payload, dtype="<f4")
        entry["array"] = list(values.shape)
        data = memoryview(values).cast("B").tobytes()
    else:
        entry["value"] = json_safe(payload)
    return json.dumps(entry, allow_nan=False).encode("ascii") + b"\n" + data


def read_header(path: str) -> dict[str, Any] | None:
    """A journal file's header, or None when it is torn or not a journal."""
    with contextlib.suppress(OSError, ValueError), open(path, "rb") as file:
        line = file.readline()
        header = json.loads(line) if line.endswith(b"\n") else None
        if isinstance(header, dict) and header.get("journal") == VERSION:
            return header
    return None


def read_entries(path: str, payloads: bool = True) -> Iterator[tuple[Entry, int]]:
    """(entry, byte offset after it) for each whole entry, stopping at a torn or bad one."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if not file.readline().endswith(b"\n"):
            return
        while True:
            line = file.readline()
            if not line.endswith(b"\n"):
                return
            try:
                data = json.loads(line)
                entry = Entry(int(data["index"]), str(data["path"]), data.get("error"))
                shape = tuple(int(n) for n in data["array"]) if "array" in data else None
            except (ValueError, KeyError, TypeError):
                return
            if shape is None:
                entry.payload = data.get("value")
            elif payloads:
                raw = file.read(4 * math.prod(shape))
                if len(raw) < 4 * math.prod(shape):
                    return
                entry.payload = np.frombuffer(raw, dtype="<f4").reshape(shape)
            else:
                file.seek(4 * math.prod(shape), os.SEEK_CUR)
                if file.tell() > size:
                    return
            yield entry, file.tell()


def repair(path: str) -> None:
    """Cut a torn tail off a journal file; remove a file whose header never got written."""
    if read_header(path) is None:
        os.unlink(path)
        return
    end = 0
    with open(path, "rb") as file:
        end = len(file.readline())
    for _, end in read_entries(path, payloads=False):  # noqa: B007 - the last one counts
        pass
    if os.path.getsize(path) > end:
        os.truncate(path, end)


# --------------------------------------------------------------------------- the journal


class Journal:
    """The journal of `output` for one process of a run. See the module docstring.

    ``open()`` (every rank) prepares the folder and returns the paths already done;
    ``append`` writes a result; ``close()`` makes this process's file durable; ``entries()``
    merges every file in output order (after every rank has closed); ``mark_completed()`` says
    the output was written from them.
    """

    def __init__(
        self, output: str, settings: dict[str, Any], *, resume: bool, job: Job | None = None
    ) -> None:
        self.output = output
        self.folder = journal_dir(output)
        self.settings = json.loads(json.dumps(json_safe(settings)))  # as read back
        self.resume = resume
        self.job = job or SingleProcess()
        self.file = None
        self.run = 0  # this run's number, set by open()
        self.kept: list[int] | None = None  # the completed runs entries() ordered by

    def files(self) -> list[tuple[int, str]]:
        """(run, path) of every journal file, oldest run first."""
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as entries:
            for entry in entries:
                match = FILE_NAME.fullmatch(entry.name)
                if match:
                    found.append((int(match[1]), int(match[2]), entry.path))
        return [(run, path) for run, _, path in sorted(found)]

    def open(self) -> set[str]:
        name = safe_text(self.output)
        # Every rank checks (the same files), so all stop together, none waits at a barrier.
        if self.resume and not os.path.isdir(self.folder) and os.path.exists(self.output):
            raise ValueError(
                f"--resume: {name} has no journal beside it (written by an older version, "
                "or the journal was deleted): run without --resume to write it anew"
            )
        if self.job.rank == 0:
            if not self.resume:
                shutil.rmtree(self.folder, ignore_errors=True)
            os.makedirs(self.folder, exist_ok=True)
            for _, path in self.files():
                repair(path)
        self.job.barrier()  # the folder is ready and repaired
        files = self.files()
        for _, path in files:
            header = read_header(path) or {}
            differences = describe_differences(header.get("settings", {}), self.settings)
            if differences:
                raise SettingsMismatch(f"--resume: {name} was written {'; '.join(differences)}")
        done = {path for path, ok in self.latest(files).items() if ok}
        self.run = run = max((run for run, _ in files), default=-1) + 1
        self.job.barrier()  # every rank has read the folder before any adds to it
        rank, world = self.job.rank, self.job.world
        path = os.path.join(self.folder, f"run{run:04d}.rank{rank}of{world}")
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        header = {"journal": VERSION, "settings": self.settings, "rank": rank, "world": world}
        self.file.write(json.dumps(header).encode("ascii") + b"\n")
        self.file.flush()
        return done

    @staticmethod
    def latest(files: list[tuple[int, str]]) -> dict[str, bool]:
        """path -> whether its latest answer is a success; memory grows with the inputs done."""
        answers: dict[str, bool] = {}
        for _, path in files:
            for entry, _ in read_entries(path, payloads=False):
                answers[entry.path] = entry.ok
        return answers

    def append(self, index: int, path: str, error: str | None, payload: Any) -> None:
        assert self.file is not None
        self.file.write(encode(index, path, error, payload))
        self.file.flush()  # to the OS: a killed process keeps it

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def completed(self) -> list[int]:
        """The runs whose finishes wrote the output (oldest first), if it is still the file the
        last one left (same size and mtime); else [] (none yet, or it was replaced since)."""
        try:
            with open(os.path.join(self.folder, COMPLETED), encoding="utf-8") as file:
                record = json.load(file)
            runs = sorted(int(run) for run in record["runs"])
            stat = os.stat(self.output)
            if record["file"] == [stat.st_size, stat.st_mtime_ns]:
                return runs
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return []

    def mark_completed(self) -> None:
        """Record that this run wrote the output (rank 0, after writing it from entries())."""
        stat = os.stat(self.output)
        kept = self.completed() if self.kept is None else self.kept
        record = {"runs": [*kept, self.run], "file": [stat.st_size, stat.st_mtime_ns]}
        with atomic_write(os.path.join(self.folder, COMPLETED)) as file:
            json.dump(record, file)

    def entries(self) -> Iterator[Entry]:
        """Every input's latest answer (a path's latest run wins): the answers of the runs that
        wrote the output first, as they are in it, then the later runs' in input order."""
        self.kept = kept = self.completed()
        files = self.files()
        latest_run: dict[str, int] = {}
        for run, path in files:
            for entry, _ in read_entries(path, payloads=False):
                latest_run[entry.path] = run

        def answers(run: int, path: str) -> Iterator[tuple[int, Entry]]:
            group = bisect.bisect_left(kept, run)  # how many completed runs came before it
            for entry, _ in read_entries(path):
                if latest_run[entry.path] == run:
                    yield group, entry

        streams = [answers(run, path) for run, path in files]
        for _, entry in heapq.merge(*streams, key=lambda pair: (pair[0], pair[1].index)):
            yield entry

    def remove(self) -> None:
        """Delete the journal (once its output is written and nothing will resume it)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
