"""Sorting a classify run's photos into one folder per label, and undoing a sort by moves.

    RESULTS (any classify output) -> DIR/LABEL/photo.jpg    (the layout `vithybrid fit` reads)
                                     DIR/_unsure/photo.jpg  (abstained, or below --min-score)

Each photo is placed as a symlink (absolute target: the default, so a person can drag the links
between folders and refit), a copy, or moved. Nothing is ever overwritten: every file is created
so that it fails on an existing name (symlink, O_EXCL, a hard link then unlink), and a taken name
gets a suffix (cat.jpg, cat-1.jpg, ...; in results order). Failed inputs are left out; a photo
listed twice is placed once; a link that DIR already holds to the same photo is not made again.

A move writes a manifest first, DIR/.vithybrid-sort-TIME.jsonl (hidden: fit skips it): a header
line, then one {"from", "to"} line per move, written and fsynced BEFORE the file moves, so a sort
killed mid-way is undone for every move it made. `undo_moves` reads it back (a torn last line, a
move never started, is ignored), refuses the whole file on a line that is not one (or a "to"
outside DIR) before moving anything, and then moves each file back unless something else now
sits at its old place, reporting the files gone since.

Label names become folder names by `folder_name` (a documented mapping; see its docstring).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .outputs import local_candidates
from .results import Row, read_results

MODES = ("link", "copy", "move")
UNSURE = "_unsure"  # abstained, or below --min-score
MANIFEST_PREFIX = ".vithybrid-sort-"
MANIFEST_FORMAT = "vithybrid-sort-moves"
MAX_NAME_BYTES = 200  # well under the 255 bytes a file name may take, leaving room for "-N"


class SortError(ValueError):
    """A sort (or undo) that cannot start: one line naming the file or value."""


# ---------------------------------------------------------------------------- folder names


def folder_name(label: str) -> str:
    """The folder a label's photos go to: `/`, `\\` and control characters become `_`, spaces
    around it are trimmed, leading dots become `_` (no hidden folder, no `.` or `..`), an empty
    name becomes `_empty`, and a name over 200 bytes (UTF-8) is cut. Two labels that would share
    a folder (or take `_unsure`) are told apart by `folder_names`."""
    name = "".join("_" if char in "/\\" or ord(char) < 32 or ord(char) == 127 else char
                   for char in label).strip()  # fmt: skip
    stripped = name.lstrip(".")
    name = "_" * (len(name) - len(stripped)) + stripped
    if not name:
        return "_empty"
    while len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        name = name[:-1]
    return name


def folder_names(labels: Iterable[str]) -> dict[str, str]:
    """label -> its folder, in first-seen order; a folder name already taken (by another label,
    case ignored as macOS and Windows ignore it, or `_unsure`) gets -2, -3, ..."""
    taken = {UNSURE.casefold()}
    folders: dict[str, str] = {}
    for label in labels:
        if label in folders:
            continue
        base = name = folder_name(label)
        number = 1
        while name.casefold() in taken:
            number += 1
            name = f"{base}-{number}"
        taken.add(name.casefold())
        folders[label] = name
    return folders


# ---------------------------------------------------------------------------- sorting


@dataclass
class SortReport:
    """What a sort did (counts are photos)."""

    into: str
    mode: str
    placed: int = 0
    folders: list[str] = field(default_factory=list)  # label folders that got photos
    below: int = 0  # below --min-score: into _unsure
    abstained: int = 0  # a decision of no label: into _unsure
    failures: int = 0  # failed inputs in RESULTS, left out
    repeated: int = 0  # a photo listed again, placed once
    already: int = 0  # a link DIR already held to the photo (a sort run again)
    not_found: list[str] = field(default_factory=list)  # recorded paths with no local file
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, why) placing failed
    manifest: str | None = None  # --move: the file `undo_moves` reads


@dataclass
class _Photo:
    row: Row
    local: str  # absolute path of the file now
    folder: str
    why: str = ""  # "below" or "abstained" for _unsure


def sort_results(
    results_path: str,
    into: str,
    *,
    mode: str = "link",
    min_score: float | None = None,
    root: str | None = None,
) -> SortReport:
    """Place the photos of classify output `results_path` into `into`/LABEL/ (see the module's
    docstring). Relative paths are looked up from the current folder, then `root`, then the
    results' folder. SortError (nothing done) for a sort that cannot start."""
    if mode not in MODES:
        raise SortError(f"mode {mode!r}: one of {', '.join(MODES)}")
    results = read_results(results_path)
    into = os.path.abspath(into)
    if os.path.lexists(into) and not os.path.isdir(into):
        raise SortError(f"--into {into}: exists and is not a folder")
    report = SortReport(into, mode, failures=sum(not row.ok for row in results.rows))
    photos = _locate(results.rows, results_path, root, min_score, report)
    _check_not_inside_inputs(into, [photo.local for photo in photos], mode)
    if mode == "move":
        _check_same_file_system(into, [photo.local for photo in photos])
    os.makedirs(into, exist_ok=True)
    linked = _links_in(into) if mode == "link" else set()
    manifest = _Manifest.create(into) if mode == "move" else None
    report.manifest = manifest.path if manifest else None
    used: set[str] = set()
    try:
        for photo in photos:
            if mode == "link" and photo.local in linked:
                report.already += 1
                continue
            try:
                _place(photo, into, mode, manifest)
            except OSError as error:
                report.errors.append((photo.row.path, error.strerror or str(error)))
                continue
            report.placed += 1
            used.add(photo.folder)
            report.below += photo.why == "below"
            report.abstained += photo.why == "abstained"
    finally:
        if manifest:
            manifest.close()
    report.folders = sorted(used - {UNSURE})
    return report


