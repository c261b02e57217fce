"""`duplicates --engine ray`: the near-copy pairs of a duplicates search found by Ray actors,
each searching a shard of the rows (the queries) against all of them; the grouping stays here.

The vectors go into Ray's object store once (each node holds one copy, its actors read it
without copying), so every actor searches the same base. With an approximate index the index
is built once here and kept (search/index.py's kept index, in the cache), and each actor loads
that file instead of building its own: on one machine, or a cluster whose nodes share the cache
folder; a node without it builds the index once for its actors' use. The pairs come back here,
and the complete-linkage grouping (grouping.group_duplicates) runs on them as the local run's
does: a row's neighbours are its nearest `k` over the whole base, the same pairs as the local
search wherever a row has fewer than `k` near copies (grouping.NEIGHBOURS: 64).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

SHARDS_PER_ACTOR = 4  # more shards than actors: a slow node takes fewer of them


class PairFinder:
    """A Ray actor's state: the base vectors (from the object store) and how to search them."""

    def __init__(self, base: np.ndarray, index: str, saved: str | None) -> None:
        self.base, self.index = base, index
        self.saved = Path(saved) if saved else None

    def pairs(self, start: int, stop: int, threshold: float, k: int) -> list[tuple]:
        """(row, other row, cosine), row < other, for rows start..stop-1 against the base."""
        from .index import nearest, neighbour_pairs

        found = nearest(self.base, self.base[start:stop], k + 1, self.index, self.saved)
        return list(neighbour_pairs(start, found, threshold))


def shards(count: int, pieces: int) -> list[tuple[int, int]]:
    """`count` rows cut into at most `pieces` contiguous (start, stop) ranges."""
    size = max(1, math.ceil(count / max(1, pieces)))
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def sharded_pairs(
    base: Any,
    threshold: float,
    k: int,
    *,
    index: str = "exact",
    saved: Path | None = None,
    quiet: bool = False,
) -> list[tuple[int, int, float]]:
    """The pairs (row, other row, cosine) at or above `threshold` among the rows of `base`,
    each row's `k` nearest, found by one actor per CPU of the Ray cluster (RAY_ADDRESS, the
    caller's Ray, or a local one for the call: pipeline/engines/ray_engine.ray_session)."""
    import ray
    from ray.util import ActorPool

    from ..pipeline.engines.ray_engine import ray_session
    from .index import nearest

    array = np.ascontiguousarray(np.asarray(base, dtype=np.float32))
    if index != "exact" and saved is not None:
        nearest(array, array[:1], 1, index, saved)  # built once, kept for the actors
    with ray_session(quiet):
        count = max(1, int(ray.cluster_resources().get("CPU", 1)))
        shared = ray.put(array)
        finder = ray.remote(num_cpus=1)(PairFinder)
        actors = [finder.remote(shared, index, str(saved) if saved else None) for _ in range(count)]
        pool = ActorPool(actors)
        work = shards(len(array), count * SHARDS_PER_ACTOR)
        found = pool.map_unordered(
            lambda actor, span: actor.pairs.remote(*span, threshold, k), work
        )
        pairs = [pair for shard in found for pair in shard]
        for actor in actors:
            ray.kill(actor)
    return pairs
