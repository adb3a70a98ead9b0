"""Retrieval and answer metrics: plain functions, no I/O."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Sequence


def unique_in_order(items: Iterable[str]) -> list[str]:
    """Each item once, at its first position (chunk hits -> ranked documents)."""
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def recall_at_k(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the relevant items found in the first k of `ranked` (1.0 when nothing
    is relevant: there was nothing to miss)."""
    if k < 0:
        raise ValueError("k must be >= 0")
    wanted = set(relevant)
    if not wanted:
        return 1.0
    return len(wanted & set(ranked[:k])) / len(wanted)


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str]) -> float:
    """1 / the rank of the first relevant item; 0 when none is ranked."""
    wanted = set(relevant)
    for rank, item in enumerate(ranked, start=1):
        if item in wanted:
            return 1.0 / rank
    return 0.0


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


_SCORE = re.compile(r'"grounded"\s*:\s*(-?\d+(?:\.\d+)?)')


def parse_groundedness(reply: str) -> float | None:
    """The judge's score in [0, 1] from `{"grounded": x, ...}` (possibly wrapped in
    prose or a code fence); None when the reply holds no usable score."""
    start, end = reply.find("{"), reply.rfind("}")
    value: object = None
    if 0 <= start < end:
        try:
            value = json.loads(reply[start : end + 1]).get("grounded")
        except (json.JSONDecodeError, AttributeError):
            match = _SCORE.search(reply)
            value = float(match.group(1)) if match else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    score = float(value)
    return score if 0.0 <= score <= 1.0 else None
