"""Metrics: hand-computed values and properties against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kloop_model.metrics import (
    accuracy,
    average_ranks,
    evaluate,
    f1,
    log_loss,
    precision,
    recall,
    roc_auc,
)


def brute_force_auc(labels: list[int], scores: list[float]) -> float:
    positives = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    negatives = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_hand_computed_values() -> None:
    y_true = [1, 1, 1, 0, 0, 0, 0, 1]
    y_pred = [1, 0, 1, 0, 1, 0, 0, 1]  # tp=3 fn=1 fp=1 tn=3
    assert accuracy(y_true, y_pred) == 0.75
    assert precision(y_true, y_pred) == 0.75
    assert recall(y_true, y_pred) == 0.75
    assert f1(y_true, y_pred) == 0.75
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    expected = -(math.log(0.9) + math.log(0.8)) / 2
    assert log_loss([1, 0], [0.9, 0.2]) == pytest.approx(expected, rel=1e-12)


def test_undefined_ratios_are_zero() -> None:
    assert precision([1, 0], [0, 0]) == 0.0
    assert recall([0, 0], [1, 0]) == 0.0
    assert f1([0, 0], [0, 0]) == 0.0


def test_log_loss_is_clipped() -> None:
    assert math.isfinite(log_loss([1, 0], [0.0, 1.0]))
    assert log_loss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(1e-15), rel=1e-6)
    assert log_loss([1, 0], [1.0, 0.0]) == pytest.approx(0.0, abs=1e-12)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        accuracy([2, 0], [1, 0])
    with pytest.raises(ValueError, match="length mismatch"):
        roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="empty"):
        log_loss([], [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_loss([0, 1], [0.5, 1.5])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="one class"):
        roc_auc([1, 1], [0.1, 0.2])


def test_evaluate() -> None:
    metrics = evaluate([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9])
    assert set(metrics) == {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}
    assert metrics["accuracy"] == 0.5
    assert metrics["roc_auc"] == 0.75
    assert all(isinstance(value, float) for value in metrics.values())
    assert math.isnan(evaluate([1, 1], [0.2, 0.9])["roc_auc"])
    assert evaluate([0, 1], [0.5, 0.5], threshold=0.5)["recall"] == 1.0


labels_strategy = st.lists(st.integers(0, 1), min_size=2, max_size=40)
# A grid (so the transforms below stay strictly increasing in floating point), often
# coarse so that ties are common.
probability = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]) | st.integers(0, 1000).map(
    lambda i: i / 1000
)


@st.composite
def labels_and_scores(draw: st.DrawFn) -> tuple[list[int], list[float]]:
    labels = draw(labels_strategy)
    scores = draw(st.lists(probability, min_size=len(labels), max_size=len(labels)))
    return labels, scores


@given(labels_and_scores())
def test_auc_matches_brute_force_pairs(data: tuple[list[int], list[float]]) -> None:
    labels, scores = data
    assume(0 < sum(labels) < len(labels))
    assert roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


@given(labels_and_scores())
def test_auc_is_invariant_to_strictly_increasing_transforms(
    data: tuple[list[int], list[float]],
) -> None:
    labels, scores = data
    assume(0 < sum(labels) < len(labels))
    array = np.array(scores)
    auc = roc_auc(labels, array)
    assert roc_auc(labels, 3 * array - 7) == pytest.approx(auc, abs=1e-12)
    assert roc_auc(labels, np.exp(array)) == pytest.approx(auc, abs=1e-12)
    # A decreasing transform reflects it.
    assert roc_auc(labels, -array) == pytest.approx(1 - auc, abs=1e-12)


@given(labels_strategy)
def test_auc_of_a_perfect_ranking_is_one(labels: list[int]) -> None:
    assume(0 < sum(labels) < len(labels))
    assert roc_auc(labels, labels) == 1.0
    assert roc_auc(labels, [1 - y for y in labels]) == 0.0
    assert roc_auc(labels, [0.5] * len(labels)) == 0.5


@given(labels_and_scores())
def test_bounds_and_identities(data: tuple[list[int], list[float]]) -> None:
    labels, scores = data
    predicted = [int(s >= 0.5) for s in scores]
    assert log_loss(labels, scores) >= 0.0
    for metric in (accuracy, precision, recall, f1):
        assert 0.0 <= metric(labels, predicted) <= 1.0
    p, r = precision(labels, predicted), recall(labels, predicted)
    expected_f1 = 2 * p * r / (p + r) if p + r else 0.0
    assert f1(labels, predicted) == pytest.approx(expected_f1, abs=1e-12)
    assert log_loss(labels, labels) == pytest.approx(0.0, abs=1e-12)


@given(st.lists(st.sampled_from([1.0, 2.0, 2.0, 3.0]) | st.floats(-5, 5), max_size=30))
def test_average_ranks_match_brute_force(values: list[float]) -> None:
    expected = [
        sum(1 for w in values if w < v) + (sum(1 for w in values if w == v) + 1) / 2 for v in values
    ]
    assert average_ranks(values).tolist() == pytest.approx(expected)
