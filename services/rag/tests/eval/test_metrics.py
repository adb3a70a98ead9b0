"""Property tests of the evaluation's metric functions."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kloop_rag.eval.metrics import (
    mean,
    parse_groundedness,
    recall_at_k,
    reciprocal_rank,
    unique_in_order,
)

docs = st.sampled_from([f"d{i}" for i in range(8)])
ranked_lists = st.lists(docs, max_size=10, unique=True)
relevant_sets = st.sets(docs, max_size=5)


@given(ranked_lists, relevant_sets, st.integers(0, 12))
def test_recall_is_a_share(ranked, relevant, k) -> None:
    value = recall_at_k(ranked, relevant, k)
    assert 0.0 <= value <= 1.0
    if relevant:
        assert value * len(relevant) == len(set(ranked[:k]) & relevant)


@given(ranked_lists, relevant_sets, st.integers(0, 11))
def test_recall_never_drops_with_larger_k(ranked, relevant, k) -> None:
    assert recall_at_k(ranked, relevant, k) <= recall_at_k(ranked, relevant, k + 1)


@given(ranked_lists, relevant_sets)
def test_recall_is_one_when_everything_relevant_is_ranked(ranked, relevant) -> None:
    if relevant <= set(ranked):
        assert recall_at_k(ranked, relevant, len(ranked)) == 1.0


@given(ranked_lists, relevant_sets)
def test_reciprocal_rank(ranked, relevant) -> None:
    value = reciprocal_rank(ranked, relevant)
    assert 0.0 <= value <= 1.0
    hits = [i for i, d in enumerate(ranked, start=1) if d in relevant]
    assert value == (1.0 / hits[0] if hits else 0.0)
    if ranked and ranked[0] in relevant:
        assert value == 1.0
    # Recall@rank-of-first-hit is positive exactly when the RR is.
    if value:
        assert recall_at_k(ranked, relevant, round(1 / value)) > 0


@given(st.lists(docs, max_size=20))
def test_unique_in_order(items) -> None:
    out = unique_in_order(items)
    assert len(out) == len(set(items))
    assert sorted(out, key=items.index) == out


@given(st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_mean_is_between_min_and_max(values) -> None:
    assert min(values) - 1e-12 <= mean(values) <= max(values) + 1e-12


@given(st.floats(0, 1))
def test_parse_groundedness_round_trips(score) -> None:
    assert (
        parse_groundedness(f'Here: ```json\n{{"grounded": {score!r}, "unsupported": []}}\n```')
        == score
    )


def test_parse_groundedness_rejects_garbage() -> None:
    assert parse_groundedness("no json") is None
    assert parse_groundedness('{"grounded": 1.5}') is None
    assert parse_groundedness('{"grounded": true}') is None
    assert parse_groundedness('{"grounded": 0.5, bad}') == 0.5
    assert mean([]) == 0.0
