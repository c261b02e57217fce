"""Nearest neighbours by cosine similarity: blocked exact products in torch, or an approximate
index (usearch, the `search` extra) for large sets.

Exact search streams the base vectors in blocks of rows (a memory-mapped .npy is read one block
at a time), normalizes each block, multiplies it with the queries and keeps a running top-k per
query: memory is a block of base rows, a block of queries and their top-k, whatever N is. The
cost is N x Q dot products: for `similar` (a few queries) one pass over the file; for
`duplicates` (every pair, `similar_pairs`) N^2 / 2, which is where the approximate index pays
off (see benchmarks/README.md for the crossover): `similar_pairs(index="clustered")` hands it to
clustered.py (exact search inside coarse clusters, the default above APPROXIMATE_FROM).

Scores are cosine similarities; ties keep the lower row first, so an exact copy that comes
first in the file is the first answer.

An approximate index built over a vectors file is kept (`saved_index_path`: in the cache,
keyed by the file's path, size, modification time and shape, and usearch's version), so the
next `similar` or `duplicates` over the same file loads it instead of building it again; a file
written again gets a new key. Keeping it is best-effort: a cache that cannot be written only
costs the next run the build.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BLOCK_ROWS = 8192  # base rows per product: 8192 x 768 float32 = 24 MiB
QUERY_ROWS = 2048  # queries per product: the (QUERY_ROWS, BLOCK_ROWS) scores are 64 MiB
PAIR_BLOCK_ROWS = 4096  # duplicates: (4096, 4096) tiles of the all-pairs products, 64 MiB
INDEXES = ("auto", "exact", "approximate", "clustered")
# Above this many vectors `duplicates --index auto` searches inside clusters (clustered.py).
# Measured on benchmarks/bench_search.py's --million data (clustered 768-d vectors, 500 planted
# copies), 2 shared cores, load ~3.5, exact then clustered (its sampled recall check included):
# 5,000: 0.57 / 0.96 s; 10,000: 1.82 / 2.65 s; 20,000: 3.36 / 3.23 s; 50,000: 18.8 / 6.6 s;
# 1,000,000: ~14 h projected / 25-50 s. The crossover is near 20,000 (benchmarks/README.md);
# a faster exact tile loop moves it up: measure again when it changes.
APPROXIMATE_FROM = 20_000
CANDIDATE_SLACK = 16  # approximate search: candidates asked beyond k, before exact rescoring


@dataclass
class Neighbours:
    """For each query row: the `indices` of its nearest base rows and their cosine `scores`,
    best first, (Q, k) each; an index of -1 (score -inf) where the base has fewer rows."""

    scores: np.ndarray
    indices: np.ndarray


def normalized(block: np.ndarray) -> Any:
    """A float32 torch copy of `block` with rows of length 1 (zero rows stay zero)."""
    import torch

    rows = np.ascontiguousarray(block, dtype=np.float32)
    if not rows.flags.writeable:  # a memory-mapped file's rows: torch wants its own copy
        rows = rows.copy()
    return torch.nn.functional.normalize(torch.from_numpy(rows), dim=1)


def exact_neighbours(
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    block_rows: int = BLOCK_ROWS,
) -> Neighbours:
    """The k nearest base rows of each query row, by blocked exact products (see the module)."""
    import torch

    k = max(1, min(k, len(base)))
    query = normalized(queries)
    best_scores = torch.full((len(query), k), -torch.inf)
    best_indices = torch.full((len(query), k), -1, dtype=torch.long)
    for start in range(0, len(base), block_rows):
        block = normalized(base[start : start + block_rows])
        scores = query @ block.T
        block_scores, block_positions = torch.topk(scores, min(k, len(block)), dim=1)
        merged_scores = torch.cat([best_scores, block_scores], dim=1)
        merged_indices = torch.cat([best_indices, block_positions + start], dim=1)
        best_scores, top = torch.topk(merged_scores, k, dim=1)
        best_indices = merged_indices.gather(1, top)
    best_scores, best_indices = ties_by_row(best_scores, best_indices)
    best_indices[best_scores == -torch.inf] = -1
    return Neighbours(best_scores.numpy(), best_indices.numpy())


def ties_by_row(scores: Any, indices: Any) -> tuple[Any, Any]:
    """Each row best first, and among equal scores the lower row first (torch.topk promises no
    order among equals): an exact copy that comes first in the file is the first answer."""
    import torch

    order = torch.sort(indices, dim=1, stable=True).indices
    scores, indices = scores.gather(1, order), indices.gather(1, order)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return scores.gather(1, order), indices.gather(1, order)


def similar_pairs(
    base: np.ndarray,
    threshold: float,
    k: int,
    *,
    index: str = "exact",
    block_rows: int | None = None,
    saved: Path | None = None,
    paths: list[str] | None = None,
    note: Callable[[str], None] | None = None,
) -> Iterator[tuple[int, int, float]]:
    """(row, other row, cosine) with row < other for pairs of `base` rows at or above
    `threshold`, each row's at most k strongest (per block of rows: the bound on memory).

    Exact: the upper triangle of the N x N products, a (block_rows, block_rows) tile at a time
    (half the work of every row against every row); a tile's rows and columns with no score
    at or above the threshold (nearly all of them) cost one max. Approximate: each row's k
    nearest from the index (kept at `saved`, see ApproximateIndex), rescored exactly.
    Clustered: exact search inside coarse clusters (clustered.py; every pair at or above the
    threshold that shares a cluster, scored in float32), its index kept at `saved` and
    extended when the file grew; `note` hears its one-line notes (rebuilt, extended, recall).
    """
    import torch

    if index == "clustered":
        from .clustered import clustered_pairs

        found = clustered_pairs(base, threshold, paths=paths, saved=saved, note=note, k=k)
        for first, second, score in found.tolist():
            yield int(first), int(second), score
        return

    if index == "approximate":
        approximate = ApproximateIndex(base, saved=saved)
        for start in range(0, len(base), QUERY_ROWS):
            found = approximate.search(base[start : start + QUERY_ROWS], k + 1)
            yield from neighbour_pairs(start, found, threshold)
        return
    block_rows = block_rows or PAIR_BLOCK_ROWS
    for start in range(0, len(base), block_rows):
        rows = normalized(base[start : start + block_rows])
        for other in range(start, len(base), block_rows):
            columns = rows if other == start else normalized(base[other : other + block_rows])
            scores = rows @ columns.T
            if other == start:  # the diagonal tile: each pair once, no row with itself
                below = torch.ones_like(scores, dtype=torch.bool).tril()
                scores.masked_fill_(below, -torch.inf)
            yield from tile_pairs(scores, start, other, threshold, k)
            yield from ((a, b, s) for b, a, s in tile_pairs(scores.T, other, start, threshold, k))


def tile_pairs(
    scores: Any, first_row: int, first_column: int, threshold: float, k: int
) -> Iterator[tuple[int, int, float]]:
    """(row, column, score) of each tile row's k best scores at or above `threshold`."""
    import torch

    hit = torch.nonzero(scores.amax(dim=1) >= threshold).flatten()
    if len(hit) == 0:
        return
    best, columns = torch.topk(scores[hit], min(k, scores.shape[1]), dim=1)
    for row, column, score in zip(
        hit.repeat_interleave(best.shape[1]).tolist(),
        columns.flatten().tolist(),
        best.flatten().tolist(),
        strict=True,
    ):
        if score >= threshold:
            yield first_row + row, first_column + column, score


