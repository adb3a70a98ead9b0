"""Counting into windows and the drift decision, as pure functions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kloop_drift_monitor.events import PredictionEvent, parse_prediction
from kloop_drift_monitor.reference import ReferenceError, build_reference
from kloop_drift_monitor.windows import (
    MonitorConfig,
    VersionState,
    apply_predictions,
    close_expired,
)
from kloop_model.classifier import SentimentClassifier
from kloop_model.dataset import builtin_dataset, shifted_dataset
from kloop_model.profile import FEATURE_EDGES, bin_counts, features

from .helpers import reference_documents, stream_of


def events_of(fields_list: list[dict[str, str]]) -> list[PredictionEvent]:
    return [parse_prediction({k.encode(): v.encode() for k, v in f.items()}) for f in fields_list]


@pytest.fixture(scope="module")
def reference(builtin_model: SentimentClassifier):  # type: ignore[no-untyped-def]
    profile, document = reference_documents(builtin_model, builtin_dataset().texts)
    return build_reference("sentiment", "1", profile, document)


def test_histograms_use_the_profiles_binning(builtin_model, reference) -> None:  # type: ignore[no-untyped-def]
    texts = shifted_dataset().texts[:150]
    events = events_of(stream_of(builtin_model, texts, 150, seed=1))
    state = VersionState("sentiment", "1")
    apply_predictions(
        state, events, reference, MonitorConfig(window_events=1000, slide_events=1000)
    )
    assert (state.events, state.events_with_text, state.pane.events) == (150, 150, 150)
    expected = features(builtin_model, [e.text or "" for e in events])
    counts = state.pane.counts
    assert (
        counts["length"].tolist()
        == bin_counts(expected["length"], FEATURE_EDGES["length"]).tolist()
    )
    assert counts["oov_rate"].tolist() == (
        bin_counts(expected["oov_rate"], FEATURE_EDGES["oov_rate"]).tolist()
    )
    assert counts["score"].tolist() == (
        bin_counts([e.score for e in events], FEATURE_EDGES["score"]).tolist()
    )
    # Every token lands in exactly one category.
    assert counts["tokens"].sum() == expected["length"].sum()


def test_tumbling_windows_close_every_window_events(builtin_model, reference) -> None:  # type: ignore[no-untyped-def]
    events = events_of(stream_of(builtin_model, builtin_dataset().texts, 450))
    state = VersionState("sentiment", "1")
    config = MonitorConfig(window_events=200, slide_events=200, min_events=100)
    results = apply_predictions(state, events[:150], reference, config)
    results += apply_predictions(state, events[150:], reference, config)
    assert [r.sequence for r in results] == [1, 2] and [r.events for r in results] == [200, 200]
    assert state.pane.events == 50 and state.current_window_events() == 50
    assert len(state.sample) == min(config.reservoir_size, 200)


def test_sliding_windows_overlap(builtin_model, reference) -> None:  # type: ignore[no-untyped-def]
    events = events_of(stream_of(builtin_model, builtin_dataset().texts, 400))
    state = VersionState("sentiment", "1")
    config = MonitorConfig(window_events=200, slide_events=50, min_events=100)
    results = apply_predictions(state, events, reference, config)
    # The first window once 4 slides are closed, then one per slide.
    assert [r.sequence for r in results] == [1, 2, 3, 4, 5]
    assert all(r.events == 200 for r in results)


def test_time_limit_closes_small_windows_left_undecided(builtin_model, reference) -> None:  # type: ignore[no-untyped-def]
    events = events_of(stream_of(builtin_model, builtin_dataset().texts, 30))
    shifted = [
        PredictionEvent(e.id, 1000.0 + i * 10, e.model, e.version, e.score, e.tokens, e.text)
        for i, e in enumerate(events)
    ]
    state = VersionState("sentiment", "1")
    config = MonitorConfig(window_events=1000, slide_events=1000, max_seconds=100, min_events=5)
    results = apply_predictions(state, shifted, reference, config)
    assert [r.events for r in results] == [10, 10] and state.pane.events == 10
    assert all(r.decided for r in results)
    # A quiet stream: the wall clock closes the open pane.
    assert close_expired(state, 1200.0 + 99, reference, config) is None
    closed = close_expired(state, 1200.0 + 100, reference, config)
    assert closed is not None and closed.events == 10
    few = MonitorConfig(window_events=1000, slide_events=1000, max_seconds=100, min_events=50)
    undecided = apply_predictions(VersionState("sentiment", "1"), shifted, reference, few)[0]
    assert not undecided.decided and "fewer than the 50" in undecided.note


def test_shifted_stream_drifts_and_in_distribution_does_not(builtin_model, reference) -> None:  # type: ignore[no-untyped-def]
    config = MonitorConfig(window_events=500, slide_events=500, min_events=100)
    calm = VersionState("sentiment", "1")
    calm_results = apply_predictions(
        calm,
        events_of(stream_of(builtin_model, builtin_dataset().texts, 1500, seed=2)),
        reference,
        config,
    )
    shifted = VersionState("sentiment", "1")
    shifted_results = apply_predictions(
        shifted,
        events_of(stream_of(builtin_model, shifted_dataset().texts, 1500, seed=3)),
        reference,
        config,
    )
    assert len(calm_results) == len(shifted_results) == 3
    assert not any(r.drifted for r in calm_results) and calm.streak == 0
    assert all(r.drifted for r in shifted_results) and shifted.streak == 3
    drifted = {(d.feature, d.metric) for d in shifted_results[-1].drift if d.drifted}
    # New vocabulary: OOV rate and the token distribution are what moves most.
    assert {("oov_rate", "psi"), ("tokens", "js"), ("tokens", "psi")} <= drifted
    calm_values = {(d.feature, d.metric): d.value for d in calm_results[-1].drift}
    assert set(calm_values) == {
        (f, m) for f in ("length", "score", "oov_rate") for m in ("psi", "ks")
    } | {("tokens", "psi"), ("tokens", "js")}


def test_without_text_only_length_and_score_are_compared(builtin_model, reference) -> None:  # type: ignore[no-untyped-def]
    events = events_of(stream_of(builtin_model, shifted_dataset().texts, 200, include_text=False))
    state = VersionState("sentiment", "1")
    config = MonitorConfig(window_events=200, slide_events=200, min_events=100)
    (result,) = apply_predictions(state, events, reference, config)
    assert {d.feature for d in result.drift} == {"length", "score"}
    assert "carried text" in result.note and state.events_with_text == 0
    assert all(row[3] is None for row in state.sample)


def test_without_reference_windows_are_counted_but_not_decided(builtin_model) -> None:  # type: ignore[no-untyped-def]
    events = events_of(stream_of(builtin_model, builtin_dataset().texts, 200))
    state = VersionState("sentiment", "1")
    (result,) = apply_predictions(
        state, events, None, MonitorConfig(window_events=200, slide_events=200)
    )
    assert not result.decided and result.drift == () and state.events == 200


def test_state_round_trips_through_json_and_replays_identically(builtin_model, reference) -> None:  # type: ignore[no-untyped-def]
    events = events_of(stream_of(builtin_model, shifted_dataset().texts, 700, seed=5))
    config = MonitorConfig(window_events=200, slide_events=100, min_events=50, reservoir_size=20)
    once = VersionState("sentiment", "1")
    apply_predictions(once, events, reference, config)
    split = VersionState("sentiment", "1")
    for start in range(0, 700, 130):  # persisted and reloaded between batches
        split = VersionState.from_dict(json.loads(json.dumps(split.to_dict())))
        apply_predictions(split, events[start : start + 130], reference, config)
    assert json.dumps(split.to_dict()) == json.dumps(once.to_dict())


def test_reference_refuses_other_edges_and_works_without_model_json(builtin_model) -> None:  # type: ignore[no-untyped-def]
    profile, _ = reference_documents(builtin_model, builtin_dataset().texts)
    without_vocab = build_reference("m", "1", profile, None)
    assert not without_vocab.has_text_features
    assert without_vocab.token_fractions.sum() == pytest.approx(1.0)
    bad = json.loads(json.dumps(profile))
    bad["features"]["score"]["edges"] = np.linspace(0, 1, 5).tolist()
    with pytest.raises(ReferenceError):
        build_reference("m", "1", bad, None)
    with pytest.raises(ReferenceError):
        build_reference("m", "1", {"profile_version": 99}, None)
