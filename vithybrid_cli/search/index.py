"""Nearest neighbours by cosine similarity: blocked exact products in torch, or an approximate
index (usearch, the `search` extra) for large sets.

Exact search streams the base vectors in blocks of rows (a memory-mapped .npy is read one block
at a time), normalizes each block, multiplies it with the queries and keeps a running top-k per
query: memory is a block of base rows, a block of queries and their top-k, whatever N is. The
cost is N x Q dot products: for `similar` (a few queries) one pass over the file; for
`duplicates` (every vector a query) N^2, which is where the approximate index pays off (see
benchmarks/README.md for the crossover).

Scores are cosine similarities; ties keep the lower row first, so an exact copy that comes
first in the file is the first answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

BLOCK_ROWS = 8192  # base rows per product: 8192 x 768 float32 = 24 MiB
QUERY_ROWS = 2048  # queries per product: the (QUERY_ROWS, BLOCK_ROWS) scores are 64 MiB
INDEXES = ("auto", "exact", "approximate")
# Above this many vectors `duplicates` builds an approximate index when usearch is installed:
# the crossover measured by benchmarks/bench_search.py (see benchmarks/README.md).
APPROXIMATE_FROM = 100_000


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
    exclude_self: bool = False,
    query_offset: int = 0,
    block_rows: int = BLOCK_ROWS,
) -> Neighbours:
    """The k nearest base rows of each query row, by blocked exact products (see the module).

    With `exclude_self`, query row q is base row `query_offset + q` and is not its own answer.
    """
    import torch

    k = max(1, min(k, len(base)))
    query = normalized(queries)
    best_scores = torch.full((len(query), k), -torch.inf)
    best_indices = torch.full((len(query), k), -1, dtype=torch.long)
    rows = torch.arange(len(query))
    for start in range(0, len(base), block_rows):
        block = normalized(base[start : start + block_rows])
        scores = query @ block.T
        if exclude_self:
            own = rows + query_offset - start
            inside = (own >= 0) & (own < len(block))
            scores[rows[inside], own[inside]] = -torch.inf
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


def all_neighbours(
    base: np.ndarray, k: int, *, index: str = "exact", query_rows: int = QUERY_ROWS
) -> Iterator[tuple[int, Neighbours]]:
    """(first row, Neighbours) for every block of base rows against the whole base, each row
    without itself: the k nearest of every vector, with memory bounded by the blocks."""
    if index == "approximate":
        approximate = ApproximateIndex(base)
        for start in range(0, len(base), query_rows):
            found = approximate.search(base[start : start + query_rows], k + 1)
            yield start, without_self(found, start, k)
        return
    for start in range(0, len(base), query_rows):
        queries = base[start : start + query_rows]
        yield start, exact_neighbours(base, queries, k, exclude_self=True, query_offset=start)


def without_self(found: Neighbours, start: int, k: int) -> Neighbours:
    """Each row's own entry taken out of an approximate answer (which may or may not hold it)."""
    scores = np.full((len(found.indices), k), -np.inf, dtype=np.float32)
    indices = np.full((len(found.indices), k), -1, dtype=np.int64)
    for row, (row_scores, row_indices) in enumerate(zip(found.scores, found.indices, strict=True)):
        keep = (row_indices != start + row) & (row_indices >= 0)
        count = min(k, int(keep.sum()))
        scores[row, :count] = row_scores[keep][:count]
        indices[row, :count] = row_indices[keep][:count]
    return Neighbours(scores, indices)


class ApproximateIndex:
    """An HNSW graph (usearch) over the normalized rows of `base`, built block by block;
    vectors held as float16 (half the memory, cosine error ~1e-3)."""

    def __init__(self, base: np.ndarray, block_rows: int = BLOCK_ROWS) -> None:
        from ..data.sources import require

        require("usearch", "search")
        from usearch.index import Index

        self.index = Index(ndim=int(base.shape[1]), metric="ip", dtype="f16")
        for start in range(0, len(base), block_rows):
            block = normalized(base[start : start + block_rows]).numpy()
            self.index.add(np.arange(start, start + len(block)), block)

    def search(self, queries: np.ndarray, k: int) -> Neighbours:
        k = max(1, min(k, len(self.index)))
        found = self.index.search(normalized(queries).numpy(), k)
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
        distances = np.asarray(found.distances, dtype=np.float32).reshape(len(queries), -1)
        counts = np.asarray(found.counts).reshape(-1)
        scores = 1.0 - distances  # usearch's "ip" distance is 1 - dot
        for row, count in enumerate(counts):
            keys[row, count:], scores[row, count:] = -1, -np.inf
        return Neighbours(scores, keys)


def nearest(base: np.ndarray, queries: np.ndarray, k: int, index: str = "exact") -> Neighbours:
    """The k nearest rows of `base` for each query row, exactly or by an approximate index."""
    if len(queries) == 0:
        return Neighbours(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
    if index == "approximate":
        return ApproximateIndex(base).search(queries, k)
    return exact_neighbours(base, queries, k)


def approximate_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("usearch") is not None


def choose_index(index: str, count: int) -> str:
    """`auto`: exact up to APPROXIMATE_FROM vectors, approximate above when usearch is
    installed; `exact` / `approximate` as asked (approximate needs the `search` extra)."""
    if index != "auto":
        return index
    return "approximate" if count > APPROXIMATE_FROM and approximate_available() else "exact"
