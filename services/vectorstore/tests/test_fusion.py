"""Properties of reciprocal rank fusion."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kloop_vectorstore.fusion import DEFAULT_K, rrf

ranking = st.lists(st.integers(0, 30), unique=True, max_size=15)


def test_textbook_example() -> None:
    fused = rrf([["a", "b", "c"], ["c", "a"]])
    assert [item for item, _ in fused] == ["a", "c", "b"]
    assert dict(fused)["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert dict(fused)["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert dict(fused)["b"] == pytest.approx(1 / 62)


@given(st.lists(ranking, min_size=1, max_size=4), st.integers(0, 100))
def test_scores_follow_the_formula_and_come_sorted(rankings: list[list[int]], k: int) -> None:
    fused = rrf(rankings, k=k)
    expected = {}
    for r in rankings:
        for rank, item in enumerate(r, start=1):
            expected[item] = expected.get(item, 0.0) + 1 / (k + rank)
    assert {i for i, _ in fused} == set(expected)
    for item, score in fused:
        assert score == pytest.approx(expected[item])
    scores = [s for _, s in fused]
    assert scores == sorted(scores, reverse=True)


@given(st.lists(ranking, min_size=2, max_size=4))
def test_order_of_the_rankings_does_not_change_scores(rankings: list[list[int]]) -> None:
    forward = dict(rrf(rankings))
    backward = dict(rrf(list(reversed(rankings))))
    assert forward.keys() == backward.keys()
    for item in forward:
        assert forward[item] == pytest.approx(backward[item])


@given(ranking.filter(lambda r: len(r) >= 2))
def test_an_item_ranked_better_everywhere_scores_higher(order: list[int]) -> None:
    fused = dict(rrf([order, order]))
    assert fused[order[0]] > fused[order[1]]
    assert fused[order[0]] == pytest.approx(2 / (DEFAULT_K + 1))


def test_weights_and_bad_arguments() -> None:
    fused = dict(rrf([["a"], ["b"]], weights=[2.0, 1.0]))
    assert fused["a"] == pytest.approx(2 * fused["b"])
    with pytest.raises(ValueError):
        rrf([["a"]], k=-1)
    with pytest.raises(ValueError):
        rrf([["a"]], weights=[1.0, 2.0])
