from __future__ import annotations

from datetime import UTC, datetime

from kloop_gateway.prediction import Prediction, label_for, prediction_event, prediction_record

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
P = Prediction(
    id="a" * 32, label="positive", score=0.75, model="m", version="3", alias="canary", cached=True
)


def test_label_for_threshold() -> None:
    labels = ("neg", "pos")
    assert label_for(0.5, labels, 0.5) == "pos"
    assert label_for(0.49, labels, 0.5) == "neg"


def test_record_has_what_feedback_needs() -> None:
    assert prediction_record(P, AT) == {
        "model": "m",
        "version": "3",
        "alias": "canary",
        "predicted_label": "positive",
        "score": "0.75",
        "prediction_time": "2026-01-02T03:04:05+00:00",
    }


def test_event_fields_and_text_only_when_asked() -> None:
    event = prediction_event(
        P, text="great food", tokens=2, at=AT, latency_seconds=0.0015, include_text=False
    )
    assert event == {
        "schema": "1",
        "id": "a" * 32,
        "time": "2026-01-02T03:04:05+00:00",
        "model": "m",
        "version": "3",
        "alias": "canary",
        "label": "positive",
        "score": "0.75",
        "latency_seconds": "0.001500",
        "cached": "1",
        "tokens": "2",
        "chars": "10",
    }
    with_text = prediction_event(
        P, text="great food", tokens=2, at=AT, latency_seconds=0.001, include_text=True
    )
    assert with_text["text"] == "great food"