def neighbour_pairs(start: int, found: Neighbours, threshold: float) -> Iterator[tuple]:
    """(row, other row, cosine), row < other, for neighbours at or above `threshold` of query
    rows `start`, `start + 1`, ... (a row's own entry left out)."""
    rows, columns = np.nonzero(found.scores >= threshold)
    for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
        other = int(found.indices[row, column])
        if other >= 0 and other != start + row:
            first, second = sorted((start + row, other))
            yield first, second, float(found.scores[row, column])


class ApproximateIndex:
    """An HNSW graph (usearch) over the normalized rows of `base`, built block by block, with
    vectors held in bfloat16 (half the memory of float32, and native arithmetic where the CPU
    has it). The graph only proposes candidates: their scores are computed again in float32
    from `base`, so a score, and a threshold decision, is as exact as the exact search's.

    With `saved` (a file path), the graph is loaded from there when a graph of as many rows is
    there, else built and written there for the next run (`loaded` says which)."""

    def __init__(
        self, base: np.ndarray, block_rows: int = BLOCK_ROWS, saved: Path | None = None
    ) -> None:
        from ..extras import require

        require("usearch", "search")
        from usearch.index import Index

        self.base = base
        self.loaded = False
        if saved is not None and saved.is_file():
            try:
                index = Index.restore(str(saved))
                if index is not None and len(index) == len(base) and index.ndim == base.shape[1]:
                    self.index, self.loaded = index, True
                    return
            except Exception:  # a torn or foreign file: build it again
                logger.debug("cannot load the index %s", saved, exc_info=True)
        self.index = Index(ndim=int(base.shape[1]), metric="ip", dtype="bf16", expansion_add=64)
        for start in range(0, len(base), block_rows):
            block = normalized(base[start : start + block_rows]).numpy()
            self.index.add(np.arange(start, start + len(block)), block)
        if saved is not None:
            self.save(saved)

    def save(self, path: Path) -> None:
        """Write the graph to `path` (whole or not at all); a failure is only logged."""
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.index.save(str(temporary))
            os.replace(temporary, path)
        except OSError:
            logger.debug("cannot keep the index at %s", path, exc_info=True)
            temporary.unlink(missing_ok=True)

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        import torch

        k = max(1, min(k, len(self.index)))
        # more candidates than asked: rescored exactly, the best k of them are the exact
        # search's answer more often (a tie at the k-th place included)
        wanted = min(len(self.index), k + CANDIDATE_SLACK)
        query = normalized(queries)
        found = self.index.search(query.numpy(), wanted)
        if hasattr(found, "counts"):  # BatchMatches: (Q, k) keys, padded past each count
            keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
            counts = np.asarray(found.counts).reshape(-1)
        else:  # one query: usearch answers with a single, unpadded Matches
            got = np.asarray(found.keys, dtype=np.int64).reshape(-1)
            keys = np.zeros((1, wanted), np.int64)
            keys[0, : len(got)] = got
            counts = np.array([len(got)])
        missing = np.arange(keys.shape[1])[None, :] >= counts[:, None]
        keys[missing] = 0  # scored, then dropped below
        rows, where = np.unique(keys, return_inverse=True)
        candidates = normalized(self.base[rows])[torch.from_numpy(where.reshape(keys.shape))]
        scores = torch.einsum("qd,qkd->qk", query, candidates)
        scores[torch.from_numpy(missing)] = -torch.inf
        scores, indices = ties_by_row(scores, torch.from_numpy(keys))
        indices[scores == -torch.inf] = -1
        return Neighbours(scores[:, :k].numpy(), indices[:, :k].numpy())


