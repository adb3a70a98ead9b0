"""Reference profile: binning rule, per-text features, profile content."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kloop_model.classifier import SentimentClassifier
from kloop_model.dataset import builtin_dataset, shifted_dataset
from kloop_model.profile import (
    LENGTH_EDGES,
    OOV_RATE_EDGES,
    SCORE_EDGES,
    bin_counts,
    build_reference_profile,
    features,
    histogram,
)


def test_binning_rule() -> None:
    edges = [0.0, 1.0, 2.0, 3.0]
    # [0,1) [1,2) [2,3]; outside values clipped into the end bins.
    assert bin_counts([0, 0.99, 1, 2.5, 3, -5, 99], edges).tolist() == [3, 1, 3]
    assert bin_counts([], edges).tolist() == [0, 0, 0]
    assert bin_counts([1.0], SCORE_EDGES).tolist() == [0] * 9 + [1]
    assert bin_counts([0.0, 0.1], SCORE_EDGES).tolist() == [1, 1] + [0] * 8


def test_binning_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        bin_counts([np.nan], SCORE_EDGES)
    with pytest.raises(ValueError, match="increasing"):
        bin_counts([1.0], [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="increasing"):
        bin_counts([1.0], [0.0])


@given(st.lists(st.floats(0, 1), max_size=50))
def test_binning_matches_numpy_histogram_inside_the_edges(values: list[float]) -> None:
    expected, _ = np.histogram(values, bins=np.asarray(SCORE_EDGES))
    assert bin_counts(values, SCORE_EDGES).tolist() == expected.tolist()


@given(st.lists(st.floats(-1e6, 1e6) | st.integers(-10, 1000), max_size=50))
def test_every_value_lands_in_exactly_one_bin(values: list[float]) -> None:
    for edges in (LENGTH_EDGES, OOV_RATE_EDGES, SCORE_EDGES):
        counts = bin_counts(values, edges)
        assert len(counts) == len(edges) - 1
        assert counts.sum() == len(values)
        fractions = histogram(values, edges)["fractions"]
        assert sum(fractions) == pytest.approx(1.0 if values else 0.0)


def test_features(builtin_model: SentimentClassifier) -> None:
    texts = ["great product!", "zzz qqq great", "", "!!!", "qqq"]
    computed = features(builtin_model, texts)
    assert computed["length"].tolist() == [2, 3, 0, 0, 1]
    assert computed["length"].dtype == np.int64
    assert computed["oov_rate"].tolist() == pytest.approx([0.0, 2 / 3, 0.0, 0.0, 1.0])


def test_reference_profile_content(builtin_model: SentimentClassifier) -> None:
    texts = builtin_dataset().texts
    scores = builtin_model.predict_proba(texts)
    profile = build_reference_profile(builtin_model, texts, scores, top_k=10)
    assert json.loads(json.dumps(profile, allow_nan=False)) == profile
    assert profile["sample_count"] == 50
    assert profile["vocab_size"] == builtin_model.vocab_size
    for name, edges in (
        ("length", LENGTH_EDGES),
        ("oov_rate", OOV_RATE_EDGES),
        ("score", SCORE_EDGES),
    ):
        summary = profile["features"][name]
        assert summary["edges"] == list(edges)
        assert sum(summary["counts"]) == 50
        assert set(summary["quantiles"]) == {"p05", "p25", "p50", "p75", "p95"}
    assert profile["features"]["score"]["counts"] == bin_counts(scores, SCORE_EDGES).tolist()
    assert profile["features"]["oov_rate"]["counts"][0] == 50  # training texts: no OOV
    tokens = profile["tokens"]
    frequencies = list(tokens["frequencies"].values())
    assert len(frequencies) == 10 and frequencies == sorted(frequencies, reverse=True)
    assert tokens["oov_mass"] == 0.0
    assert profile["predicted_positive_rate"] == 0.5


def test_full_top_k_frequencies_and_oov_mass_sum_to_one(
    builtin_model: SentimentClassifier,
) -> None:
    texts = shifted_dataset().texts[:40]
    profile = build_reference_profile(
        builtin_model, texts, builtin_model.predict_proba(texts), top_k=10_000
    )
    tokens = profile["tokens"]
    assert sum(tokens["frequencies"].values()) + tokens["oov_mass"] == pytest.approx(1.0)
    assert tokens["oov_mass"] > 0.5  # a shifted vocabulary shows up


def test_profile_of_no_texts_and_bad_scores(builtin_model: SentimentClassifier) -> None:
    empty = build_reference_profile(builtin_model, [], np.array([]))
    assert empty["sample_count"] == 0
    assert empty["features"]["length"]["mean"] is None
    json.dumps(empty, allow_nan=False)
    with pytest.raises(ValueError, match="scores"):
        build_reference_profile(builtin_model, ["a"], [0.5, 0.5])
    with pytest.raises(ValueError, match="probabilities"):
        build_reference_profile(builtin_model, ["a"], [1.5])


def test_profile_is_deterministic(builtin_model: SentimentClassifier) -> None:
    texts = shifted_dataset().texts
    scores = builtin_model.predict_proba(texts)
    assert build_reference_profile(builtin_model, texts, scores) == build_reference_profile(
        builtin_model, texts, scores
    )
