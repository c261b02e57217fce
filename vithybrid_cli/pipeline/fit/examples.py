"""Labeled examples for a head: label folders or a labels file (CSV/JSONL), and the split.

    DATA/invoice/*.jpg, DATA/receipt/*.jpg, ...   (or a CSV/JSONL of path,label)
      -> Examples: (path, label) pairs, plus the files that could not be read and warnings
      -> corrections applied (a person's later word on a label wins over the folder)
      -> stratified, seeded train/validation split (indices per class)

Per-image failures are collected, not raised; data that cannot make a head raises FitError.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ...data.inputs import iter_inputs
from ...data.items import InputItem, WalkNotes, display_path
from ...io.sorting import UNSURE


class FitError(ValueError):
    """Training data that cannot make a head; one line, naming the file or label."""


@dataclass(frozen=True)
class Example:
    path: str
    label: str


@dataclass
class Examples:
    """Labeled images found, plus what went wrong finding them."""

    items: list[Example] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    warnings: list[str] = field(default_factory=list)


def collect_folder(root: str, exclude: Sequence[str] = ()) -> Examples:
    """ImageFolder convention: one subfolder per label, images anywhere below it.

    A top-level `_unsure` folder is left out: `vithybrid sort` puts the photos it was unsure of
    there, and they are not a label until a person moves them into one."""
    if not os.path.exists(root):
        raise FitError(f"{display_path(root)}: no such folder")
    if not os.path.isdir(root):
        raise FitError(
            f"{display_path(root)} is not a folder: give one subfolder per label, "
            "or a CSV/JSONL of path,label with --labels-from"
        )
    excluded = {os.path.realpath(path) for path in exclude}
    found, notes = Examples(), WalkNotes()
    loose = 0
    with os.scandir(root) as scan:
        entries = sorted(
            (entry for entry in scan if not entry.name.startswith(".")),
            key=lambda entry: os.fsencode(entry.name),
        )
    for entry in entries:
        if not entry.is_dir():
            loose += entry.is_file()
            continue
        if os.path.realpath(entry.path) in excluded:
            continue
        if entry.name == UNSURE:
            unsure = sum(isinstance(item, InputItem) for item in iter_inputs([entry.path]))
            found.warnings.append(
                f"left out {UNSURE}/ ({unsure} photo{'s' * (unsure != 1)}): sort's unsure ones; "
                "move them into label folders to train on them"
            )
            continue
        before = len(found.items)
        for item in iter_inputs([entry.path], notes=notes):
            if isinstance(item, InputItem):
                found.items.append(Example(item.path, entry.name))
            elif (
                item.message.startswith("directory contains no images") and item.path == entry.path
            ):
                pass  # reported below, as a skipped label
            else:
                found.errors.append((item.path, item.message))
        if len(found.items) == before:
            found.warnings.append(f"label folder {display_path(entry.path)} has no images: skipped")
    found.warnings += notes.undecodable_lines()  # formats this install cannot decode
    if loose:
        found.warnings.append(
            f"{loose} file(s) directly in {display_path(root)} are in no label folder: ignored"
        )
    if not found.items:
        raise FitError(
            f"{display_path(root)} has no images in label folders: expected "
            f"{display_path(root)}/LABEL/IMAGE, one subfolder per label"
        )
    return found


def collect_labels_file(labels_file: str) -> Examples:
    """Examples from a CSV (path,label; header optional) or JSONL ({"path", "label"}) file.

    Relative paths are relative to the labels file's folder; a path may be a file, a folder or
    a glob (every image it names gets the label).
    """
    try:
        with open(labels_file, encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError as error:
        raise FitError(f"{display_path(labels_file)}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise FitError(f"{display_path(labels_file)}: not UTF-8 text") from None
    base = os.path.dirname(labels_file)
    found, notes = Examples(), WalkNotes()
    for line_number, path, label in _label_rows(labels_file, text):
        if not path or not label:
            raise FitError(f"{display_path(labels_file)}:{line_number}: needs a path and a label")
        spec = path if os.path.isabs(path) else os.path.join(base, path)
        for item in iter_inputs([spec], notes=notes):
            if isinstance(item, InputItem):
                found.items.append(Example(item.path, label))
            else:
                found.errors.append((item.path, item.message))
    found.warnings += notes.undecodable_lines()
    if not found.items:
        raise FitError(f"{display_path(labels_file)}: names no readable images")
    return found


def _label_rows(name: str, text: str) -> Iterator[tuple[int, str, str]]:
    jsonl = name.lower().endswith((".jsonl", ".ndjson")) or text.lstrip().startswith("{")
    if jsonl:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield number, str(row["path"]), str(row["label"])
            except (ValueError, KeyError, TypeError):
                raise FitError(
                    f'{display_path(name)}:{number}: expected {{"path": ..., "label": ...}}'
                ) from None
        return
    for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if number == 1 and [cell.strip().lower() for cell in row[:2]] == ["path", "label"]:
            continue
        if len(row) != 2:
            raise FitError(
                f"{display_path(name)}:{number}: expected 2 columns (path,label), got {len(row)} "
                "(quote labels that contain commas)"
            )
        yield number, row[0].strip(), row[1].strip()


def stratified_split(
    targets: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): per class, a seeded shuffle, at least one of each."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        count = 0
        if val_fraction > 0:
            count = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val.extend(members[:count])
        train.extend(members[count:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def apply_corrections(
    corrections: Mapping[str, str | None], *found: Examples | None
) -> tuple[list[Examples | None], int]:
    """`found` with `corrections` applied (relabeled; dropped where the label is None), and how
    many corrections matched no example.

    Matching: a correction's path is as its source wrote it, relative to where that command ran
    or absolute; it matches the example whose os.path.abspath is that of the text, or of the
    text unescaped (io.outputs.recorded_text: names written with \\xNN escapes).
    """
    from ...io.outputs import recorded_text

    wanted: dict[str, tuple[str, str | None]] = {}  # absolute path -> (the text, its label)
    for text, label in corrections.items():
        for name in (text, recorded_text(text)):
            wanted[os.path.abspath(name)] = (text, label)
    matched: set[str] = set()
    corrected: list[Examples | None] = []
    for examples in found:
        if examples is None:
            corrected.append(None)
            continue
        items = []
        for example in examples.items:
            key = os.path.abspath(example.path)
            if key not in wanted:
                items.append(example)
                continue
            text, label = wanted[key]
            matched.add(text)
            if label is not None:
                items.append(Example(example.path, label))
        corrected.append(Examples(items, examples.errors, examples.warnings))
    return corrected, len(set(corrections) - matched)
