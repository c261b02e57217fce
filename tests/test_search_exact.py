"""The exact search (search/exact.py) against brute force: every pair at or above a threshold
and every top-k, with the same float32 scores and the same order, whatever the fast pass's
precision, at thresholds right on a pair's score.

The reference normalizes the rows in float32 as the search does (`normalized`), then takes
every product in float64 and rounds it to float32 once: the definition of an exact score.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vithybrid_cli.search import exact
from vithybrid_cli.search.index import exact_neighbours, similar_pairs


def reference_scores(base: np.ndarray) -> np.ndarray:
    units = exact.normalized(base).double().numpy()
    return (units @ units.T).astype(np.float32)


def reference_pairs(base: np.ndarray, threshold: float) -> set[tuple[int, int, float]]:
    scores = reference_scores(base)
    pairs = np.argwhere(np.triu(scores >= threshold, k=1)).tolist()
    return {(a, b, float(scores[a, b])) for a, b in pairs}


def clustered(count: int, width: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """Rows around a few centres (pairs at every cosine from ~0.6 to 1), every 7th row followed
    by a near copy of itself, and a zero row; lengths not 1."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, width))
    rows = centres[rng.integers(0, len(centres), count)]
    rows = rows + spread * rng.standard_normal((count, width)) * np.sqrt(1 / width) * 4
    rows[1::7] = rows[0:-1:7][: len(rows[1::7])] + 0.02 * rng.standard_normal((1, width))
    rows[5] = 0.0
    return (rows * rng.uniform(0.5, 3.0, (count, 1))).astype(np.float32)


@pytest.fixture(params=["bfloat16", "float32"])
def fast(request, monkeypatch):
    """Both fast passes: bfloat16 tiles (where the CPU has them) and float32 ones."""
    dtype = getattr(torch, request.param)
    monkeypatch.setattr(exact, "fast_dtype", lambda: dtype)
    return dtype


def test_the_candidate_margin_bounds_the_fast_scores_error(fast):
    # the bound of the module, checked on products of the worst kind: many large equal terms
    base = clustered(600, 768, seed=0)
    units = exact.unit_rows(base, fast)
    error = torch.mm(units, units.T).double().numpy() - reference_scores(base)
    margin = exact.candidate_margin(768, fast)
    assert np.abs(error).max() <= margin
    assert margin < (0.012 if fast == torch.bfloat16 else 1e-4)  # and not needlessly wide
    assert exact.floor_below(0.9 - margin, fast) <= 0.9 - margin
    assert exact.floor_below(-0.3, fast) <= -0.3


@pytest.mark.parametrize("width", [16, 768])
def test_exact_pairs_equal_brute_force_at_thresholds_on_a_pair_score(fast, width):
    base = clustered(700, width, seed=width)
    scores = reference_scores(base)
    upper = np.sort(scores[np.triu_indices(len(base), k=1)])
    for quantile in (0.5, 0.99, 0.999):  # dense and sparse: thousands of pairs near the edge
        edge = float(upper[int(quantile * len(upper))])  # a pair's exact score
        for threshold in (edge, float(np.nextafter(np.float32(edge), np.float32(2)))):
            found = list(exact.exact_pairs(base, threshold, k=len(base), tile_rows=128))
            assert len(found) == len(set(found))
            assert set(found) == reference_pairs(base, threshold)
            assert any(score == edge for _, _, score in found) == (threshold == edge)


def test_exact_pairs_below_zero_compare_as_floats(fast):
    base = clustered(200, 16, seed=3)  # a threshold whose floor is below 0: no integer trick
    found = set(exact.exact_pairs(base, -0.2, k=len(base), tile_rows=64))
    assert found == reference_pairs(base, -0.2)


def test_each_tile_row_and_column_keeps_its_k_strongest(fast):
    base = clustered(300, 32, seed=5, spread=0.05)  # tight clusters: rows with many pairs
    threshold, k, tile = 0.5, 3, 64
    kept = set(exact.exact_pairs(base, threshold, k=k, tile_rows=tile))
    every = sorted(reference_pairs(base, threshold), key=lambda p: (-p[2], p[0], p[1]))
    by_row, by_column, expected = {}, {}, set()
    for first, second, score in every:  # strongest first, ties: the lower other row first
        row_rank = by_row.setdefault((first, second // tile), [])
        column_rank = by_column.setdefault((second, first // tile), [])
        ranks = (len(row_rank), len(column_rank))
        row_rank.append(second)
        column_rank.append(first)
        if min(ranks) < k:
            expected.add((first, second, score))
    assert kept == expected and len(kept) < len(every)


def test_similar_pairs_exact_is_the_exact_search():
    base = clustered(400, 64, seed=7)
    assert set(similar_pairs(base, 0.95, 400, index="exact", block_rows=96)) == reference_pairs(
        base, 0.95
    )


@pytest.mark.parametrize("k", [1, 5, 40])
def test_exact_top_k_equals_brute_force_with_ties_in_row_order(k):
    base = clustered(900, 48, seed=k)
    base[700] = base[12] * 2  # same direction as row 12: a tie at cosine 1
    base[701] = base[12] * 0.5
    queries = base[[12, 13, 700, 5, 300]]
    found = exact_neighbours(base, queries, k, block_rows=100)
    units = exact.normalized(base).double().numpy()
    for query, scores, indices in zip(queries, found.scores, found.indices, strict=True):
        unit = exact.normalized(query[None]).double().numpy()[0]
        reference = (units @ unit).astype(np.float32)
        order = np.lexsort((np.arange(len(base)), -reference))[:k]
        assert indices.tolist() == order.tolist()
        assert scores.tolist() == reference[order].tolist()
    assert found.indices[0, :3].tolist() == [12, 700, 701][:k]


def test_exact_top_k_with_fewer_rows_than_k_pads():
    base = clustered(6, 8, seed=1)
    found = exact_neighbours(base, base[:2], 10)
    assert found.indices.shape == (2, 6)  # k is at most the rows
    scores, indices = exact.exact_top_k(base[:3], base[:1], 3, block_rows=2)
    assert sorted(indices[0].tolist()) == [0, 1, 2] and np.all(np.diff(scores[0]) <= 0)


def test_the_fast_copy_is_the_normalized_rows_rounded(fast):
    base = clustered(300, 40, seed=2)
    assert torch.equal(exact.unit_rows(base, fast, block_rows=64), exact.normalized(base).to(fast))
