"""Per-identity rate limits in Redis: a token bucket updated atomically by one Lua script.

Why a token bucket: it allows short bursts up to `burst` and a steady `per_second`
after, with O(1) state (two numbers per identity) instead of a sorted set of request
times (sliding log). The script reads Redis's own clock (TIME), so gateway replicas with
skewed clocks share one consistent bucket, and it runs atomically, so concurrent
requests can never spend the same token twice.

Redis layout: ``<namespace>:<identity>`` hash with ``tokens`` and ``ts`` (microseconds),
expiring once a full bucket would have refilled (idle identities cost nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

DEFAULT_NAMESPACE = "kloop:rate"

# KEYS[1] bucket; ARGV: tokens per second, burst, cost.
# Returns {allowed (0/1), tokens left (string), microseconds until `cost` is available}.
BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000000)
local allowed = 0
local wait_us = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait_us = math.ceil((cost - tokens) * 1000000 / rate)
end
local left = string.format('%.6f', tokens)
redis.call('HSET', KEYS[1], 'tokens', left, 'ts', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, left, wait_us}
"""


@dataclass(frozen=True, slots=True)
class RateLimit:
    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and math.isfinite(self.per_second)):
            raise ValueError("per_second must be a positive number")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: float  # tokens left after this call
    retry_after: float  # seconds until the call would be allowed (0 when allowed)

    @classmethod
    def from_reply(cls, reply: Any) -> Decision:
        """The decision in the script's reply (e.g. one result of a pipeline)."""
        allowed, remaining, wait_us = reply
        return cls(
            allowed=int(allowed) == 1,
            remaining=float(remaining),
            retry_after=int(wait_us) / 1_000_000,
        )


def bucket_key(identity: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    return f"{namespace}:{identity}"


def _check_cost(limit: RateLimit, cost: int) -> None:
    if not 1 <= cost <= limit.burst:
        raise ValueError(f"cost must be between 1 and the burst ({limit.burst})")


class RateLimiter:
    """Token buckets on a blocking client."""

    def __init__(self, client: redis.Redis, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._script = client.register_script(BUCKET_SCRIPT)
        self._ns = namespace

    def acquire(self, identity: str, limit: RateLimit, cost: int = 1) -> Decision:
        _check_cost(limit, cost)
        keys = [bucket_key(identity, self._ns)]
        return Decision.from_reply(
            self._script(keys=keys, args=[limit.per_second, limit.burst, cost])
        )


class AsyncRateLimiter:
    """Token buckets on an asyncio client: one EVALSHA per call, or queued on a pipeline."""

    def __init__(self, client: redis.asyncio.Redis, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._script = client.register_script(BUCKET_SCRIPT)
        self._ns = namespace

    async def acquire(self, identity: str, limit: RateLimit, cost: int = 1) -> Decision:
        _check_cost(limit, cost)
        keys = [bucket_key(identity, self._ns)]
        reply = await self._script(keys=keys, args=[limit.per_second, limit.burst, cost])
        return Decision.from_reply(reply)

    def queue(
        self, pipe: redis.asyncio.client.Pipeline, identity: str, limit: RateLimit, cost: int = 1
    ) -> None:
        """Add the check to `pipe`, to share a round trip with other commands; read its
        reply with `Decision.from_reply`.

        EVAL with the script's text, not EVALSHA: redis-py precedes a pipeline holding
        a registered script with a SCRIPT EXISTS round trip, which would cost the very
        round trip this saves (Redis caches the compiled script either way)."""
        _check_cost(limit, cost)
        pipe.eval(
            BUCKET_SCRIPT, 1, bucket_key(identity, self._ns), limit.per_second, limit.burst, cost
        )
