"""Builders shared by the drift-monitor tests: events shaped like the gateway's,
references built by kloop_model from a real fitted model, settings per test."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from kloop_core.errors import NotFound
from kloop_drift_monitor.settings import DriftMonitorSettings
from kloop_model.classifier import SentimentClassifier
from kloop_model.profile import build_reference_profile
from kloop_model.text import tokenize


def prediction_fields(
    text: str,
    score: float,
    *,
    event_id: str | None = None,
    model: str = "sentiment",
    version: str = "1",
    include_text: bool = True,
    at: datetime | None = None,
) -> dict[str, str]:
    """A prediction event as the gateway writes it (every field a string)."""
    fields = {
        "schema": "1",
        "id": event_id or uuid.uuid4().hex,
        "time": (at or datetime.now(UTC)).isoformat(),
        "model": model,
        "version": version,
        "alias": "production",
        "label": "positive" if score >= 0.5 else "negative",
        "score": repr(score),
        "latency_seconds": "0.001000",
        "cached": "0",
        "tokens": str(len(tokenize(text))),
        "chars": str(len(text)),
    }
    if include_text:
        fields["text"] = text
    return fields


def feedback_fields(
    prediction_id: str,
    true_label: str,
    predicted_label: str,
    *,
    model: str = "sentiment",
    version: str = "1",
) -> dict[str, str]:
    """A feedback event as the gateway's feedback script writes it."""
    now = datetime.now(UTC).isoformat()
    return {
        "prediction_id": prediction_id,
        "label": true_label,
        "time": now,
        "model": model,
        "version": version,
        "alias": "production",
        "predicted_label": predicted_label,
        "score": "0.5",
        "prediction_time": now,
    }


def stream_of(
    scorer: SentimentClassifier, texts: Sequence[str], n: int, *, seed: int = 0, **kwargs: Any
) -> list[dict[str, str]]:
    """`n` events over texts drawn with replacement, scored by `scorer`."""
    rng = random.Random(seed)
    drawn = [rng.choice(texts) for _ in range(n)]
    scores = scorer.predict_proba(drawn).tolist()
    return [prediction_fields(t, s, **kwargs) for t, s in zip(drawn, scores, strict=True)]


def add_all(client: redis.Redis, stream: str, events: Iterable[Mapping[str, str]]) -> None:
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(stream, dict(event))  # type: ignore[arg-type]
    pipe.execute()


def reference_documents(
    model: SentimentClassifier, holdout: Sequence[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    profile = build_reference_profile(model, holdout, model.predict_proba(holdout))
    return profile, model.to_dict()


class StaticReferences:
    """A ReferenceSource over documents held in memory (the registry's role)."""

    def __init__(
        self,
        documents: Mapping[tuple[str, str], tuple[Mapping[str, Any], Mapping[str, Any] | None]],
    ) -> None:
        self.documents = dict(documents)
        self.calls = 0

    def reference_documents(
        self, model: str, version: str
    ) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
        self.calls += 1
        try:
            return self.documents[(model, version)]
        except KeyError:
            raise NotFound(f"{model} v{version} not found") from None


def make_settings(redis_url: str, **overrides: Any) -> DriftMonitorSettings:
    """Settings on their own streams and key prefix (tests share one Redis)."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "events_stream": f"test:{tag}:predictions",
        "feedback_stream": f"test:{tag}:feedback",
        "key_prefix": f"test:{tag}:drift",
        "consumer_name": "c1",
        "block_ms": 50,
        "window_events": 200,
        "min_window_events": 100,
        "reservoir_size": 50,
        "trigger_windows": 2,
        "retrain_queue": f"test:{tag}:training",
        "grpc_port": 0,
        "http_port": 0,
        **overrides,
    }
    return DriftMonitorSettings(**values)
