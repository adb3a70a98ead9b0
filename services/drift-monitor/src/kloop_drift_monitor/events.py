"""Prediction and feedback events as the gateway writes them, parsed and validated.

Prediction event (stream `kloop:prediction-events`, every field a string): ``schema``
("1"), ``id``, ``time`` (ISO 8601), ``model``, ``version``, ``alias``, ``label``,
``score`` (P(positive)), ``latency_seconds``, ``cached``, ``tokens``, ``chars`` and,
only when the gateway is configured to include it, ``text``.

Feedback event (stream `kloop:feedback-events`): ``prediction_id``, ``label`` (the
true one), ``time``, and the prediction record the gateway joined by prediction id:
``model``, ``version``, ``alias``, ``predicted_label``, ``score``, ``prediction_time``.

Anything that does not parse raises `MalformedEvent` with a short reason code (a
bounded metric label) and a message for the dead-letter entry.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

EVENT_SCHEMA = b"1"
MAX_NAME_CHARS = 256

Fields = Mapping[bytes, bytes]


class MalformedEvent(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# NamedTuples: built tens of thousands of times a second, several times cheaper than
# frozen dataclasses.
class PredictionEvent(NamedTuple):
    id: str
    time: float  # seconds since the epoch
    model: str
    version: str
    score: float
    tokens: int
    text: str | None


class FeedbackEvent(NamedTuple):
    prediction_id: str
    time: float
    model: str
    version: str
    true_label: str
    predicted_label: str


def _names(raw: Sequence[bytes], labels: Sequence[str]) -> list[str]:
    """Decoded id-like fields: UTF-8, 1..MAX_NAME_CHARS characters."""
    values = []
    for value, label in zip(raw, labels, strict=True):
        try:
            text = value.decode()
        except UnicodeDecodeError:
            raise MalformedEvent("bad_field", f"{label} is not UTF-8") from None
        if not 0 < len(text) <= MAX_NAME_CHARS:
            raise MalformedEvent("bad_field", f"{label} must have 1..{MAX_NAME_CHARS} characters")
        values.append(text)
    return values


def _time(raw: bytes, label: str) -> float:
    try:
        moment = datetime.fromisoformat(raw.decode())
    except (UnicodeDecodeError, ValueError):
        raise MalformedEvent("bad_time", f"{label} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise MalformedEvent("bad_time", f"{label} has no time zone")
    return moment.timestamp()


def _missing(error: KeyError) -> MalformedEvent:
    name = error.args[0]
    return MalformedEvent("missing_field", f"missing field {name.decode()!r}")


_PREDICTION_NAMES = ("id", "model", "version")
_FEEDBACK_NAMES = ("prediction_id", "model", "version", "label", "predicted_label")


def parse_prediction(fields: Fields) -> PredictionEvent:
    # The hot path of the consumer (tens of thousands a second): few calls, no copies.
    schema = fields.get(b"schema")
    if schema != EVENT_SCHEMA:
        shown = schema.decode(errors="replace")[:20] if schema is not None else "(none)"
        raise MalformedEvent("unknown_schema", f"unknown event schema {shown!r}")
    try:
        raw = (fields[b"id"], fields[b"model"], fields[b"version"])
        raw_time, raw_score, raw_tokens = fields[b"time"], fields[b"score"], fields[b"tokens"]
    except KeyError as e:
        raise _missing(e) from None
    try:
        event_id, model, version = raw[0].decode(), raw[1].decode(), raw[2].decode()
    except UnicodeDecodeError:
        raise MalformedEvent("bad_field", "id, model and version must be UTF-8") from None
    if not (
        0 < len(event_id) <= MAX_NAME_CHARS
        and 0 < len(model) <= MAX_NAME_CHARS
        and 0 < len(version) <= MAX_NAME_CHARS
    ):
        _names(raw, _PREDICTION_NAMES)  # raises, naming the field
    try:
        score = float(raw_score)
    except ValueError:
        raise MalformedEvent("bad_score", "score is not a number") from None
    if not (math.isfinite(score) and 0.0 <= score <= 1.0):
        raise MalformedEvent("bad_score", "score must be a probability in [0, 1]")
    try:
        tokens = int(raw_tokens)
    except ValueError:
        raise MalformedEvent("bad_tokens", "tokens is not an integer") from None
    if tokens < 0:
        raise MalformedEvent("bad_tokens", "tokens must be >= 0")
    raw_text = fields.get(b"text")
    try:
        text = raw_text.decode() if raw_text is not None else None
    except UnicodeDecodeError:
        raise MalformedEvent("bad_text", "text is not UTF-8") from None
    return PredictionEvent(event_id, _time(raw_time, "time"), model, version, score, tokens, text)


def parse_feedback(fields: Fields) -> FeedbackEvent:
    try:
        raw = [fields[name.encode()] for name in _FEEDBACK_NAMES]
        raw_time = fields[b"time"]
    except KeyError as e:
        raise _missing(e) from None
    prediction_id, model, version, true_label, predicted_label = _names(raw, _FEEDBACK_NAMES)
    return FeedbackEvent(
        prediction_id, _time(raw_time, "time"), model, version, true_label, predicted_label
    )
