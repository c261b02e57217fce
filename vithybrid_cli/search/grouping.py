"""Duplicate groups: exact copies (same bytes) and near-duplicates (cosine >= a threshold).

How groups form. Connected components of the "similar enough" graph chain: A looks like B, B
like C, so A, B and C are one group even when A and C are far apart, and a long enough chain
swallows unrelated pictures (a burst of photos panning across a scene becomes one group). A
group's score, the lowest similarity inside it, would then say little. So groups are formed by
complete linkage instead: pairs are taken strongest first, and two groups merge only when every
pair across them is at least the threshold. Every pair inside a group is then >= the threshold,
and the score (the lowest pair) is >= it too: what a reviewer expects when told "these are
copies of each other". Files with the same bytes are always one group (score 1.0), whatever
the threshold; a near copy that joins them makes the group near (its score below 1.0), and the
group still says which of its files are byte copies of each other (`Group.copies`).

Each vector's neighbours are its `max_neighbours` nearest (index.py); a group can hold at most
max_neighbours + 1 files, far more than near-duplicates come in.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io.outputs import local_candidates, safe_text

HASH_CHUNK = 1 << 20


@dataclass
class Group:
    """Rows of one duplicate group, in input order; `score` is the lowest similarity between
    two of them; `exact` when they all hold the same bytes; `copies`, the sets of its rows that
    hold the same bytes (each of two or more rows, in input order), all of `rows` when exact."""

    rows: list[int]
    score: float
    exact: bool
    copies: list[list[int]] = field(default_factory=list)


def local_file(path: str, bases: Sequence[str] = ()) -> str | None:
    """Where the local file a recorded path names is now, or None (a URL, an archive member, a
    file gone since). A relative path is looked up in the current folder, then in each of
    `bases`: vectors written in another folder record paths relative to that folder. An escaped
    name (not UTF-8, or with a newline) is found again (io.outputs.local_candidates)."""
    for candidate in local_candidates(path, bases):
        try:
            if os.path.isfile(candidate):
                return candidate
        except (OSError, ValueError):  # a NUL or an over-long name in a recorded path
            continue
    return None


def same_bytes(paths: list[str], bases: Sequence[str] = ()) -> list[list[int]]:
    """Rows whose local files hold the same bytes, in groups of two or more: files are grouped
    by size, and only sizes that repeat are hashed (BLAKE2b). Paths that are not local files
    (URLs, archive members, files gone since) are left out; relative ones are found as
    `local_file` finds them."""
    by_size: dict[int, list[int]] = defaultdict(list)
    located: dict[int, str] = {}
    for row, path in enumerate(paths):
        found = local_file(path, bases)
        if found is None:
            continue
        try:
            by_size[os.path.getsize(found)].append(row)
            located[row] = found
        except OSError:
            continue
    by_digest: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for size, rows in by_size.items():
        if len(rows) < 2:
            continue
        for row in rows:
            digest = file_digest(located[row])
            if digest is not None:
                by_digest[size, digest].append(row)
    return sorted(rows for rows in by_digest.values() if len(rows) > 1)


def file_digest(path: str) -> bytes | None:
    digest = hashlib.blake2b(digest_size=32)
    try:
        with open(path, "rb") as file:
            while chunk := file.read(HASH_CHUNK):
                digest.update(chunk)
    except OSError:
        return None
    return digest.digest()


def group_duplicates(
    pairs: Iterable[tuple[int, int, float]], threshold: float, copies: list[list[int]] = ()
) -> list[Group]:
    """Complete-linkage groups (see the module docstring) of the `pairs` (row, row, cosine)
    at or above `threshold`, with each list of byte-identical `copies` one group (similarity
    1.0 between them). Groups come in the order of their first row."""
    similarity: dict[tuple[int, int], float] = {}
    for first, second, score in pairs:
        if score >= threshold and first != second:
            key = (min(first, second), max(first, second))
            similarity[key] = max(score, similarity.get(key, -1.0))
    exact: set[tuple[int, int]] = set()
    for rows in copies:
        for position, first in enumerate(rows):
            for second in rows[position + 1 :]:
                key = (min(first, second), max(first, second))
                similarity[key] = 1.0
                exact.add(key)

    group_of: dict[int, list[int]] = {}

    def linked(left: list[int], right: list[int]) -> bool:
        return all((min(a, b), max(a, b)) in similarity for a in left for b in right)

    # strongest first; exact copies (1.0 by definition) ahead of near ones that score 1.0
    order = sorted(similarity, key=lambda key: (key not in exact, -similarity[key], key))
    for first, second in order:
        left = group_of.setdefault(first, [first])
        right = group_of.setdefault(second, [second])
        if left is right or not linked(left, right):
            continue
        if len(left) < len(right):
            left, right = right, left
        left.extend(right)
        for row in right:
            group_of[row] = left

    groups, seen = [], set()
    for members in group_of.values():
        if id(members) in seen or len(members) < 2:
            continue
        seen.add(id(members))
        rows = sorted(members)
        keys = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1 :]]
        score = min(similarity[key] for key in keys)
        # a set of byte copies is linked at 1.0 before anything else, so it is in one group
        inside = [sorted(same) for same in copies if same[0] in members and len(same) > 1]
        groups.append(Group(rows, score, all(key in exact for key in keys), sorted(inside)))
    return sorted(groups, key=lambda group: group.rows[0])


NEIGHBOURS = 64  # nearest neighbours looked at per vector: bounds a group's size and memory


def find_duplicates(
    array: np.ndarray,
    paths: list[str],
    threshold: float,
    *,
    index: str = "auto",
    neighbours: int = NEIGHBOURS,
    compare_bytes: bool = True,
    bases: Sequence[str] = (),
    saved: Path | None = None,
    note: Callable[[str], None] | None = None,
) -> list[Group]:
    """Duplicate groups among the rows of `array` (see the module docstring): near-duplicates
    at cosine >= `threshold` by the `index` (index.choose_index), and, with `compare_bytes`,
    rows whose `paths` are local files with the same bytes (relative ones looked up in the
    current folder, then in `bases`). An approximate index is kept at `saved` (see
    index.ApproximateIndex, or clustered.KeptIndex); `note` hears the clustered index's notes."""
    from .index import choose_index, similar_pairs

    if len(array) < 2:
        return []
    method = choose_index(index, len(array))
    pairs = similar_pairs(
        array,
        threshold,
        min(neighbours, len(array) - 1),
        index=method,
        saved=saved,
        paths=paths,
        note=note,
    )
    copies = same_bytes(paths, bases) if compare_bytes else []
    return group_duplicates(pairs, threshold, copies)


