"""Parsing the gateway's events; every malformed shape names its reason."""

from __future__ import annotations

import pytest

from kloop_drift_monitor.events import MalformedEvent, parse_feedback, parse_prediction

from .helpers import feedback_fields, prediction_fields


def encoded(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_prediction_with_and_without_text() -> None:
    fields = prediction_fields("Great food!", 0.9, event_id="e1", version="3")
    event = parse_prediction(encoded(fields))
    assert (event.id, event.model, event.version, event.score, event.tokens) == (
        "e1",
        "sentiment",
        "3",
        0.9,
        2,
    )
    assert event.text == "Great food!" and event.time > 1.7e9
    fields.pop("text")
    assert parse_prediction(encoded(fields)).text is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"schema": "2"}, "unknown_schema"),
        ({"schema": None}, "unknown_schema"),
        ({"score": "high"}, "bad_score"),
        ({"score": "nan"}, "bad_score"),
        ({"score": "1.5"}, "bad_score"),
        ({"score": None}, "missing_field"),
        ({"tokens": "-1"}, "bad_tokens"),
        ({"tokens": "1.5"}, "bad_tokens"),
        ({"time": "yesterday"}, "bad_time"),
        ({"time": "2026-11-01T10:00:00"}, "bad_time"),
        ({"model": ""}, "bad_field"),
        ({"version": None}, "missing_field"),
        ({"id": "x" * 300}, "bad_field"),
    ],
)
def test_malformed_predictions(change: dict[str, str | None], reason: str) -> None:
    fields: dict[str, str] = prediction_fields("text", 0.5)
    for key, value in change.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    with pytest.raises(MalformedEvent) as info:
        parse_prediction(encoded(fields))
    assert info.value.reason == reason


def test_invalid_utf8_text_is_malformed() -> None:
    fields = encoded(prediction_fields("text", 0.5))
    fields[b"text"] = b"\xff\xfe"
    with pytest.raises(MalformedEvent) as info:
        parse_prediction(fields)
    assert info.value.reason == "bad_text"


def test_feedback() -> None:
    event = parse_feedback(encoded(feedback_fields("p1", "negative", "positive", version="2")))
    assert (event.prediction_id, event.true_label, event.predicted_label, event.version) == (
        "p1",
        "negative",
        "positive",
        "2",
    )
    fields = feedback_fields("p1", "negative", "positive")
    fields.pop("predicted_label")
    with pytest.raises(MalformedEvent) as info:
        parse_feedback(encoded(fields))
    assert info.value.reason == "missing_field"
