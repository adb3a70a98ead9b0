"""The gateway's I/O edges against real Redis and the real inference server."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio
from prometheus_client import REGISTRY

from kloop_core.errors import NotFound, Unavailable
from kloop_gateway.aliases import AliasEvent, AliasTable
from kloop_gateway.clients import (
    EventWriter,
    GatewayStore,
    InferenceClient,
    ModelEventsFollower,
    PendingWrite,
    create_async_redis,
)
from kloop_gateway.policy import TrafficPolicy

from .conftest import InferenceThread, redis_db

T = TypeVar("T")
DB = 5


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def poll(check: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


def make_store(client: redis.asyncio.Redis, stream: str = "kloop:test:events") -> GatewayStore:
    return GatewayStore(
        client,
        prediction_ttl=60,
        cache_ttl=30,
        events_stream=stream,
        events_maxlen=1000,
        feedback_stream="kloop:test:feedback",
        feedback_maxlen=1000,
        feedback_ttl=60,
    )


def dropped() -> float:
    return (
        REGISTRY.get_sample_value("kloop_gateway_prediction_events_total", {"outcome": "dropped"})
        or 0.0
    )


def item(event: bool = True, cache: bool = False) -> PendingWrite:
    prediction_id = uuid.uuid4().hex
    return PendingWrite(
        prediction_id,
        {
            "model": "m",
            "version": "1",
            "alias": "production",
            "predicted_label": "x",
            "score": "0.5",
            "prediction_time": "t",
        },
        {"id": prediction_id} if event else None,
        (f"kloop:test:cache:{prediction_id}", 0.5) if cache else None,
    )


def test_writer_writes_records_events_and_cache_entries(redis_url: str) -> None:
    url = redis_db(redis_url, DB)
    stream = f"kloop:test:events:{uuid.uuid4().hex}"
    items = [item(event=True, cache=True), item(event=False)]

    async def scenario() -> None:
        client = create_async_redis(url, timeout=1)
        writer = EventWriter(make_store(client, stream), queue_size=10, batch_size=5)
        writer.start()
        for i in items:
            writer.submit(i)
        assert await writer.flush(within=5)
        await writer.close(within=1)
        await client.aclose()

    run(scenario())
    check = redis.Redis.from_url(url, decode_responses=True)
    assert check.xlen(stream) == 1
    for i in items:
        record = json.loads(check.get(f"kloop:gw:prediction:{i.prediction_id}") or "{}")
        assert record["model"] == "m"
        assert 0 < check.ttl(f"kloop:gw:prediction:{i.prediction_id}") <= 60
    assert check.get(f"kloop:test:cache:{items[0].prediction_id}") == "0.5"
    assert 0 < check.ttl(f"kloop:test:cache:{items[0].prediction_id}") <= 30


def test_writer_keeps_retrying_then_drops_only_what_does_not_fit(redis_url: str) -> None:
    before = dropped()

    async def scenario() -> None:
        client = create_async_redis(dead_url(), timeout=0.2)
        writer = EventWriter(make_store(client), queue_size=2, batch_size=1)
        writer.start()
        for _ in range(3):
            writer.submit(item())  # the third does not fit: counted
        assert not await writer.flush(within=0.3)
        await writer.close(within=0.1)  # what is still queued is counted too
        await client.aclose()

    run(scenario())
    assert dropped() >= before + 2


def test_follower_replays_then_follows(redis_url: str) -> None:
    url = redis_db(redis_url, DB)
    stream = f"kloop:test:model-events:{uuid.uuid4().hex}"
    sync = redis.Redis.from_url(url)
    sync.xadd(stream, {"kind": "alias_set", "name": "m", "alias": "production", "version": "1"})
    sync.xadd(stream, {"kind": "version_registered", "name": "m", "version": "2"})
    seen: list[AliasEvent] = []

    async def scenario() -> tuple[str | None, str | None, bool]:
        client = create_async_redis(url, timeout=5)
        table = AliasTable(learned_ttl=0)
        follower = ModelEventsFollower(client, stream, table, seen.append, block_seconds=0.1)
        task = asyncio.create_task(follower.run())
        await poll(lambda: table.connected)
        replayed = table.version_for_cache("m", "production")
        await asyncio.to_thread(
            sync.xadd,
            stream,
            {"kind": "alias_set", "name": "m", "alias": "production", "version": "3"},
        )
        await poll(lambda: table.version_for_cache("m", "production") == "3")
        followed = table.version_for_cache("m", "production")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        return replayed, followed, table.connected

    assert run(scenario()) == ("1", "3", False)
    assert [e.version for e in seen] == ["1", "3"]


def test_follower_marks_the_table_disconnected_when_redis_is_down() -> None:
    async def scenario() -> bool:
        client = create_async_redis(dead_url(), timeout=0.2)
        table = AliasTable(learned_ttl=0)
        table.connected = True
        follower = ModelEventsFollower(client, "s", table, lambda e: None)
        task = asyncio.create_task(follower.run())
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        return table.connected

    assert run(scenario()) is False


def test_store_skips_policies_it_cannot_read(redis_url: str) -> None:
    url = redis_db(redis_url, DB)
    sync = redis.Redis.from_url(url)
    sync.delete("kloop:gw:traffic-policies")
    sync.hset("kloop:gw:traffic-policies", "broken", "{not json")

    async def scenario() -> dict[str, TrafficPolicy]:
        client = create_async_redis(url, timeout=1)
        store = make_store(client)
        await store.save_policy("good", TrafficPolicy(canary_percent=5))
        policies = await store.policies()
        await store.delete_policy("good")
        await client.aclose()
        return policies

    assert run(scenario()) == {"good": TrafficPolicy(canary_percent=5)}
    sync.delete("kloop:gw:traffic-policies")


def test_inference_client(inference: InferenceThread) -> None:
    async def scenario() -> None:
        client = InferenceClient(inference.addr, timeout=2, traced=False)
        version, scores = await client.infer("sentiment", "production", ["great food", "awful"])
        assert version == "1" and scores[0] > 0.5 > scores[1]
        assert client.knows("sentiment")
        client.forget("sentiment")
        assert not client.knows("sentiment")
        with pytest.raises(NotFound):
            await client.infer("nope", "production", ["x"])
        with pytest.raises(NotFound):
            await client.infer("solo", "canary", ["x"])
        assert await client.ready()
        await client.close()

    run(scenario())


def test_inference_client_fails_fast_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{sock.getsockname()[1]}"

    async def scenario() -> list[float]:
        client = InferenceClient(addr, timeout=5, traced=False)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            with pytest.raises(Unavailable) as caught:
                await client.infer("sentiment", "production", ["x"])
            assert caught.value.retry_after == 1.0
            timings.append(time.perf_counter() - started)
        assert not await client.ready()
        await client.close()
        return timings

    assert max(run(scenario())) < 0.1
