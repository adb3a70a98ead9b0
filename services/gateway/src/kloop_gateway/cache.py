"""Prediction cache keys and values (cache-aside in Redis).

Key: ``kloop:gw:cache:<model>:<version>:<digest of the canonical text>``. The version
is the one that produced (or, on a read, currently answers for) the alias, never the
alias itself: a new version can therefore never be answered from an old one's entries,
and versions are immutable, so an entry never needs invalidating (it just expires).
Value: the score as text.
"""

from __future__ import annotations

import hashlib
import math

CACHE_PREFIX = "kloop:gw:cache"


def cache_key(model: str, version: str, text: str) -> str:
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return f"{CACHE_PREFIX}:{model}:{version}:{digest}"


def encode_score(score: float) -> str:
    return repr(score)


def decode_score(raw: bytes | str | None) -> float | None:
    """The cached score, or None for a miss or an entry that is not a finite number."""
    if raw is None:
        return None
    try:
        score = float(raw)
    except ValueError:
        return None
    return score if math.isfinite(score) else None
