from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from redis import Redis

from kloop_core.redis import create_redis
from kloop_registry.events import EventKind, EventStream, ModelEvent


@pytest.fixture
def client(redis_url: str) -> Iterator[Redis]:
    r = create_redis(redis_url, socket_timeout=3.0)
    yield r
    r.close()


@pytest.fixture
def stream(client: Redis) -> EventStream:
    return EventStream(client, f"kloop:test:{uuid.uuid4().hex}", maxlen=1000)


def event(name: str, version: str, kind: EventKind = EventKind.ALIAS_SET) -> ModelEvent:
    return ModelEvent(kind=kind, name=name, alias="production", version=version, sha256="ab")


def test_fields_round_trip_through_redis(stream: EventStream) -> None:
    sent = stream.publish(event("a", "3"))
    assert sent.event_id
    _, (received,) = stream.read_after("0", block_seconds=0.1)
    assert received == sent
    assert set(sent.to_fields()) == {
        "kind", "name", "alias", "version", "previous_version", "artifact_uri", "sha256",
        "actor", "reason", "time",
    }  # fmt: skip


def test_watch_replays_after_a_cursor_then_follows_filtered(stream: EventStream) -> None:
    first = stream.publish(event("a", "1"))
    stream.publish(event("b", "1"))
    stream.publish(event("a", "2"))
    active = threading.Event()
    active.set()
    seen: list[ModelEvent] = []

    def consume() -> None:
        for e in stream.watch(
            after_id=first.event_id, name="a", is_active=active.is_set, block_seconds=0.1
        ):
            seen.append(e)

    worker = threading.Thread(target=consume)
    worker.start()
    time.sleep(0.3)
    stream.publish(event("b", "2"))
    stream.publish(event("a", "3"))
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    active.clear()
    worker.join(timeout=2)
    assert not worker.is_alive(), "watch must stop soon after is_active() turns false"
    assert [(e.name, e.version) for e in seen] == [("a", "2"), ("a", "3")]


def test_watch_without_cursor_sees_only_new_events(stream: EventStream) -> None:
    stream.publish(event("a", "old"))
    calls = 0

    def twice() -> bool:
        nonlocal calls
        calls += 1
        if calls == 2:
            stream.publish(event("a", "new"))
        return calls <= 2

    got = list(stream.watch(after_id=None, name=None, is_active=twice, block_seconds=0.1))
    assert [e.version for e in got] == ["new"]


def test_idle_watch_blocks_instead_of_spinning(stream: EventStream) -> None:
    calls = 0

    def count() -> bool:
        nonlocal calls
        calls += 1
        return calls <= 3

    started = time.monotonic()
    assert list(stream.watch(after_id="0", name=None, is_active=count, block_seconds=0.2)) == []
    assert time.monotonic() - started >= 0.5


def test_foreign_entries_are_skipped_and_passed(client: Redis, stream: EventStream) -> None:
    key = stream._stream
    client.xadd(key, {"hello": "world"})
    good = stream.publish(event("a", "1"))
    cursor, events = stream.read_after("0", block_seconds=0.1)
    assert events == [good] and cursor == good.event_id
    client.xadd(key, {"kind": "nonsense"})
    cursor, events = stream.read_after(cursor, block_seconds=0.1)
    assert events == [] and cursor != good.event_id


def test_stream_is_trimmed_to_about_maxlen(client: Redis) -> None:
    small = EventStream(client, f"kloop:test:{uuid.uuid4().hex}", maxlen=10)
    for i in range(500):
        small.publish(event("a", str(i)))
    # `~` trims whole macro-nodes only, so the bound is approximate but holds.
    assert client.xlen(small._stream) < 200
