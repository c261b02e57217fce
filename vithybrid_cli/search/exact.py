"""Exact cosine search at the machine's GEMM rate: a fast product finds candidates, an exact
one decides.

Every score that is returned (and so every threshold decision and every rank) is
`exact_scores`: the float64 dot product of the two rows normalized in float32 (`normalized`),
rounded to float32. It does not depend on how the search was blocked, on the order of rows or
on the precision of the fast pass.

The fast pass (`fast_dtype`) multiplies in bfloat16 where the CPU does that natively (AMX or
AVX512-BF16 through torch's oneDNN: 10-20x float32's rate), else in float32. Its scores are
only used to pick candidates, with a margin (`candidate_margin`) at least the largest error a
fast score can have, so no pair at or above the threshold is lost. The bound, for rows x, y
normalized in float32 (|x|, |y| <= n = 1 + g + 2^-23, g = D 2^-24 / (1 - D 2^-24), D the
width: the length's sum, its square root and the division each round) and a
fast precision of unit roundoff u (bfloat16: 8 significant bits, u = 2^-8; float32 rows
multiplied as they are: u = 0):

  inputs rounded     x_i (1 + a_i), y_i (1 + b_i), |a_i|, |b_i| <= u: the product moves by
                     sum |x_i y_i| (2u + u^2) <= (2u + u^2) n^2 (Cauchy-Schwarz)
  float32 sums       the dot-product bound (each product's rounding included; products of
                     bf16 numbers are exact in float32): at most g (1 + u)^2 n^2
  output rounded     torch.mm returns bfloat16: u (1 + u)^2 (1 + g) n^2 more
  the exact score    float64 sums (D 2^-53 n^2) rounded once to float32 (2^-24 n^2) more

so a pair whose exact score is s >= t has a fast score >= t - m with m = n^2 ((2u + u^2) +
g (1 + u)^2 + u (1 + u)^2 (1 + g) + 2^-24 + D 2^-53) (D = 768 in bfloat16: m = 0.0118), and
the compared floor is rounded down to a bfloat16 number. The bound is the worst case (every
rounding the same way); test_search_exact.py checks it holds on real products. Candidates at
cosine 0.9 - 0.012 are few more than those at 0.9: rescoring them costs little beside the
tiles.

  exact_pairs      all pairs at or above a threshold: the upper triangle of the N x N product
                   in TILE_ROWS x TILE_ROWS tiles over one bfloat16 copy of the normalized rows
                   (half the file's size in memory), each tile's candidates rescored
  exact_top_k      each query's k nearest: one pass over the rows as they are (a memory-mapped
                   file is not copied), float32 products divided by the rows' lengths, the
                   candidates that can still be in a top-k rescored
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

TILE_ROWS = 2048  # (2048, 2048) bfloat16 tiles: 8 MiB of scores, in cache beside its operands
RESCORE_ROWS = 8192  # candidate pairs rescored at once: 2 x 8192 x 768 float64 = 96 MiB
FLOAT32_UNIT = 2.0**-24
BFLOAT16_UNIT = 2.0**-8


def normalized(block: np.ndarray) -> Any:
    """A float32 torch copy of `block` with rows of length 1 (zero rows stay zero)."""
    import torch

    return torch.nn.functional.normalize(as_torch(block), dim=1)


def exact_scores(first: Any, first_rows: Any, second: Any, second_rows: Any) -> Any:
    """The cosine of rows `first[first_rows]` with rows `second[second_rows]`, pair by pair
    (normalized float32 torch rows, index tensors), as float32: float64 products and sums,
    rounded once."""
    import torch

    scores = torch.empty(len(first_rows), dtype=torch.float32)
    for start in range(0, len(first_rows), RESCORE_ROWS):
        end = start + RESCORE_ROWS
        pair = first[first_rows[start:end]].double() * second[second_rows[start:end]].double()
        scores[start:end] = pair.sum(dim=1)
    return scores


def fast_dtype() -> Any:
    """bfloat16 where torch multiplies it natively on this CPU, else float32."""
    import torch

    try:
        native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else torch.float32


def candidate_margin(width: int, dtype: Any) -> float:
    """The largest error of a fast score against `exact_scores` (see the module)."""
    import torch

    unit = BFLOAT16_UNIT if dtype == torch.bfloat16 else 0.0
    g = width * FLOAT32_UNIT / (1 - width * FLOAT32_UNIT)
    n2 = (1 + g + 2 * FLOAT32_UNIT) ** 2
    inputs = 2 * unit + unit**2
    output = unit * (1 + unit) ** 2 * (1 + g)
    exact = FLOAT32_UNIT + width * 2.0**-53
    return n2 * (inputs + g * (1 + unit) ** 2 + output + exact)


def floor_below(value: float, dtype: Any) -> float:
    """The largest number of `dtype` at or below `value` (a compared floor rounds down)."""
    import torch

    rounded = torch.tensor(value, dtype=torch.float64).to(dtype)
    while float(rounded) > value:
        rounded = torch.nextafter(rounded.float(), torch.tensor(-np.inf)).to(dtype)
        if float(rounded) > value:  # nextafter in float32 can round back up in bfloat16
            rounded = (rounded.float() - abs(float(rounded)) * BFLOAT16_UNIT).to(dtype)
    return float(rounded)


def unit_rows(base: np.ndarray, dtype: Any, block_rows: int = 8192) -> Any:
    """All rows of `base` normalized in float32 then held in `dtype`, built block by block."""
    import torch

    units = torch.empty((len(base), base.shape[1]), dtype=dtype)
    for start in range(0, len(base), block_rows):  # as `normalized`, written into `units`
        rows = as_torch(base[start : start + block_rows])
        lengths = torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min_(1e-12)
        torch.div(rows, lengths, out=units[start : start + block_rows])
    return units


def exact_pairs(
    base: np.ndarray, threshold: float, k: int, tile_rows: int = TILE_ROWS
) -> Iterator[tuple[int, int, float]]:
    """(row, other row, cosine), row < other, for the pairs of `base` rows whose exact score is
    at or above `threshold`, each tile row's and tile column's at most k strongest (ties: the
    lower row first). The fast tiles' candidates (see the module) are rescored a row of tiles
    at a time."""
    import torch

    dtype = fast_dtype()
    units = unit_rows(base, dtype)
    floor = floor_below(threshold - candidate_margin(base.shape[1], dtype), dtype)
    # above 0, a float's bits compare as integers do (numpy has no bfloat16, but int16)
    bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32}[dtype] if floor > 0 else None
    bar = torch.tensor(floor, dtype=dtype)
    bar = bar.view(bits) if bits else bar
    tiles: dict[tuple[int, int], Any] = {}  # the products' outputs, allocated once a shape
    for start in range(0, len(base), tile_rows):
        rows = units[start : start + tile_rows]
        firsts, seconds = [], []
        for other in range(start, len(base), tile_rows):
            others = units[other : other + tile_rows]
            shape = (len(rows), len(others))
            scores = tiles.get(shape)
            if scores is None:
                scores = tiles[shape] = torch.empty(shape, dtype=dtype)
            torch.mm(rows, others.T, out=scores)
            hit, found, columns = tile_candidates(scores, start == other, bits, bar)
            if hit is None:
                continue
            first, second = hit[found] + start, columns + other
            if other == start:
                first, second = first[first < second], second[first < second]
            firsts.append(first)
            seconds.append(second)
        if firsts:
            with one_thread():
                first, second = torch.cat(firsts), torch.cat(seconds)
                pairs = rescored_pairs(base, first, second, threshold, k, tile_rows)
            yield from zip(*pairs, strict=True)


def tile_candidates(scores: Any, diagonal: bool, bits: Any, bar: Any) -> tuple:
    """(hit rows, their positions in the hit rows, columns) of a tile's fast scores at or
    above `bar`; (None, None, None) when none. Where `bits` is set, compared as integers in
    numpy: one thread, no wait for torch's second one, and no change to torch's threads (a
    row max of a 2048 x 2048 tile: 0.3 ms, against 2-10 ms in torch on a busy machine)."""
    import torch

    if diagonal:  # a row with itself is no pair; below the diagonal: seen above
        scores.diagonal().fill_(-torch.inf)
    if bits is None:  # a floor at or below 0: compared as floats, in torch
        with one_thread():
            hit = torch.nonzero(scores.amax(dim=1) >= bar).flatten()
            if len(hit) == 0:
                return None, None, None
            found, columns = torch.nonzero(scores[hit] >= bar, as_tuple=True)
        return hit, found, columns
    values = scores.view(bits).numpy()
    hit = np.flatnonzero(values.max(axis=1) >= int(bar))
    if len(hit) == 0:
        return None, None, None
    found, columns = np.nonzero(values[hit] >= int(bar))
    return torch.from_numpy(hit), torch.from_numpy(found), torch.from_numpy(columns)


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread inside: a pass over a tile in cache is shorter than the wait for a
    second thread on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def rescored_pairs(
    base: np.ndarray, first: Any, second: Any, threshold: float, k: int, tile_rows: int
) -> tuple[list, list, list]:
    """The candidate pairs (first, second) of one row of tiles with exact scores at or above
    `threshold`, each row's k strongest in each tile and each column's k strongest: (firsts,
    seconds, scores)."""
    import torch

    rows, where = torch.unique(torch.cat([first, second]), return_inverse=True)
    units = normalized(base[rows.numpy()])
    scores = exact_scores(units, where[: len(first)], units, where[len(first) :])
    keep = scores >= threshold
    first, second, scores = first[keep].numpy(), second[keep].numpy(), scores[keep].numpy()
    in_tile = first * (len(base) // tile_rows + 1) + second // tile_rows  # a row in one tile
    if len(first) and max(np.bincount(in_tile).max(), np.bincount(second).max()) > k:
        strongest = strongest_k(in_tile, second, scores, k) | strongest_k(second, first, scores, k)
        first, second, scores = first[strongest], second[strongest], scores[strongest]
    return first.tolist(), second.tolist(), scores.tolist()


def strongest_k(rows: np.ndarray, others: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """A mask of the pairs among each row's k strongest (equal scores: the lower other first)."""
    order, rank = ranked(rows, others, scores)
    mask = np.zeros(len(order), dtype=bool)
    mask[order[rank < k]] = True
    return mask


