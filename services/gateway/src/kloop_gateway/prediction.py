"""A prediction as the gateway returns it, and the stored records built from it.

Prediction events (stream `kloop:prediction-events`, sampled) — every field a string:
``schema`` ("1"), ``id``, ``time`` (ISO 8601, UTC), ``model``, ``version``, ``alias``,
``label``, ``score`` (the model's score, P(labels[1])), ``latency_seconds`` (the
gateway's time for the request that contained it), ``cached`` ("1"/"0"), ``tokens`` and
``chars`` (of the canonical text, with the models' tokenizer) and, only when the
gateway is configured to, ``text``. A retried write may repeat an entry: consumers
de-duplicate by ``id``.

Prediction records (``kloop:gw:prediction:<id>``, a JSON object, every prediction, TTL
`prediction_ttl_seconds`): ``model``, ``version``, ``alias``, ``predicted_label``,
``score``, ``prediction_time`` — what a feedback event needs besides the true label.

Feedback events (stream `kloop:feedback-events`, once per prediction): ``prediction_id``,
``label`` (the true one), ``time`` and the record's fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

EVENT_SCHEMA = "1"
PREDICTION_PREFIX = "kloop:gw:prediction"
FEEDBACK_PREFIX = "kloop:gw:feedback"


@dataclass(frozen=True, slots=True)
class Prediction:
    id: str
    label: str
    score: float
    model: str
    version: str
    alias: str
    cached: bool


def label_for(score: float, labels: tuple[str, str], threshold: float) -> str:
    return labels[1] if score >= threshold else labels[0]


def prediction_key(prediction_id: str) -> str:
    return f"{PREDICTION_PREFIX}:{prediction_id}"


def feedback_key(prediction_id: str) -> str:
    return f"{FEEDBACK_PREFIX}:{prediction_id}"


def prediction_record(prediction: Prediction, at: datetime) -> dict[str, str]:
    return {
        "model": prediction.model,
        "version": prediction.version,
        "alias": prediction.alias,
        "predicted_label": prediction.label,
        "score": repr(prediction.score),
        "prediction_time": at.isoformat(),
    }


def prediction_event(
    prediction: Prediction,
    *,
    text: str,
    tokens: int,
    at: datetime,
    latency_seconds: float,
    include_text: bool,
) -> dict[str, str]:
    event = {
        "schema": EVENT_SCHEMA,
        "id": prediction.id,
        "time": at.isoformat(),
        "model": prediction.model,
        "version": prediction.version,
        "alias": prediction.alias,
        "label": prediction.label,
        "score": repr(prediction.score),
        "latency_seconds": f"{latency_seconds:.6f}",
        "cached": "1" if prediction.cached else "0",
        "tokens": str(tokens),
        "chars": str(len(text)),
    }
    if include_text:
        event["text"] = text
    return event
