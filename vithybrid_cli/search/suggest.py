"""What to label next (`vithybrid suggest`): the photos a head is least sure of, kept diverse.

Pure numpy. Each photo's uncertainty is one minus the margin between the head's two most
probable labels (1: a tie, 0: certain). The top few times N most uncertain photos are the
candidates; from them a greedy k-center (farthest-point) pick, seeded by the most uncertain,
takes the candidate least like every photo picked so far, so N picks do not spend labels on
one kind of photo. A candidate within the near-copy cosine of a picked photo is never taken
(two crops of one photograph teach the head once). When the candidates run out (all near
copies), the next most uncertain photos join them.

Likeness is the cosine of the pooled embeddings, as `duplicates` and `similar` compare them
(so --near-copy means what duplicates' --threshold means). The benchmark
(benchmarks/bench_suggest.py) tried the head's standardized space too: its k-center picks did
no better than random labels, the raw embeddings' did better at every N.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..model.head import Head

# Candidates per pick: the k-center chooses among the top CANDIDATES * N most uncertain photos.
CANDIDATES = 4
# Cosine from which two photos count as near copies: duplicates' default threshold.
NEAR_COPY = 0.9


@dataclass
class Pick:
    """One photo to label: its row, its uncertainty, the head's two best labels and their
    margin, and its cosine to the most similar photo picked before it (None for the first)."""

    row: int
    score: float
    best: int
    second: int | None
    margin: float
    nearest: float | None


def margins(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(margin p1 - p2, best label, second label) per row of (N, C) probabilities; with one
    class the margin is p1 and the second label -1."""
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.shape[1] < 2:
        best = np.zeros(len(probabilities), np.int64)
        return probabilities[:, 0], best, np.full(len(probabilities), -1)
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(probabilities))
    margin = probabilities[rows, order[:, 0]] - probabilities[rows, order[:, 1]]
    return margin, order[:, 0], order[:, 1]


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def suggest(
    features: np.ndarray,
    probabilities: np.ndarray,
    n: int,
    candidates: int = CANDIDATES,
    near_copy: float = NEAR_COPY,
) -> list[Pick]:
    """Up to `n` rows to label, most useful first (see the module docstring). `features` (N, D):
    the pooled embeddings; `probabilities` (N, C): the head's."""
    if n < 1:
        raise ValueError(f"-n {n}: suggest at least one photo")
    margin, best, second = margins(probabilities)
    uncertainty = 1.0 - margin
    by_uncertainty = np.argsort(-uncertainty, kind="stable")  # ties: the input order
    unit = unit_rows(features)
    window = min(len(unit), max(n * candidates, n))  # the candidates: by_uncertainty[:window]
    closest = np.full(len(unit), -np.inf, np.float32)  # cosine to the nearest picked photo
    taken = np.zeros(len(unit), bool)
    picks: list[Pick] = []
    while len(picks) < n:
        open_rows = by_uncertainty[:window]
        open_rows = open_rows[~taken[open_rows] & (closest[open_rows] < near_copy)]
        if len(open_rows) == 0:
            if window >= len(unit):
                break  # every photo left is a near copy of a pick
            window = min(len(unit), window + max(n * candidates, n))
            continue
        # the farthest from the picked; the first pick (all at -inf) is the most uncertain
        row = int(open_rows[np.argmin(closest[open_rows])]) if picks else int(open_rows[0])
        picks.append(
            Pick(
                row=row,
                score=float(uncertainty[row]),
                best=int(best[row]),
                second=int(second[row]) if second[row] >= 0 else None,
                margin=float(margin[row]),
                nearest=float(closest[row]) if picks else None,
            )
        )
        taken[row] = True
        closest = np.maximum(closest, unit @ unit[row])
    return picks


def suggest_for_head(
    head: Head, embeddings: np.ndarray, n: int, near_copy: float = NEAR_COPY
) -> list[Pick]:
    """`suggest` for `head` over (N, D) pooled `embeddings` (an array, or an `embed` file's
    rows read on demand: read once here)."""
    embeddings = np.asarray(embeddings, np.float32)
    return suggest(embeddings, head.probabilities(embeddings), n, near_copy=near_copy)


def why(pick: Pick, labels: list[str]) -> str:
    """One line on why `pick` was picked: its margin, and its place among the picks."""
    if pick.second is None:
        reason = f"probability {pick.margin:.2f} of {labels[pick.best]}"
    else:
        reason = f"margin {pick.margin:.2f} between {labels[pick.best]} and {labels[pick.second]}"
    if pick.nearest is None:
        return f"{reason}; the least sure of all"
    return f"{reason}; farthest from the picked (cosine {round(pick.nearest, 2) + 0.0:.2f})"
