"""Nearest neighbours by cosine similarity: blocked exact products in torch, or an approximate
index (usearch, the `search` extra) for large sets.

Exact search (exact.py) runs at the machine's matrix-product rate: a fast product (bfloat16
tiles where the CPU has them) finds candidates within a proven rounding margin, and exact
float32 scores decide. `similar` is one pass over the file, a block of rows at a time (a
memory-mapped .npy is not copied); `duplicates` (every pair, `similar_pairs`) is N^2 / 2
products over a bfloat16 copy of the normalized rows (half the file's size), which is where
the indexes pay off (see benchmarks/README.md for the crossover): `similar_pairs(index=
"clustered")` hands it to clustered.py (exact search inside coarse clusters, the default above
APPROXIMATE_FROM).

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .exact import exact_pairs, exact_top_k, normalized

logger = logging.getLogger(__name__)

BLOCK_ROWS = 8192  # base rows per product: 8192 x 768 float32 = 24 MiB
QUERY_ROWS = 2048  # queries per product: the (QUERY_ROWS, BLOCK_ROWS) scores are 64 MiB
PAIR_BLOCK_ROWS = 2048  # duplicates: (2048, 2048) tiles of the all-pairs products (exact.py)
INDEXES = ("auto", "exact", "approximate", "clustered")
# Above this many vectors `duplicates --index auto` searches inside clusters (clustered.py).
# Measured on benchmarks/bench_search.py's --million data (clustered 768-d vectors, planted
# copies), exact (exact.py, bf16 tiles) then clustered, two rounds each, 2 shared cores of an
# Intel Sapphire Rapids (AMX), load ~2.5: 50,000: 1.1-1.2 / 0.6-1.2 s; 100,000: 4.2-4.6 /
# 1.1-1.9 s; 200,000: 36-37 / 1.8-7.0 s; 1,000,000: ~5 min (projected) / 38-43 s. Exact wins
# below ~50,000 and answers without a sampled recall check; measure again when either changes.
APPROXIMATE_FROM = 50_000
CANDIDATE_SLACK = 16  # approximate search: candidates asked beyond k, before exact rescoring


@dataclass
class Neighbours:
    """For each query row: the `indices` of its nearest base rows and their cosine `scores`,
    best first, (Q, k) each; an index of -1 (score -inf) where the base has fewer rows."""

    scores: np.ndarray
    indices: np.ndarray


def exact_neighbours(
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    block_rows: int = BLOCK_ROWS,
) -> Neighbours:
    """The k nearest base rows of each query row, by blocked exact products (see the module
    and exact.exact_top_k)."""
    scores, indices = exact_top_k(base, queries, k, block_rows)
    return Neighbours(scores, indices)


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

    Exact (exact.exact_pairs): the upper triangle of the N x N products, a (block_rows,
    block_rows) tile at a time (half the work of every row against every row), each tile row's
    and column's k strongest; a tile's rows with no candidate (nearly all of them) cost one
    max. Approximate: each row's k nearest from the index (kept at `saved`, see
    ApproximateIndex), rescored exactly. Clustered: exact search inside coarse clusters
    (clustered.py; every pair at or above the threshold that shares a cluster, scored in
    float32), its index kept at `saved` and extended when the file grew; `note` hears its
    one-line notes (rebuilt, extended, recall).
    """

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
    yield from exact_pairs(base, threshold, k, block_rows or PAIR_BLOCK_ROWS)


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
    base: np.ndarray,
    queries: np.ndarray,
    k: int,
    index: str = "exact",
    saved: Path | None = None,
    *,
    paths: Sequence[str] | None = None,
    note: Callable[[str], None] | None = None,
) -> Neighbours:
    """The k nearest rows of `base` for each query row: exactly, by an approximate index (kept
    at `saved`, see ApproximateIndex), or inside the clusters of the kept clustered index
    (clustered.clustered_nearest: the query's nearest clusters' members scored exactly, the
    same float32 scores and tie order as exact search; near copies share a cluster, as
    `duplicates` relies on). The clustered index is loaded from `saved` (`paths`: the rows'
    paths, part of its fingerprint), or built and kept there; without `saved` (vectors made
    on the fly, nothing to keep) `clustered` is one exact pass over the file. `note` hears
    why a kept index was rebuilt."""
    if len(queries) == 0:
        return Neighbours(np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
    if index == "approximate":
        return ApproximateIndex(base, saved=saved).search(queries, k)
    if index == "clustered" and saved is not None:
        from .clustered import clustered_nearest, kept_clusters

        kept = kept_clusters(base, paths, saved, note)
        return Neighbours(*clustered_nearest(base, queries, k, kept))
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
