from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kloop_registry.gate import (
    METRIC_DIRECTIONS,
    Direction,
    HoldoutError,
    decide,
    improvement,
    parse_holdout,
    sha256_hex,
)

finite = st.floats(min_value=0.0, max_value=10.0, allow_nan=False)
metrics = st.sampled_from(sorted(METRIC_DIRECTIONS))
margins = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


def _decide(metric: str, margin: float, cand: float, base: float | None):
    return decide(
        metric=metric,
        margin=margin,
        candidate_version="2",
        candidate_metrics={metric: cand},
        baseline_alias="production",
        baseline_version=None if base is None else "1",
        baseline_metrics=None if base is None else {metric: base},
    )


def test_log_loss_lower_is_better_and_margin_applies() -> None:
    assert _decide("log_loss", 0.01, 0.30, 0.35).approved
    rejected = _decide("log_loss", 0.01, 0.345, 0.35)
    assert not rejected.approved
    assert rejected.improvement == pytest.approx(0.005)
    assert "rejected" in rejected.explanation and "margin 0.0100" in rejected.explanation


def test_accuracy_higher_is_better() -> None:
    assert _decide("accuracy", 0.01, 0.90, 0.85).approved
    assert not _decide("accuracy", 0.01, 0.85, 0.90).approved


def test_improvement_of_exactly_the_margin_is_approved() -> None:
    # 0.35 - 0.34 is 0.009999999999999953 in binary floating point.
    assert _decide("log_loss", 0.01, 0.34, 0.35).approved


def test_no_baseline_approves_first_version_and_says_so() -> None:
    result = _decide("log_loss", 0.01, 0.4, None)
    assert result.approved
    assert result.baseline_value is None
    assert "first version" in result.explanation and "'production'" in result.explanation


def test_nan_metrics_reject() -> None:
    assert not _decide("roc_auc", 0.0, math.nan, None).approved
    assert not _decide("roc_auc", 0.0, 0.9, math.nan).approved


def test_unknown_metric_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        _decide("auprc", 0.0, 0.5, 0.4)


@given(metrics, margins, finite, finite)
def test_approved_iff_improvement_reaches_margin(
    metric: str, margin: float, cand: float, base: float
) -> None:
    result = _decide(metric, margin, cand, base)
    gain = cand - base if METRIC_DIRECTIONS[metric] is Direction.HIGHER else base - cand
    assert result.improvement == gain == improvement(metric, cand, base)
    if abs(gain - margin) > 1e-9:
        assert result.approved == (gain >= margin)
    assert result.candidate_value == cand and result.baseline_value == base


@given(metrics, st.floats(min_value=1e-6, max_value=1.0), finite, finite)
def test_two_versions_cannot_both_beat_each_other(
    metric: str, margin: float, a: float, b: float
) -> None:
    assert not (_decide(metric, margin, a, b).approved and _decide(metric, margin, b, a).approved)


@given(metrics, finite, finite)
def test_zero_margin_approves_ties(metric: str, a: float, b: float) -> None:
    assert _decide(metric, 0.0, a, a).approved
    assert _decide(metric, 0.0, a, b).approved or _decide(metric, 0.0, b, a).approved


rows = st.lists(st.tuples(st.text(), st.sampled_from([0, 1])), min_size=1, max_size=30)


@given(rows)
def test_holdout_round_trip(data: list[tuple[str, int]]) -> None:
    raw = "\n".join(json.dumps({"text": t, "label": y}) for t, y in data).encode()
    holdout = parse_holdout(raw + b"\n\n")
    assert holdout.texts == [t for t, _ in data]
    assert holdout.labels == [y for _, y in data]
    assert len(holdout) == len(data)
    assert holdout.digest == sha256_hex(raw + b"\n\n")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"\n  \n", "empty"),
        (b"{not json}\n", "line 1: not JSON"),
        (b'{"text":"a","label":1}\n[1]\n', "line 2: expected an object"),
        (b'{"text":1,"label":1}\n', "'text' must be a string"),
        (b'{"text":"a","label":2}\n', "'label' must be 0 or 1"),
        (b'{"text":"a","label":true}\n', "'label' must be 0 or 1"),
        (b'{"text":"a"}\n', "'label' must be 0 or 1"),
    ],
)
def test_bad_holdouts_are_explained(raw: bytes, message: str) -> None:
    with pytest.raises(HoldoutError, match=message):
        parse_holdout(raw)
