"""Near-duplicate pairs of a large vectors file by exact search inside coarse clusters, and the
kept index that grows with the file (`duplicates --index clustered`, `auto` above a size).

How. The rows are normalized once into a bfloat16 copy (half of float32's memory: 1.5 GiB for
1,000,000 x 768). Spherical k-means on a sample gives ~sqrt(N) centroids (torch.mm). Each row is
assigned to its nearest centroid AND to every other centroid scoring within MARGIN of it (at
most MAX_ASSIGN): two near copies sit close to the same centroids, so a pair across a boundary
still shares a cluster. Inside each cluster every pair is scored (bfloat16 products, a few
hundred rows each); pairs scoring above threshold - SLACK are candidates, and each candidate is
scored again in float32 from the file: a reported score, and the threshold decision, is exact.
A pair whose rows share no cluster is missed, so the run measures what it found against exact
search on a sample of rows (`sampled_recall`) and says so.

The kept index (`KeptIndex`, in the cache, keyed by the file's real path): the centroids, each
row's clusters, the row count, a fingerprint of the rows (sampled rows' bytes, the width, the
paths), and the pairs found at the last threshold. A file that grew by appended rows (the first
N rows fingerprint the same) is extended: only the new rows are assigned and searched against
their clusters' members. A file changed in any other way, a kept index written by another
version, or one that cannot be read, is built again (`KeptIndex.note` says why, once).

Queries (`duplicates NEW --against`, index.nearest): `kept_clusters` loads the same kept index
(or builds and keeps it, without pairs), and `clustered_nearest` scores only the members of each
query's clusters, exactly: one photo against a million rows reads a few thousand of them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FORMAT = "vithybrid-clustered-1"  # bumped when what is kept changes: an older one is rebuilt
MARGIN = 0.08  # a row also joins every centroid scoring within this of its best
MAX_ASSIGN = 4  # ... up to this many clusters
SLACK = 0.02  # bfloat16 candidates above threshold - SLACK are rescored in float32
SAMPLE_PER_CENTROID = 40  # k-means sample: rows per centroid
KMEANS_ROUNDS = 8
BLOCK_ROWS = 16384  # rows read and normalized at a time
TILE_ROWS = 4096  # a cluster larger than this is searched a (TILE, TILE) product at a time
FINGERPRINT_ROWS = 64  # rows sampled (evenly) into a file's fingerprint
RECALL_SAMPLE = 1000  # rows checked against exact search


def centroid_count(count: int) -> int:
    return max(1, min(count // 8, round(math.sqrt(count))))


def normalized_bf16(base: np.ndarray, start: int = 0, stop: int | None = None) -> Any:
    """Rows start..stop of `base`, normalized, as one bfloat16 torch tensor (read by blocks)."""
    import torch

    from .index import normalized

    stop = len(base) if stop is None else stop
    out = torch.empty((stop - start, base.shape[1]), dtype=torch.bfloat16)
    for first in range(start, stop, BLOCK_ROWS):
        last = min(stop, first + BLOCK_ROWS)
        out[first - start : last - start] = normalized(base[first:last]).to(torch.bfloat16)
    return out


def kmeans(rows: Any, count: int, seed: int = 0) -> Any:
    """`count` unit centroids (float32) of the unit `rows` by spherical k-means on a sample."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    sample = min(len(rows), count * SAMPLE_PER_CENTROID)
    picked = torch.randperm(len(rows), generator=generator)[:sample]
    data = rows[picked.sort().values].float()
    centroids = data[torch.randperm(len(data), generator=generator)[:count]].clone()
    for _ in range(KMEANS_ROUNDS):
        nearest = (data @ centroids.T).argmax(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, data)
        empty = sums.norm(dim=1) == 0
        sums[empty] = centroids[empty]  # an empty cluster keeps its centroid
        centroids = torch.nn.functional.normalize(sums, dim=1)
    return centroids