def _locate(rows: list[Row], results_path: str, root: str | None, min_score: float | None,
            report: SortReport) -> list[_Photo]:  # fmt: skip
    """The photos to place, in results order, each with its folder; the rest counted."""
    results_folder = results_path if os.path.isdir(results_path) else os.path.dirname(results_path)
    bases = [root, results_folder or "."] if root else [results_folder or "."]
    folders = folder_names(row.label for row in rows if row.ok and row.label is not None)
    photos, seen = [], set()
    for row in rows:
        if not row.ok:
            continue
        local = _local_file(row.path, bases)
        if local is None:
            report.not_found.append(row.path)
            continue
        key = os.path.realpath(local)
        if key in seen:
            report.repeated += 1
            continue
        seen.add(key)
        if row.label is None:
            photos.append(_Photo(row, local, UNSURE, "abstained"))
        elif min_score is not None and (row.score is None or row.score < min_score):
            photos.append(_Photo(row, local, UNSURE, "below"))
        else:
            photos.append(_Photo(row, local, folders[row.label]))
    return photos


def _local_file(path: str, bases: list[str]) -> str | None:
    """The absolute path of the local file `path` names (as report and duplicates look for it,
    io.outputs.local_candidates), or None: a URL, an archive member, a file gone since."""
    for candidate in local_candidates(path, bases):
        try:
            if os.path.isfile(candidate):
                return os.path.abspath(candidate)
        except (OSError, ValueError):  # a NUL or an over-long name in a recorded path
            continue
    return None


def _check_not_inside_inputs(into: str, sources: list[str], mode: str) -> None:
    """Refuse a DIR inside a folder of the photos, or inside the folder they all share (where
    classify most likely walked; unless that is `/` or holds the home folder): classifying that
    folder again would walk the sorted photos too."""
    if not sources:
        return
    target = os.path.realpath(into)
    folders = {os.path.dirname(os.path.realpath(source)) for source in sources}
    common = os.path.commonpath(sorted(folders))
    home = os.path.realpath(os.path.expanduser("~"))
    if common != os.path.dirname(common) and not _inside(home, common):
        folders.add(common)
    for folder in sorted(folders, key=len):
        if _inside(target, folder):
            what = {"link": "links", "copy": "copies", "move": "photos"}[mode]
            raise SortError(
                f"--into {into} is inside {folder}, a folder of RESULTS' photos: classifying it "
                f"again would walk the sorted {what} too; sort into a folder outside it"
            )


