"""Gateway behaviour below the front ends: sampling, shadow bounds, auth switch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
from prometheus_client import REGISTRY

from kloop_core.api_keys import SCOPES
from kloop_core.errors import Unauthenticated
from kloop_core.rate_limit import RateLimit
from kloop_gateway.service import Gateway, Principal

from .conftest import InferenceThread, gateway_settings, redis_db

T = TypeVar("T")
DB = 6
CALLER = Principal("test", frozenset(SCOPES), RateLimit(per_second=1e6, burst=1_000_000))


def with_gateway(
    redis_url: str,
    inference: InferenceThread,
    work: Callable[[Gateway], Awaitable[T]],
    **settings: Any,
) -> T:
    async def scenario() -> T:
        gateway = await Gateway.create(
            gateway_settings(redis_db(redis_url, DB), inference.addr, **settings)
        )
        try:
            return await work(gateway)
        finally:
            await gateway.close()

    return asyncio.run(scenario())


@pytest.mark.parametrize("rate", [0.0, 0.25, 1.0])
def test_events_are_sampled_at_the_configured_rate(
    redis_url: str, inference: InferenceThread, rate: float
) -> None:
    stream = f"kloop:test:prediction-events:{uuid.uuid4().hex}"
    n = 400

    async def work(gateway: Gateway) -> list[str]:
        ids = []
        for start in range(0, n, 100):
            texts = [f"sample {i}" for i in range(start, start + 100)]
            ids += [p.id for p in await gateway.predict(CALLER, "sentiment", texts)]
        assert await gateway._writer.flush(within=10)
        return ids

    ids = with_gateway(redis_url, inference, work, events_stream=stream, event_sample_rate=rate)
    check = redis.Redis.from_url(redis_db(redis_url, DB), decode_responses=True)
    written = check.xlen(stream)
    # Binomial(400, rate): within 5 sd (0 and 400 exactly at the ends).
    sd = (n * rate * (1 - rate)) ** 0.5
    assert abs(written - n * rate) <= 5 * sd, written
    # Every prediction keeps its record (feedback works for all), sampled or not.
    assert all(check.exists(f"kloop:gw:prediction:{i}") for i in ids[:20])


def test_raw_text_in_events_only_when_configured(
    redis_url: str, inference: InferenceThread
) -> None:
    stream = f"kloop:test:prediction-events:{uuid.uuid4().hex}"

    async def work(gateway: Gateway) -> None:
        await gateway.predict(CALLER, "sentiment", ["  Spicy   and good "])
        assert await gateway._writer.flush(within=10)

    with_gateway(redis_url, inference, work, events_stream=stream, event_include_text=True)
    check = redis.Redis.from_url(redis_db(redis_url, DB), decode_responses=True)
    ((_, event),) = check.xrange(stream)
    assert event["text"] == "Spicy and good"  # the canonical text the model saw


def test_shadow_concurrency_is_bounded(redis_url: str, inference: InferenceThread) -> None:
    def count(outcome: str) -> float:
        return (
            REGISTRY.get_sample_value(
                "kloop_gateway_shadow_requests_total", {"model": "sentiment", "outcome": outcome}
            )
            or 0.0
        )

    skipped = count("skipped")

    async def work(gateway: Gateway) -> None:
        await asyncio.gather(*(gateway.predict(CALLER, "sentiment", [f"t{i}"]) for i in range(20)))
        assert len(gateway._shadows) <= 1
        if gateway._shadows:
            await asyncio.wait(gateway._shadows)

    with_gateway(
        redis_url,
        inference,
        work,
        shadow_percent=100,
        shadow_max_concurrency=1,
        cache_enabled=False,
    )
    assert count("skipped") > skipped


def test_auth_can_be_switched_off_for_local_development(
    redis_url: str, inference: InferenceThread
) -> None:
    async def off(gateway: Gateway) -> str:
        return (await gateway.admit(None, "admin")).key_id

    async def on(gateway: Gateway) -> None:
        with pytest.raises(Unauthenticated):
            await gateway.admit(None, "predict")

    assert with_gateway(redis_url, inference, off, auth_enabled=False) == "anonymous"
    with_gateway(redis_url, inference, on)