def assign(rows: Any, centroids: Any) -> np.ndarray:
    """(len(rows), MAX_ASSIGN) int32: each row's nearest centroid, then those within MARGIN of
    it, best first; -1 pads."""
    import torch

    width = min(MAX_ASSIGN, len(centroids))
    out = np.full((len(rows), MAX_ASSIGN), -1, np.int32)
    weights = centroids.to(torch.bfloat16)
    for start in range(0, len(rows), BLOCK_ROWS):
        scores = (rows[start : start + BLOCK_ROWS] @ weights.T).float()
        best, which = torch.topk(scores, width, dim=1)
        which[best < best[:, :1] - MARGIN] = -1
        out[start : start + len(which), :width] = which.numpy()
    return out


def members_of(assigned: np.ndarray, clusters: int) -> list[np.ndarray]:
    """The sorted rows of each cluster."""
    rows = np.repeat(np.arange(len(assigned)), assigned.shape[1])
    which = assigned.reshape(-1)
    keep = which >= 0
    rows, which = rows[keep], which[keep]
    order = np.lexsort((rows, which))
    rows, which = rows[order], which[order]
    bounds = np.searchsorted(which, np.arange(clusters + 1))
    return [rows[bounds[c] : bounds[c + 1]] for c in range(clusters)]


def candidate_pairs(
    unit: Any, members: list[np.ndarray], threshold: float, new_from: int = 0, k: int = 64
) -> np.ndarray:
    """(P, 2) int64 row pairs (first < second) sharing a cluster whose bfloat16 score is at
    least threshold - SLACK; with `new_from`, only pairs with a row at or past it. A tile with
    more than k hits per row on average (a low threshold over a dense scene) keeps each row's
    k + 1 best: memory stays bounded, as the exact search's per-row top-k keeps it."""
    import torch

    found: list[np.ndarray] = []
    cut = threshold - SLACK
    for rows in members:
        if len(rows) < 2 or rows[-1] < new_from:
            continue
        index = torch.from_numpy(rows)
        # the cluster's rows, gathered once (as int16: torch gathers bfloat16 rows slower)
        gathered = unit.view(torch.int16)[index].view(torch.bfloat16)
        first_query = int(np.searchsorted(rows, new_from))  # rows are sorted: new ones last
        for q in range(first_query, len(rows), TILE_ROWS):
            query_rows = index[q : q + TILE_ROWS]
            left = gathered[q : q + TILE_ROWS]
            # a full build compares each tile with itself and the tiles after it (a < b);
            # an extension compares its new rows with every row of the cluster
            for c in range(0 if new_from else q, len(rows), TILE_ROWS):
                right_rows = index[c : c + TILE_ROWS]
                scores = left @ gathered[c : c + TILE_ROWS].T
                hit = torch.nonzero(scores >= cut)
                if len(hit) > (k + 1) * len(left):
                    best, where = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)
                    good = torch.nonzero(best >= cut)
                    hit = torch.stack([good[:, 0], where[good[:, 0], good[:, 1]]], 1)
                if len(hit):
                    a, b = query_rows[hit[:, 0]], right_rows[hit[:, 1]]
                    # a new row with an older one, or two new rows once (a < b)
                    keep = (b < new_from) | (a < b) if new_from else a < b
                    pair = torch.stack([torch.minimum(a, b), torch.maximum(a, b)], 1)[keep]
                    found.append(pair.numpy())
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def rescored(base: np.ndarray, pairs: np.ndarray, threshold: float) -> np.ndarray:
    """(P, 3) float64 rows (first, second, float32 cosine) of `pairs` at or above threshold."""
    import torch

    from .index import normalized

    if len(pairs) == 0:
        return np.zeros((0, 3))
    rows, where = np.unique(pairs, return_inverse=True)
    unit = normalized(base[rows])
    where = torch.from_numpy(where.reshape(pairs.shape))
    scores = (unit[where[:, 0]] * unit[where[:, 1]]).sum(dim=1).numpy()
    keep = scores >= threshold
    return np.column_stack([pairs[keep], scores[keep].astype(np.float64)])