def _inside(path: str, folder: str) -> bool:
    """`path` is `folder` or below it (both absolute)."""
    return os.path.commonpath([path, folder]) == folder


def device_of(path: str) -> int:
    """The file system (st_dev) of `path`, or of its nearest existing folder. A function of its
    own so tests can make a source look like it is on another file system."""
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return os.lstat(path).st_dev


def _check_same_file_system(into: str, sources: list[str]) -> None:
    """A move is a rename: across file systems it would fail (EXDEV) after some moves were made,
    so every source is checked before the first one moves (and a relative symlink, which a move
    would break)."""
    target = device_of(into)
    for source in sources:
        if os.path.islink(source) and not os.path.isabs(os.readlink(source)):
            raise SortError(
                f"--move: {source} is a symlink with a relative target: moved, it would point "
                "elsewhere; use --copy or --link"
            )
        if device_of(source) != target:
            raise SortError(
                f"--move: {source} is on another file system than {into}: a move there would "
                "copy and delete; use --copy or --link, or sort into a folder on its file system"
            )


def _links_in(into: str) -> set[str]:
    """The targets of the symlinks already below `into` (a sort run again makes no new ones)."""
    targets = set()
    for folder, _, names in os.walk(into):
        for name in names:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if os.path.islink(path):
                    targets.add(os.path.join(folder, os.readlink(path)))
    return {os.path.normpath(target) for target in targets}


def _place(photo: _Photo, into: str, mode: str, manifest: _Manifest | None) -> str:
    """Create the photo's file in into/folder under a free name; the name used."""
    folder = os.path.join(into, photo.folder)
    os.makedirs(folder, exist_ok=True)
    for target in _free_names(folder, os.path.basename(photo.local)):
        try:
            if mode == "link":
                os.symlink(photo.local, target)
            elif mode == "copy":
                _copy_new(photo.local, target)
            else:
                assert manifest is not None
                manifest.add(photo.local, target)  # on disk before the move starts
                move_new(photo.local, target)
        except FileExistsError:  # taken since the name was chosen: the next one
            continue
        return target
    raise AssertionError("unreachable: _free_names never ends")


def _free_names(folder: str, name: str) -> Iterable[str]:
    """folder/name, then folder/stem-1.suffix, -2, ... each one free when offered."""
    stem, suffix = os.path.splitext(name)
    number = 0
    while True:
        candidate = os.path.join(folder, name if number == 0 else f"{stem}-{number}{suffix}")
        number += 1
        if not os.path.lexists(candidate):
            yield candidate


def _copy_new(source: str, target: str) -> None:
    """Copy `source` to a `target` that must not exist yet (O_EXCL); a failed copy leaves none."""
    import shutil

    descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as out, open(source, "rb") as data:
            shutil.copyfileobj(data, out, 8 << 20)
        shutil.copystat(source, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise


# errors of os.link on a file system without hard links: then a checked rename
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}


def move_new(source: str, target: str) -> None:
    """Move `source` to `target`, failing (FileExistsError) when `target` exists: a hard link
    then an unlink, so no existing file is replaced; where hard links are not supported, a
    rename after checking the name is free."""
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in NO_HARD_LINKS:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "File exists", target) from None
        os.rename(source, target)
        return
    os.unlink(source)


# ---------------------------------------------------------------------------- the manifest


class _Manifest:
    """--move's record of its moves: appended line by line, each fsynced before its move."""

    def __init__(self, path: str, descriptor: int) -> None:
        self.path, self.descriptor = path, descriptor

    @classmethod
    def create(cls, into: str) -> _Manifest:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for number in range(1000):
            name = f"{MANIFEST_PREFIX}{stamp}{f'-{number}' if number else ''}.jsonl"
            path = os.path.join(into, name)
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                                     0o644)  # fmt: skip
            except FileExistsError:
                continue
            manifest = cls(path, descriptor)
            manifest._write({"format": MANIFEST_FORMAT, "into": into})
            _fsync_folder(into)
            return manifest
        raise SortError(f"--into {into}: no free name for the move manifest")

    def add(self, source: str, target: str) -> None:
        self._write({"from": source, "to": target})

    def _write(self, record: dict[str, str]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        os.write(self.descriptor, line.encode("utf-8", "surrogateescape"))
        os.fsync(self.descriptor)

    def close(self) -> None:
        os.close(self.descriptor)


def _fsync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):  # where folders open: the new name survives a crash
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


