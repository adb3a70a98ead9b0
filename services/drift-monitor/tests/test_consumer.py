"""The stream consumer against a real Redis: exactly-once counting across crashes,
de-duplication, dead letters, claiming, Redis restarts, triggers and live accuracy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from kloop_client.local import free_port, start_redis
from kloop_core.redis import create_redis
from kloop_drift_monitor.consumer import Consumer
from kloop_drift_monitor.reference import ReferenceCache
from kloop_drift_monitor.retrain import CeleryRetrainRequester
from kloop_drift_monitor.settings import DriftMonitorSettings
from kloop_drift_monitor.store import StateStore
from kloop_drift_monitor.windows import VersionState
from kloop_model.classifier import SentimentClassifier
from kloop_model.dataset import builtin_dataset, shifted_dataset

from .helpers import (
    StaticReferences,
    add_all,
    feedback_fields,
    make_settings,
    prediction_fields,
    reference_documents,
    stream_of,
)


class Killed(BaseException):
    """Stands for the process dying: nothing below a BaseException handler sees it."""


@pytest.fixture(scope="module")
def references(builtin_model: SentimentClassifier) -> StaticReferences:
    docs = reference_documents(builtin_model, builtin_dataset().texts)
    return StaticReferences({("sentiment", v): docs for v in ("1", "2", "9")})


@pytest.fixture
def make_consumer(
    redis_url: str, references: StaticReferences
) -> Iterator[Callable[..., Consumer]]:
    made: list[Consumer] = []

    def make(settings: DriftMonitorSettings, requester: Any = None) -> Consumer:
        client = create_redis(settings.redis_url, socket_timeout=5)
        consumer = Consumer(
            settings, client, ReferenceCache(references, retry_seconds=60), requester
        )
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.client.close()


def drain(consumer: Consumer) -> None:
    while consumer.poll():
        pass


def state_of(consumer: Consumer, version: str = "1") -> VersionState:
    state = consumer.store.load(("sentiment", version))
    assert state is not None
    return state


def pending(client: redis.Redis, settings: DriftMonitorSettings) -> int:
    return int(client.xpending(settings.events_stream, settings.consumer_group)["pending"])


def dead_letters(client: redis.Redis, settings: DriftMonitorSettings) -> list[dict[bytes, bytes]]:
    return [f for _, f in client.xrange(settings.events_stream + ":dead")]


def test_counts_each_event_once_and_acknowledges_it(
    builtin_model: SentimentClassifier,
    client: redis.Redis,
    make_consumer: Callable[..., Consumer],
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, batch_size=64)
    events = stream_of(builtin_model, builtin_dataset().texts, 450)
    # A retried gateway write repeats entries, right away and a few batches later.
    add_all(
        client, settings.events_stream, events[:300] + events[290:300] + events[300:] + events[:5]
    )
    consumer = make_consumer(settings)
    consumer.start()
    drain(consumer)
    state = state_of(consumer)
    assert (state.events, state.duplicates, state.windows) == (450, 15, 2)
    assert [w.events for w in state.history] == [200, 200] and state.pane.events == 50
    assert not any(w.drifted for w in state.history) and state.streak == 0
    assert pending(client, settings) == 0 and consumer.stats.predictions == 450
    consumer.update_lag()
    assert consumer.stats.lag == 0
    assert (
        REGISTRY.get_sample_value("kloop_drift_consumer_lag", {"stream": settings.events_stream})
        == 0
    )


def test_shifted_stream_drifts_in_distribution_stream_does_not(
    builtin_model: SentimentClassifier,
    client: redis.Redis,
    make_consumer: Callable[..., Consumer],
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, trigger_enabled=False)
    add_all(
        client,
        settings.events_stream,
        stream_of(builtin_model, builtin_dataset().texts, 400, version="1"),
    )
    add_all(
        client,
        settings.events_stream,
        stream_of(builtin_model, shifted_dataset().texts, 400, version="2"),
    )
    consumer = make_consumer(settings)
    consumer.start()
    drain(consumer)
    calm, shifted = state_of(consumer, "1"), state_of(consumer, "2")
    assert calm.windows == shifted.windows == 2
    assert calm.streak == 0 and shifted.streak == 2
    value = REGISTRY.get_sample_value
    assert value("kloop_drift_detected", {"model": "sentiment", "version": "1"}) == 0
    assert value("kloop_drift_detected", {"model": "sentiment", "version": "2"}) == 1
    assert (
        value(
            "kloop_drift_value",
            {"model": "sentiment", "version": "2", "feature": "oov_rate", "metric": "psi"},
        )
        > settings.psi_threshold
    )


@pytest.mark.parametrize("crash", ["before_commit", "after_commit"])
def test_a_crash_mid_batch_loses_and_double_counts_nothing(
    crash: str,
    builtin_model: SentimentClassifier,
    client: redis.Redis,
    make_consumer: Callable[..., Consumer],
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = make_settings(redis_url, batch_size=100)
    add_all(client, settings.events_stream, stream_of(builtin_model, builtin_dataset().texts, 350))
    first = make_consumer(settings)
    first.start()
    first.poll()  # one batch counted and committed

    def die(*args: object, **kwargs: object) -> None:
        raise Killed

    # Killed after counting the next batch in memory but before EXEC (nothing written,
    # nothing acknowledged), or right after EXEC (both written).
    target = (
        (StateStore, "_queue_writes") if crash == "before_commit" else (Consumer, "_after_commit")
    )
    with monkeypatch.context() as patch:
        patch.setattr(*target, die)
        with pytest.raises(Killed):
            first.poll()
    expected_events = 100 if crash == "before_commit" else 200
    assert state_of(first).events == expected_events
    assert pending(client, settings) == (100 if crash == "before_commit" else 0)

    restarted = make_consumer(settings)  # same consumer name: its pending come first
    restarted.start()
    drain(restarted)
    state = state_of(restarted)
    assert (state.events, state.duplicates, state.windows) == (350, 0, 1)
    assert pending(client, settings) == 0 and dead_letters(client, settings) == []


def test_poison_events_are_dead_lettered_and_counting_goes_on(
    builtin_model: SentimentClassifier,
    client: redis.Redis,
    make_consumer: Callable[..., Consumer],
    redis_url: str,
) -> None:
    settings = make_settings(redis_url)
    good = stream_of(builtin_model, builtin_dataset().texts, 120)
    bad_schema = {**good[0], "schema": "7", "id": "bad-1"}
    bad_score = {**good[1], "score": "NaN-ish", "id": "bad-2"}
    missing = {k: v for k, v in good[2].items() if k != "version"}
    # A version whose stored state is corrupt: its events fail in processing.
    client.set(
        StateStore(client, prefix=settings.key_prefix, group="", dead_maxlen=1).state_key(
            ("sentiment", "9")
        ),
        "{not json",
    )
    corrupt = prediction_fields("fine text", 0.7, version="9", event_id="v9-event")
    add_all(
        client,
        settings.events_stream,
        [*good[:60], bad_schema, bad_score, missing, corrupt, *good[60:]],
    )
    consumer = make_consumer(settings)
    consumer.start()
    drain(consumer)
    assert state_of(consumer).events == 120
    letters = dead_letters(client, settings)
    reasons = sorted(f[b"dead_reason"].decode() for f in letters)
    assert reasons == ["bad_score", "missing_field", "processing_error", "unknown_schema"]
    by_id = {f.get(b"id"): f for f in letters}
    assert by_id[b"v9-event"][b"dead_source_stream"].decode() == settings.events_stream
    assert pending(client, settings) == 0 and consumer.stats.dead_lettered == 4
    assert (
        REGISTRY.get_sample_value(
            "kloop_drift_events_dead_lettered_total", {"kind": "prediction", "reason": "bad_score"}
        )
        >= 1
    )


def test_an_entry_delivered_too_often_is_dead_lettered_unread(
    builtin_model: SentimentClassifier,
    client: redis.Redis,
    make_consumer: Callable[..., Consumer],
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, max_deliveries=3)
    add_all(client, settings.events_stream, stream_of(builtin_model, builtin_dataset().texts, 5))
    consumer = make_consumer(settings)
    consumer.start()  # creates the group; nothing pending yet
    # The monitor died on these entries three times (each restart re-reads them).
    for _ in range(3):
        client.xreadgroup(
            settings.consumer_group, "c1", {settings.events_stream: ">" if _ == 0 else "0"}
        )
    consumer.start()
    assert [f[b"dead_reason"] for f in dead_letters(client, settings)] == [
        b"too_many_deliveries"
    ] * 5
    assert consumer.store.load(("sentiment", "1")) is None and pending(client, settings) == 0


def test_pending_entries_of_a_dead_consumer_are_claimed(
    builtin_model: SentimentClassifier,
    client: redis.Redis,
    make_consumer: Callable[..., Consumer],
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, consumer_name="alive", claim_idle_seconds=0.2)
    add_all(client, settings.events_stream, stream_of(builtin_model, builtin_dataset().texts, 150))
    consumer = make_consumer(settings)
    consumer.start()
    # Another replica took 100 entries and died without acknowledging them.
    client.xreadgroup(settings.consumer_group, "dead", {settings.events_stream: ">"}, count=100)
    drain(consumer)
    assert state_of(consumer).events == 50
    time.sleep(0.3)
    assert consumer.claim_stale() == 100
    assert state_of(consumer).events == 150 and pending(client, settings) == 0


def test_a_quiet_stream_still_gets_its_window_after_window_max_seconds(
    builtin_model: SentimentClassifier,
    client: redis.Redis,
    make_consumer: Callable[..., Consumer],
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, window_max_seconds=0.5)
    add_all(client, settings.events_stream, stream_of(builtin_model, builtin_dataset().texts, 150))
    consumer = make_consumer(settings)
    consumer.start()
    consumer.step()
    assert state_of(consumer).windows == 0  # 150 of 200 events, and young
    time.sleep(0.6)
    consumer.step()  # no new events: the wall clock closes the window
    state = state_of(consumer)
    assert state.windows == 1 and state.history[0].events == 150 and state.history[0].decided


def test_redis_restart_reconnects_and_resumes(
    builtin_model: SentimentClassifier, make_consumer: Callable[..., Consumer], tmp_path: Path
) -> None:
    port = free_port()
    server = start_redis(port, tmp_path)  # appendonly: the group and states survive
    url = f"redis://127.0.0.1:{port}/0"
    settings = make_settings(url, reconnect_max_seconds=0.5)
    producer = create_redis(url)
    consumer = make_consumer(settings)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    try:
        add_all(
            producer,
            settings.events_stream,
            stream_of(builtin_model, builtin_dataset().texts, 300, seed=1),
        )
        thread.start()
        wait_for(lambda: events_counted(consumer) == 300)
        server.stop()
        wait_for(lambda: not consumer.stats.connected)
        server = start_redis(port, tmp_path)
        add_all(
            producer,
            settings.events_stream,
            stream_of(builtin_model, builtin_dataset().texts, 300, seed=2),
        )
        wait_for(lambda: events_counted(consumer) == 600, timeout=30)
        assert consumer.stats.connected
        assert state_of(consumer).windows == 3 and state_of(consumer).duplicates == 0
    finally:
        stop.set()
        thread.join(10)
        producer.close()
        server.stop()


def events_counted(consumer: Consumer) -> int:
    try:
        state = consumer.store.load(("sentiment", "1"))
    except redis.RedisError:
        return -1
    return state.events if state else 0


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_trigger_fires_once_then_holds_for_the_cooldown(
    builtin_model: SentimentClassifier,
    client: redis.Redis,
    make_consumer: Callable[..., Consumer],
    redis_url: str,
) -> None:
    settings = make_settings(
        redis_url, trigger_windows=2, trigger_cooldown_seconds=2.0, batch_size=100
    )
    requester = CeleryRetrainRequester(redis_url, queue=settings.retrain_queue)
    consumer = make_consumer(settings, requester)
    labels = {"model": "sentiment"}
    sent_before = REGISTRY.get_sample_value("kloop_drift_retrain_requests_total", labels) or 0
    try:
        consumer.start()
        # Calm first: no trigger.
        add_all(
            client, settings.events_stream, stream_of(builtin_model, builtin_dataset().texts, 400)
        )
        drain(consumer)
        assert client.llen(settings.retrain_queue) == 0
        # 5 shifted windows: the 2nd sends, the 4th is within the cooldown.
        add_all(
            client, settings.events_stream, stream_of(builtin_model, shifted_dataset().texts, 1000)
        )
        drain(consumer)
        assert client.llen(settings.retrain_queue) == 1
        state = state_of(consumer)
        assert state.last_trigger is not None and state.last_trigger.outcome == "sent"
        assert state.last_trigger.trigger_id == "sentiment:1:4" and state.streak == 3
        (audit,) = client.xrange(consumer.store.triggers_stream)
        assert audit[1][b"trigger_id"] == b"sentiment:1:4"
        assert b'"consecutive_drifted_windows": 2' in audit[1][b"evidence"]
        # A restarted or second replica replaying the same windows does not ask again.
        replica = make_consumer(settings.model_copy(update={"consumer_name": "c2"}), requester)
        replica.trigger(state_of(consumer))
        assert client.llen(settings.retrain_queue) == 1
        # After the cooldown, drift that still holds asks again.
        time.sleep(2.1)
        add_all(
            client, settings.events_stream, stream_of(builtin_model, shifted_dataset().texts, 200)
        )
        drain(consumer)
        assert client.llen(settings.retrain_queue) == 2
        assert (
            REGISTRY.get_sample_value("kloop_drift_retrain_requests_total", labels)
            == sent_before + 2
        )
    finally:
        requester.close()


def test_live_accuracy_from_feedback_joined_by_prediction_id(
    builtin_model: SentimentClassifier,
    client: redis.Redis,
    make_consumer: Callable[..., Consumer],
    redis_url: str,
) -> None:
    settings = make_settings(redis_url, feedback_window=6)
    predictions = [prediction_fields("i love it", 0.9, event_id=f"p{i}") for i in range(8)]
    add_all(client, settings.events_stream, predictions)
    # (true, predicted): 3 TP, 1 FP, 2 TN, 2 FN; p0's label is sent twice.
    outcomes = (
        [("positive", "positive")] * 3
        + [("negative", "positive")]
        + [("negative", "negative")] * 2
        + [("positive", "negative")] * 2
    )
    feedback = [feedback_fields(f"p{i}", t, p) for i, (t, p) in enumerate(outcomes)]
    add_all(client, settings.feedback_stream, [*feedback, feedback[0]])
    consumer = make_consumer(settings)
    consumer.start()
    drain(consumer)
    quality = state_of(consumer).quality
    assert quality.labeled_total == 8 and len(quality.recent) == 6
    assert consumer.stats.feedback == 8 and consumer.stats.duplicates == 1
    labels = {"model": "sentiment", "version": "1"}
    # The last 6: 1 TP, 1 FP, 2 TN, 2 FN -> accuracy 3/6, F1 2/(2+1+2).
    assert REGISTRY.get_sample_value("kloop_live_accuracy", labels) == pytest.approx(0.5)
    assert REGISTRY.get_sample_value("kloop_live_f1", labels) == pytest.approx(0.4)