def sampled_recall(
    base: np.ndarray,
    found: np.ndarray,
    threshold: float,
    sample: int = RECALL_SAMPLE,
    *,
    unit: Any = None,
    rows_from: int = 0,
) -> tuple[float, int, int]:
    """(recall, rows sampled, exact pairs among them): of the pairs at or above `threshold`
    that exact search finds for a random sample of rows (from `rows_from` on: an extension
    checks its new rows), the share that `found` (P, 3) holds. Every row is compared with the
    sample in bfloat16 (`unit`, the rows normalized, made here when not given), and each pair
    above threshold - SLACK is scored again in float32: the pairs at or above the threshold
    are exact search's."""
    import torch

    unit = normalized_bf16(base) if unit is None else unit
    rng = np.random.default_rng(0)
    rows = rows_from + np.sort(
        rng.choice(len(base) - rows_from, min(sample, len(base) - rows_from), replace=False)
    )
    queries = unit[torch.from_numpy(rows)]
    near: list[np.ndarray] = []
    for start in range(0, len(base), BLOCK_ROWS):
        scores = queries @ unit[start : start + BLOCK_ROWS].T
        hit = torch.nonzero(scores >= threshold - SLACK).numpy()
        near.append(np.column_stack([rows[hit[:, 0]], hit[:, 1] + start]))
    near_pairs = np.concatenate(near)
    near_pairs = near_pairs[near_pairs[:, 0] != near_pairs[:, 1]]
    near_pairs = np.unique(np.sort(near_pairs, axis=1), axis=0)
    exact = rescored(base, near_pairs, threshold)[:, :2].astype(np.int64)
    have = {(int(a), int(b)) for a, b in found[:, :2].astype(np.int64).tolist()}
    hit_count = sum((a, b) in have for a, b in exact.tolist())
    return (hit_count / len(exact) if len(exact) else 1.0), len(rows), len(exact)


# ---------------------------------------------------------------------------- the kept index


