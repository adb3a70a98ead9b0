"""Properties of the BM25 tokenizer and sparse encoding."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kloop_vectorstore import bm25

words = st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=12)
texts = st.lists(words, max_size=40).map(" ".join)


def test_tokenize_lowercases_splits_on_punctuation_and_drops_stopwords() -> None:
    assert bm25.tokenize("The Printer's ERROR: E4021, in tray-2!") == [
        "printer",
        "s",
        "error",
        "e4021",
        "tray",
        "2",
    ]


def test_term_ids_are_stable_crc32() -> None:
    assert bm25.term_id("printer") == zlib.crc32(b"printer")
    assert 0 <= bm25.term_id("ünïcode") < 2**32


@given(texts)
def test_tokens_are_lowercase_words_without_stopwords(text: str) -> None:
    for token in bm25.tokenize(text):
        assert token == token.casefold()
        assert token not in bm25.STOPWORDS
        assert 0 < len(token) <= bm25.MAX_TOKEN_CHARS


@given(texts)
def test_document_vector_is_sorted_and_saturated(text: str) -> None:
    vector = bm25.document_vector(text)
    assert list(vector.indices) == sorted(set(vector.indices))
    assert all(0.0 < v < bm25.K1 + 1.0 for v in vector.values)
    # Same terms on both sides: a text always matches itself.
    assert set(bm25.query_vector(text).indices) == set(vector.indices)
    assert all(v == 1.0 for v in bm25.query_vector(text).values)


@given(
    tf=st.integers(1, 1000),
    length=st.integers(1, 10_000),
    k1=st.floats(0.1, 3.0),
    b=st.floats(0.0, 1.0),
)
def test_saturation_grows_with_tf_and_shrinks_with_length(
    tf: int, length: int, k1: float, b: float
) -> None:
    w = bm25.saturate(tf, length, k1=k1, b=b, avg_doc_length=100.0)
    assert 0 < w < k1 + 1
    assert bm25.saturate(tf + 1, length, k1=k1, b=b, avg_doc_length=100.0) > w
    assert bm25.saturate(tf, length + 1, k1=k1, b=b, avg_doc_length=100.0) <= w


@given(st.lists(texts, min_size=1, max_size=8), texts)
def test_reference_scores_are_non_negative_and_zero_without_shared_terms(
    corpus: list[str], query: str
) -> None:
    scores = bm25.bm25_scores(query, corpus)
    query_terms = set(bm25.query_vector(query).indices)
    for text, score in zip(corpus, scores, strict=True):
        shared = query_terms & set(bm25.document_vector(text).indices)
        assert score >= 0
        assert (score > 0) == bool(shared)


def test_rarer_terms_weigh_more() -> None:
    corpus = ["apple banana", "apple cherry", "apple date"]
    scores = bm25.bm25_scores("apple banana", corpus)
    assert scores[0] > scores[1] == pytest.approx(scores[2])
    assert bm25.idf(3, 1) > bm25.idf(3, 3) > 0