@dataclass
class UndoReport:
    manifest: str
    moved_back: int = 0
    in_place: int = 0  # already at its old place (undone before, or never moved)
    blocked: list[str] = field(default_factory=list)  # another file at the old place: kept
    missing: list[str] = field(default_factory=list)  # gone from DIR since (moved, deleted)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def read_manifest(path: str) -> tuple[str, list[tuple[str, str]]]:
    """DIR and the (from, to) moves of a manifest; SortError (one line) on any line that is not
    one, or a "to" outside the DIR the manifest lies in."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise SortError(f"{name}: {error.strerror or error}") from None
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    records = [(number, raw) for number, raw in enumerate(lines, 1) if raw.strip()]
    if torn.strip():  # no newline: a line cut mid-write (its move never started), or hand-made
        with contextlib.suppress(ValueError):
            json.loads(torn)
            records.append((len(lines) + 1, torn))
    if not records:
        raise SortError(f"{name}: empty, not a move manifest of `vithybrid sort --move`")
    (first, header), *moves = [(number, _json_line(name, number, raw)) for number, raw in records]
    if not isinstance(header, dict) or header.get("format") != MANIFEST_FORMAT:
        raise SortError(f"{name}:{first}: not a move manifest of `vithybrid sort --move`")
    into = os.path.dirname(os.path.abspath(name))
    if not isinstance(header.get("into"), str) or os.path.realpath(header["into"]) != (
        os.path.realpath(into)
    ):
        raise SortError(
            f"{name}:{first}: written for --into {header.get('into')!r}, but it lies in {into}: "
            "undo from the manifest in the folder sort wrote it to"
        )
    return header["into"], [_move_of(name, number, record, header["into"])
                            for number, record in moves]  # fmt: skip


def _json_line(name: str, number: int, raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        shown = raw[:40].decode("utf-8", "replace")
        raise SortError(f"{name}:{number}: not a manifest line (got {shown!r})") from None


def _move_of(name: str, number: int, record: object, into: str) -> tuple[str, str]:
    where = f"{name}:{number}"
    if not isinstance(record, dict) or not all(
        isinstance(record.get(key), str) and os.path.isabs(record[key]) for key in ("from", "to")
    ):
        raise SortError(f'{where}: a manifest line is {{"from": ABSOLUTE, "to": ABSOLUTE}}')
    target = os.path.normpath(record["to"])
    if target == into or not _inside(target, os.path.normpath(into)):
        raise SortError(f"{where}: to {record['to']!r} is not inside {into}")
    return record["from"], target


def _same_file(one: str, other: str) -> bool:
    try:
        a, b = os.lstat(one), os.lstat(other)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def undo_moves(manifest: str) -> UndoReport:
    """Move every file a `sort --move` moved back (last move first); see the module docstring."""
    into, moves = read_manifest(manifest)
    report = UndoReport(manifest)
    for source, target in reversed(moves):
        if not os.path.lexists(target):
            if os.path.lexists(source):
                report.in_place += 1
            else:
                report.missing.append(target)
            continue
        try:
            if _same_file(source, target):  # killed between a move's link and its unlink
                os.unlink(target)
            else:
                os.makedirs(os.path.dirname(source), exist_ok=True)
                move_new(target, source)
        except FileExistsError:
            report.blocked.append(source)
            continue
        except OSError as error:
            report.errors.append((target, error.strerror or str(error)))
            continue
        report.moved_back += 1
    for folder in sorted({os.path.dirname(target) for _, target in moves}, reverse=True):
        if folder != os.path.normpath(into):  # label folders the undo emptied
            with contextlib.suppress(OSError):
                os.rmdir(folder)
    return report