def fingerprint(base: np.ndarray, paths: Sequence[str], rows: int) -> str:
    """A digest of the first `rows` rows: the width, FINGERPRINT_ROWS rows' bytes sampled
    evenly (the last included), and their paths. Equal for a file that only grew after them."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{FORMAT}:{base.shape[1]}:{rows}".encode())
    picked = np.unique(np.linspace(0, rows - 1, min(rows, FINGERPRINT_ROWS)).astype(np.int64))
    digest.update(np.ascontiguousarray(base[picked], dtype="<f4").tobytes())
    for path in paths[:rows]:
        digest.update(path.encode("utf-8", "surrogateescape") + b"\n")
    return digest.hexdigest()


def kept_path(source: str) -> Path:
    """Where the clustered index of vectors file `source` is kept: in the cache, by real path."""
    from ..pipeline.runtime import cache_root

    key = os.path.realpath(source).encode("utf-8", "surrogateescape")
    return cache_root() / "clustered" / f"{hashlib.blake2b(key, digest_size=12).hexdigest()}.npz"


@dataclass
class KeptIndex:
    """Centroids (C, D) float32, each row's clusters (N, MAX_ASSIGN), the fingerprint of the N
    rows, and the pairs (P, 3) found at `threshold` (NaN: none kept)."""

    centroids: np.ndarray
    assigned: np.ndarray
    fingerprint: str
    pairs: np.ndarray
    threshold: float

    @classmethod
    def load(cls, path: Path) -> KeptIndex:
        """ValueError when the file is not a whole kept index of this version."""
        try:
            with np.load(path, allow_pickle=False) as kept:
                if str(kept["format"]) != FORMAT:
                    raise ValueError(f"written by another version ({kept['format']})")
                return cls(
                    kept["centroids"],
                    kept["assigned"],
                    str(kept["fingerprint"]),
                    kept["pairs"],
                    float(kept["threshold"]),
                )
        except (OSError, KeyError, zipfile.BadZipFile, EOFError) as error:
            raise ValueError(f"unreadable ({error})") from error

    def save(self, path: Path) -> None:
        """Write it (whole or not at all); a failure is only logged: the next run builds again."""
        temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                temporary,
                format=np.array(FORMAT),
                centroids=self.centroids,
                assigned=self.assigned,
                fingerprint=np.array(self.fingerprint),
                pairs=self.pairs,
                threshold=np.array(self.threshold),
            )
            os.replace(temporary, path)
        except OSError:
            logger.debug("cannot keep the index at %s", path, exc_info=True)
            temporary.unlink(missing_ok=True)


def usable(kept: KeptIndex, base: np.ndarray, paths: Sequence[str]) -> tuple[bool, str | None]:
    """(whether `kept` describes the first rows of `base`, why not as one line or None)."""
    rows = len(kept.assigned)
    if kept.centroids.shape[1] != base.shape[1]:
        width = kept.centroids.shape[1]
        return False, f"rows of width {base.shape[1]}, its kept index {width}: rebuilt"
    if rows > len(base) or fingerprint(base, paths, rows) != kept.fingerprint:
        return False, "changed since its index was kept (not only appended): rebuilt"
    return True, None


def clustered_pairs(
    base: np.ndarray,
    threshold: float,
    *,
    paths: Sequence[str] | None = None,
    saved: Path | None = None,
    note: Callable[[str], None] | None = None,
    check_recall: bool = True,
    k: int = 64,
) -> np.ndarray:
    """(P, 3) rows (first, second, exact float32 cosine) of the pairs of `base` at or above
    `threshold` found inside clusters (see the module), the index kept at `saved` and extended
    when the file only grew. `note` hears one line each (the caller names the file): a rebuild
    and why, an extension, the recall measured on a sample against exact search."""
    say = note or (lambda line: None)
    paths = list(paths) if paths is not None else [""] * len(base)
    kept = None
    if saved is not None and saved.is_file():
        try:
            kept = KeptIndex.load(saved)
            ok, why = usable(kept, base, paths)
        except ValueError as error:
            ok, why = False, f"its kept index at {saved} is {error}: rebuilt"
        if not ok:
            say(why)
            kept = None
    if kept is not None and len(kept.assigned) == len(base) and kept.threshold == threshold:
        pairs = kept.pairs  # the same file at the same threshold: nothing to search
        if check_recall:
            say(recall_line(base, pairs, threshold))
        return pairs
    unit = normalized_bf16(base)
    if kept is None:
        kept, old = built(unit), 0
    else:
        import torch

        old = len(kept.assigned)
        if old < len(base):
            say(f"{len(base) - old:,} rows appended since its index was kept: extended")
            centroids = torch.from_numpy(kept.centroids)
            extra = assign(unit[old:], centroids.to(torch.bfloat16))
            kept.assigned = np.concatenate([kept.assigned, extra])
    members = members_of(kept.assigned, len(kept.centroids))
    if old and kept.threshold == threshold:  # the old rows' pairs are kept: the new ones only
        fresh = rescored(
            base, candidate_pairs(unit, members, threshold, new_from=old, k=k), threshold
        )
        pairs = np.concatenate([kept.pairs, fresh]) if len(fresh) else kept.pairs
    else:
        pairs = rescored(base, candidate_pairs(unit, members, threshold, k=k), threshold)
    changed = old != len(base) or kept.threshold != threshold
    kept.pairs, kept.threshold = pairs, threshold
    kept.fingerprint = fingerprint(base, paths, len(base))
    if saved is not None and changed:
        kept.save(saved)
    if check_recall:  # an extension checks its new rows (the old ones were checked when built)
        say(recall_line(base, pairs, threshold, unit=unit, rows_from=old))
    return pairs


def built(unit: Any) -> KeptIndex:
    """A new index of the normalized bfloat16 rows `unit`: k-means centroids and each row's
    clusters, no pairs yet (threshold NaN) and no fingerprint (the caller stamps it)."""
    import torch

    centroids = kmeans(unit, centroid_count(len(unit)))
    assigned = assign(unit, centroids.to(torch.bfloat16))
    return KeptIndex(centroids.numpy(), assigned, "", np.zeros((0, 3)), math.nan)


def kept_clusters(
    base: np.ndarray,
    paths: Sequence[str] | None,
    saved: Path,
    note: Callable[[str], None] | None = None,
) -> KeptIndex:
    """The clustered index of `base` for queries: the one kept at `saved` when it describes
    the file (rows appended since are assigned here, in memory: `duplicates` extends and keeps
    it with their pairs), else built and kept there as `duplicates` would build it (no pairs
    yet: the next `duplicates` searches the clusters and keeps its pairs)."""
    say = note or (lambda line: None)
    paths = list(paths) if paths is not None else [""] * len(base)
    if saved.is_file():
        try:
            kept = KeptIndex.load(saved)
            ok, why = usable(kept, base, paths)
        except ValueError as error:
            ok, why = False, f"its kept index at {saved} is {error}: rebuilt"
        if ok:
            old = len(kept.assigned)
            if old < len(base):
                import torch

                weights = torch.from_numpy(kept.centroids).to(torch.bfloat16)
                extra = assign(normalized_bf16(base, old), weights)
                kept.assigned = np.concatenate([kept.assigned, extra])
            return kept
        say(why)
    else:
        say("no clustered index kept yet: built now and kept for the next run")
    kept = built(normalized_bf16(base))
    kept.fingerprint = fingerprint(base, paths, len(base))
    kept.save(saved)
    return kept


def cluster_members(assigned: np.ndarray, clusters: int, wanted: np.ndarray) -> dict:
    """{cluster: its sorted rows} for the `wanted` clusters only: one pass over `assigned`."""
    asked = np.zeros(clusters + 1, bool)  # the last entry answers the -1 padding: never asked
    asked[wanted[wanted >= 0]] = True
    flat = assigned.reshape(-1)
    where = np.flatnonzero(asked[flat])
    rows, which = where // assigned.shape[1], flat[where]
    order = np.lexsort((rows, which))
    rows, which = rows[order], which[order]
    bounds = np.searchsorted(which, np.arange(clusters + 1))
    return {int(c): rows[bounds[c] : bounds[c + 1]] for c in np.unique(wanted[wanted >= 0])}


def clustered_nearest(
    base: np.ndarray, queries: np.ndarray, k: int, kept: KeptIndex
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices), (Q, k) each: each query's k nearest rows of `base` among the members
    of its clusters, by exact score (exact.exact_top_k over those rows: the same float32 scores
    as exact search, the lower row first among equals; -inf and -1 pad).

    A query is assigned as the rows were (`assign`: its nearest centroid and those within
    MARGIN, at most MAX_ASSIGN), and the rows sharing one of its clusters are its candidates.
    The recall argument is `duplicates'`: a near copy scores nearly the same as the query
    against every centroid, so it sits in the query's nearest cluster or one within the margin
    and is found; a row sharing no cluster with the query (a far neighbour, beyond the near
    copies `--against` looks for) can be missed where exact search would rank it."""
    import torch

    from .exact import exact_top_k, normalized

    weights = torch.from_numpy(kept.centroids).to(torch.bfloat16)
    clusters = assign(normalized(queries).to(torch.bfloat16), weights)
    members = cluster_members(kept.assigned, len(kept.centroids), clusters.reshape(-1))
    scores = np.full((len(queries), k), -np.inf, np.float32)
    indices = np.full((len(queries), k), -1, np.int64)
    for row, mine in enumerate(clusters):
        picked = [members[int(c)] for c in mine if c >= 0]
        rows = np.unique(np.concatenate(picked)) if picked else np.zeros(0, np.int64)
        if len(rows) == 0:
            continue
        found, where = exact_top_k(base[rows], queries[row : row + 1], k)
        width = found.shape[1]
        scores[row, :width] = found[0]
        indices[row, :width] = np.where(where[0] >= 0, rows[np.maximum(where[0], 0)], -1)
    return scores, indices


def recall_line(base: np.ndarray, pairs: np.ndarray, threshold: float, **where: Any) -> str:
    recall, sampled, exact = sampled_recall(base, pairs, threshold, **where)
    return (
        f"recall {recall:.3f} on {sampled:,} sampled rows against exact search "
        f"({exact:,} pair{'' if exact == 1 else 's'} at or above {threshold:g})"
    )
