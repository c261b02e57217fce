"""`duplicates NEW... --against COLLECTION`: which new items already have a near copy in a
collection, and which new items are near copies of each other.

Each new vector's nearest collection rows come from the index's `nearest` (exact, or the kept
clustered or approximate index of the collection's vectors file: one query against a million
rows loads the kept index and scores its clusters' members instead of a million vectors), and
the pairs among the new items from `similar_pairs`, both rescored exactly, so a match is at or
above the threshold by its float32 cosine. A matched pair of local files of the same size is
also compared byte for byte: the record then says it is an exact copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.outputs import safe_text
from .grouping import NEIGHBOURS, file_digest, local_file

IN_COLLECTION = "collection"
IN_NEW = "new"


@dataclass
class Match:
    """New row `row` is a near copy (cosine `score`) of row `other` of the collection
    (`within` == "collection") or of another new row (`within` == "new", row < other)."""

    row: int
    other: int
    score: float
    within: str


def against_matches(
    collection: np.ndarray,
    new: np.ndarray,
    threshold: float,
    *,
    index: str = "auto",
    saved: Path | None = None,
    neighbours: int = NEIGHBOURS,
    paths: Sequence[str] | None = None,
    note: Callable[[str], None] | None = None,
) -> list[Match]:
    """The matches at or above `threshold` of each `new` row in `collection` (at most
    `neighbours` per row, the best first) and among the `new` rows, in new-row order. `index`
    as index.choose_index takes it, for the collection; an approximate index of the collection
    is kept at `saved` (index.ApproximateIndex), a clustered one too (index.nearest; `paths`,
    the collection's, are part of its fingerprint; `note` hears why it was rebuilt)."""
    from .index import choose_index, nearest, similar_pairs

    matches: list[Match] = []
    if len(new) == 0:
        return matches
    method = choose_index(index, len(collection))
    wanted = min(neighbours, len(collection))
    found = nearest(collection, new, wanted, method, saved, paths=paths, note=note)
    for row in range(len(new)):
        for score, other in zip(found.scores[row], found.indices[row].tolist(), strict=True):
            if other >= 0 and score >= threshold:
                matches.append(Match(row, other, float(score), IN_COLLECTION))
    if len(new) > 1:
        among = choose_index(index, len(new))
        pairs = similar_pairs(new, threshold, min(neighbours, len(new) - 1), index=among)
        best: dict[tuple[int, int], float] = {}
        for first, second, score in pairs:
            key = (min(first, second), max(first, second))
            best[key] = max(score, best.get(key, -1.0))
        matches += [Match(a, b, s, IN_NEW) for (a, b), s in best.items()]
    order = {IN_COLLECTION: 0, IN_NEW: 1}
    return sorted(matches, key=lambda m: (m.row, order[m.within], -m.score, m.other))


def match_records(
    matches: list[Match],
    new_paths: Sequence[str],
    collection_paths: Sequence[str],
    *,
    new_bases: Sequence[str] = (),
    collection_bases: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """One JSON-ready record per match: ``{"path", "match", "score", "in", "exact"}``, where
    `exact` says both are local files with the same bytes (relative paths looked up as
    grouping.local_file does, in each side's `bases`)."""
    digests: dict[str, bytes | None] = {}

    def digest(path: str | None) -> bytes | None:
        if path is None:
            return None
        if path not in digests:
            digests[path] = file_digest(path)
        return digests[path]

    def same_bytes(first: str | None, second: str | None) -> bool:
        if first is None or second is None:
            return False
        try:
            if os.path.getsize(first) != os.path.getsize(second):
                return False
        except OSError:
            return False
        return digest(first) is not None and digest(first) == digest(second)

    records = []
    for match in matches:
        path = new_paths[match.row]
        if match.within == IN_COLLECTION:
            other, other_bases = collection_paths[match.other], collection_bases
        else:
            other, other_bases = new_paths[match.other], new_bases
        exact = same_bytes(local_file(path, new_bases), local_file(other, other_bases))
        records.append(
            {
                "path": safe_text(path),
                "match": safe_text(other),
                "score": round(match.score, 6),
                "in": match.within,
                "exact": exact,
            }
        )
    return records
