"""Reciprocal rank fusion (Cormack, Clarke & Buettcher, SIGIR 2009).

    score(d) = sum over rankings r containing d of  weight_r / (k + rank_r(d))

with ranks starting at 1 and k = 60 by default. Done here rather than in the engine so
both backends fuse identically and k is the textbook one (Qdrant's built-in RRF counts
ranks from 0). Ties are broken by the best (lowest) rank a document reached, then by
its first appearance, so the order is deterministic.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

DEFAULT_K = 60

H = TypeVar("H", bound=Hashable)


def rrf(
    rankings: Sequence[Sequence[H]],
    *,
    k: int = DEFAULT_K,
    weights: Sequence[float] | None = None,
) -> list[tuple[H, float]]:
    """Fuse rankings (best first, no duplicates within one) into (item, score), best first."""
    if k < 0:
        raise ValueError("k must be >= 0")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    scores: dict[H, float] = {}
    best_rank: dict[H, int] = {}
    first_seen: dict[H, int] = {}
    order = 0
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
            if item not in first_seen:
                first_seen[item] = order
                order += 1
            best_rank[item] = min(best_rank.get(item, rank), rank)
    ordered = sorted(scores, key=lambda item: (-scores[item], best_rank[item], first_seen[item]))
    return [(item, scores[item]) for item in ordered]