def nearest(
    base: np.ndarray, queries: np.ndarray, k: int, index: str = "exact", saved: Path | None = None
) -> Neighbours:
    """The k nearest rows of `base` for each query row, exactly or by an approximate index
    (kept at `saved`, see ApproximateIndex). `clustered` is exact here: for a few queries one
    pass over the file costs less than any index (clustered.py serves `duplicates`)."""
    if len(queries) == 0:
        return Neighbours(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
    if index == "approximate":
        return ApproximateIndex(base, saved=saved).search(queries, k)
    return exact_neighbours(base, queries, k)


def saved_index_path(source: str, stamp: str, shape: tuple[int, ...]) -> Path:
    """Where the approximate index of vectors file `source` is kept: in the cache, named by
    the file's real path, its `stamp` (size and modification time), the shape and usearch's
    version, so a rewritten file or another usearch never loads a stale graph."""
    import usearch

    from ..pipeline.runtime import cache_root

    key = "\0".join(
        [os.path.realpath(source), stamp, "x".join(map(str, shape)), usearch.__version__, "bf16"]
    )
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
    return cache_root() / "usearch" / f"{digest}.usearch"


def approximate_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("usearch") is not None


def choose_index(index: str, count: int) -> str:
    """`auto`: exact up to APPROXIMATE_FROM vectors, clustered above (no extra needed, and on
    clustered vectors it finds what HNSW misses: benchmarks/README.md); `exact` /
    `approximate` / `clustered` as asked (approximate needs the `search` extra)."""
    if index != "auto":
        return index
    return "clustered" if count > APPROXIMATE_FROM else "exact"