def group_records(
    groups: list[Group], paths: list[str], keep: str | None = None, bases: Sequence[str] = ()
) -> tuple[list[dict[str, Any]], list[str]]:
    """(one JSON-ready record per group, the files to review): ``{"paths", "score", "exact",
    "copies"}`` (copies: the lists of its paths that are byte copies of each other, [] when
    none), with `keep` (first / largest) the kept file first and as ``"keep"``, the others
    listed."""
    records, review = [], []
    for group in groups:
        rows = keeper_first(group.rows, paths, keep, bases) if keep else group.rows
        record: dict[str, Any] = {
            "paths": [safe_text(paths[row]) for row in rows],
            "score": round(group.score, 6),
            "exact": group.exact,
            "copies": [[safe_text(paths[row]) for row in same] for same in group.copies],
        }
        if keep:
            record["keep"] = record["paths"][0]
            review.extend(record["paths"][1:])
        records.append(record)
    return records, review


def keeper_first(
    rows: list[int], paths: list[str], keep: str, bases: Sequence[str] = ()
) -> list[int]:
    """`rows` with the one to keep first: `first` in input order, `largest` the most pixels
    (then the most bytes; files that cannot be read count as 0); the rest in input order."""
    if keep == "first":
        return list(rows)
    if keep != "largest":
        raise ValueError(f"unknown keep policy {keep!r}: use first or largest")
    kept = max(rows, key=lambda row: (*image_size_of(local_file(paths[row], bases)), -row))
    return [kept, *(row for row in rows if row != kept)]


def image_size_of(path: str | None) -> tuple[int, int]:
    """(pixels, bytes) of a local image from its header; (0, 0) when it cannot be read."""
    header = image_header(path) if path else None
    return (header[0] * header[1], header[2]) if header else (0, 0)


def image_header(path: str) -> tuple[int, int, int] | None:
    """(width, height, bytes) of a local image, from its header only; None when unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
        return width, height, os.path.getsize(path)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
