from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio

from kloop_core.rate_limit import AsyncRateLimiter, Decision, RateLimit, RateLimiter


@pytest.fixture
def limiter(redis_url: str) -> Iterator[RateLimiter]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield RateLimiter(client, namespace=f"test-rate-{uuid.uuid4().hex[:8]}")
    finally:
        client.close()


def test_burst_then_refusal_with_retry_after(limiter: RateLimiter) -> None:
    limit = RateLimit(per_second=2, burst=3)
    decisions = [limiter.acquire("k", limit) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    refused = decisions[-1]
    # one token comes back every 0.5 s
    assert 0.3 < refused.retry_after <= 0.5
    time.sleep(refused.retry_after + 0.05)
    assert limiter.acquire("k", limit).allowed


def test_identities_have_separate_buckets(limiter: RateLimiter) -> None:
    limit = RateLimit(per_second=1, burst=1)
    assert limiter.acquire("a", limit).allowed
    assert limiter.acquire("b", limit).allowed
    assert not limiter.acquire("a", limit).allowed


def test_concurrent_callers_never_overspend(limiter: RateLimiter) -> None:
    limit = RateLimit(per_second=0.001, burst=50)  # no refill during the test
    allowed: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(20):
            decision = limiter.acquire("shared", limit)
            with lock:
                allowed.append(decision.allowed)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 50 and len(allowed) == 160


def test_idle_buckets_expire(limiter: RateLimiter, redis_url: str) -> None:
    limiter.acquire("idle", RateLimit(per_second=100, burst=10))
    ttl_ms = redis.Redis.from_url(redis_url).pttl(f"{limiter._ns}:idle")
    assert 0 < ttl_ms <= 1100


def test_invalid_limits_are_rejected(limiter: RateLimiter) -> None:
    with pytest.raises(ValueError):
        RateLimit(per_second=0, burst=1)
    with pytest.raises(ValueError):
        RateLimit(per_second=1, burst=0)
    with pytest.raises(ValueError, match="cost"):
        limiter.acquire("k", RateLimit(per_second=1, burst=2), cost=3)


def test_async_limiter_shares_the_script(redis_url: str) -> None:
    async def run() -> list[bool]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            limiter = AsyncRateLimiter(client, namespace=f"test-rate-{uuid.uuid4().hex[:8]}")
            limit = RateLimit(per_second=1, burst=2)
            return [(await limiter.acquire("k", limit)).allowed for _ in range(3)]
        finally:
            await client.aclose()

    assert asyncio.run(run()) == [True, True, False]


def test_async_check_can_share_a_pipeline(redis_url: str) -> None:
    async def run() -> tuple[list[bool], bytes]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            limiter = AsyncRateLimiter(client, namespace=f"test-rate-{uuid.uuid4().hex[:8]}")
            limit = RateLimit(per_second=1, burst=1)
            allowed = []
            for _ in range(2):
                pipe = client.pipeline(transaction=False)
                limiter.queue(pipe, "k", limit)
                pipe.set("kloop:test:rate-pipe", "x")
                pipe.get("kloop:test:rate-pipe")
                reply, _, value = await pipe.execute()
                allowed.append(Decision.from_reply(reply).allowed)
            return allowed, value
        finally:
            await client.aclose()

    assert asyncio.run(run()) == ([True, False], b"x")