def ranked(rows: np.ndarray, others: np.ndarray, scores: np.ndarray) -> tuple:
    """(order, rank): the pairs (row, other) ordered by row, score down, other up, and each
    one's rank among its row's."""
    order = np.lexsort((others, -scores, rows))
    ordered = rows[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return order, rank


def exact_top_k(
    base: np.ndarray, queries: np.ndarray, k: int, block_rows: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, indices), (Q, k) each: the k nearest rows of `base` for each query row by
    exact score, best first, the lower row first among equal scores (-inf and -1 where the base
    has fewer rows). One pass over `base` a block of rows at a time, fast scores in float32:
    the rows are not normalized but the products divided by their lengths (three float32
    roundings where normalizing first has one: four times float32's margin). A row is rescored
    when it can still be in its query's k best: its fast score at least the block's k-th fast
    score less twice the margin, and the k-th exact score so far less the margin."""
    import torch

    k = max(1, min(k, len(base)))
    query = normalized(queries)
    margin = 4 * candidate_margin(base.shape[1], torch.float32)
    kept = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
    kth = torch.full((len(query),), -torch.inf)
    for start in range(0, len(base), block_rows):
        block = as_torch(base[start : start + block_rows])
        fast = query @ block.T
        with one_thread():
            fast /= torch.linalg.vector_norm(block, dim=1).clamp_min_(1e-12)
            block_kth = torch.topk(fast, min(k, len(block)), dim=1, sorted=False).values.amin(1)
            cutoff = torch.maximum(block_kth - 2 * margin, kth - margin)
            found, rows = torch.nonzero(fast >= cutoff[:, None], as_tuple=True)
            candidates = torch.nn.functional.normalize(block[rows], dim=1)
            scores = exact_scores(query, found, candidates, torch.arange(len(rows)))
            kept = best_k(
                (np.r_[kept[0], found.numpy()], np.r_[kept[1], rows.numpy() + start]),
                np.r_[kept[2], scores.numpy()],
                k,
            )
            full = np.bincount(kept[0][kept[3] == k - 1], minlength=len(query)) > 0
            kth[torch.from_numpy(full)] = torch.from_numpy(kept[2][kept[3] == k - 1])
            kept = kept[:3]
    scores = np.full((len(query), k), -np.inf, np.float32)
    indices = np.full((len(query), k), -1, np.int64)
    ranks = best_k(kept[:2], kept[2], k)[3]
    scores[kept[0], ranks], indices[kept[0], ranks] = kept[2], kept[1]
    return scores, indices


def best_k(pairs: tuple[np.ndarray, np.ndarray], scores: np.ndarray, k: int) -> tuple:
    """(queries, rows, scores, ranks) of the pairs (query, row) among each query's k best
    (score down, then row up), in that order."""
    queries, rows = pairs
    order, rank = ranked(queries, rows, scores)
    queries, rows, scores = queries[order], rows[order], scores[order]
    keep = rank < k
    return queries[keep], rows[keep], scores[keep], rank[keep]


def as_torch(block: np.ndarray) -> Any:
    """`block` as a float32 torch tensor, without a copy where it is one already (read only)."""
    import torch

    rows = np.ascontiguousarray(block, dtype=np.float32)
    with warnings.catch_warnings():  # a memory-mapped file's rows: read, never written
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(rows)
