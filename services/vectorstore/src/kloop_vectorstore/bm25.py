"""BM25 as sparse vectors: the document side here, the IDF side in Qdrant.

A text becomes a sparse vector whose indices are stable hashes of its terms and whose
values are BM25's saturated, length-normalised term frequencies

    w(t, d) = tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl))

A query becomes its distinct terms with weight 1. Qdrant's sparse index, created with
the IDF modifier, scores a point as sum over shared terms of idf(t) * q(t) * w(t, d)
with idf(t) = ln(1 + (N - n(t) + 0.5) / (n(t) + 0.5)) kept up to date by the engine as
documents come and go, which is exactly Okapi BM25 (avgdl is a per-collection
constant, fixed at creation, as in Qdrant's own BM25). Both backends (qdrant-edge and
qdrant-client) support the modifier; tests compare their scores with `bm25_scores`,
a direct implementation used only as the reference.

Term ids are CRC-32 of the UTF-8 term: stable across processes, Python versions and
machines (unlike `hash()`), 32 bits as Qdrant's sparse indices are. Terms that collide
(rare: ~n^2/2^33 pairs for n distinct terms) share a dimension; their counts add up.
"""

from __future__ import annotations

import math
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

K1 = 1.2
B = 0.75
AVG_DOC_LENGTH = 128.0
MAX_TOKEN_CHARS = 40

# Words: letters/digits, keeping inner apostrophes/dots/hyphens out (they split).
_WORD = re.compile(r"\w+", re.UNICODE)

# A short English list: the words that carry no topic and would dominate term counts.
_STOPWORDS_TEXT = """
    a an and are as at be but by for from has have he her his i if in into is it its
    me my no not of on or our she so than that the their them then there these they
    this to was we were what when where which who will with you your
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def tokenize(text: str) -> list[str]:
    """Lower-cased NFKC word tokens, stopwords and over-long tokens dropped."""
    normalized = unicodedata.normalize("NFKC", text).casefold()
    return [
        token
        for token in _WORD.findall(normalized)
        if token not in STOPWORDS and len(token) <= MAX_TOKEN_CHARS and token.strip("_")
    ]


def term_id(term: str) -> int:
    """Stable 32-bit id of a term (CRC-32 of its UTF-8 bytes)."""
    return zlib.crc32(term.encode("utf-8"))


@dataclass(frozen=True)
class SparseTerms:
    """A sparse vector: strictly increasing indices, one value each."""

    indices: tuple[int, ...]
    values: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.indices)

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.indices, self.values, strict=True))


def _sparse(weights: dict[int, float]) -> SparseTerms:
    ordered = sorted(weights)
    return SparseTerms(tuple(ordered), tuple(weights[i] for i in ordered))


def term_counts(tokens: Iterable[str]) -> Counter[int]:
    """Occurrences per term id (colliding terms add up)."""
    return Counter(term_id(token) for token in tokens)


def saturate(tf: float, doc_length: int, *, k1: float, b: float, avg_doc_length: float) -> float:
    """BM25's term-frequency component for one term of one document."""
    norm = k1 * (1.0 - b + b * doc_length / avg_doc_length)
    return tf * (k1 + 1.0) / (tf + norm)


def document_vector(
    text: str, *, k1: float = K1, b: float = B, avg_doc_length: float = AVG_DOC_LENGTH
) -> SparseTerms:
    """The document side of BM25: saturated term frequencies by term id."""
    tokens = tokenize(text)
    counts = term_counts(tokens)
    return _sparse(
        {
            term: saturate(tf, len(tokens), k1=k1, b=b, avg_doc_length=avg_doc_length)
            for term, tf in counts.items()
        }
    )


def query_vector(text: str) -> SparseTerms:
    """The query side: each distinct term once, weight 1 (Okapi BM25 ignores query tf)."""
    return _sparse(dict.fromkeys(term_counts(tokenize(text)), 1.0))


def idf(documents: int, containing: int) -> float:
    """Qdrant's (and Lucene's) non-negative BM25 idf."""
    return math.log(1.0 + (documents - containing + 0.5) / (containing + 0.5))


def bm25_scores(
    query: str,
    corpus: Sequence[str],
    *,
    k1: float = K1,
    b: float = B,
    avg_doc_length: float = AVG_DOC_LENGTH,
) -> list[float]:
    """Reference BM25 of `query` against every text of `corpus` (tests, small sets)."""
    docs = [document_vector(t, k1=k1, b=b, avg_doc_length=avg_doc_length) for t in corpus]
    terms = query_vector(query).indices
    containing = {t: sum(1 for d in docs if t in d.as_dict()) for t in terms}
    scores = []
    for doc in docs:
        weights = doc.as_dict()
        scores.append(
            sum(idf(len(docs), containing[t]) * weights[t] for t in terms if t in weights)
        )
    return scores
