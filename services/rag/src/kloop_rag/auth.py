"""API keys and rate limits, the gateway's way: keys from kloop_core.api_keys in the same
Redis key store (``kloop:api-key:<id>``), token buckets from kloop_core.rate_limit.

A key needs the `ask` scope (setting auth_scope). Its bucket is its own for this
service (``kloop:rate:ask:key:<id>``): LLM answers are not charged to the key's
prediction budget. A key's rate_per_second / burst override the service's defaults.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis.asyncio
import redis.exceptions

from kloop_core.api_keys import ApiKey, authenticate_async
from kloop_core.errors import PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable
from kloop_core.logging import get_logger
from kloop_core.rate_limit import AsyncRateLimiter, RateLimit
from kloop_rag import metrics

log = get_logger(__name__)
ANONYMOUS = "anonymous"
_KNOWN_KEYS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    limit: RateLimit


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.RedisError, OSError) as error:
        log.warning("redis call failed", what=what, error=repr(error))
        raise Unavailable(f"{what} is unavailable", retry_after=1.0) from None


class Authenticator:
    def __init__(
        self,
        client: redis.asyncio.Redis | None,
        *,
        enabled: bool,
        scope: str,
        default_limit: RateLimit,
        cache_seconds: float,
    ) -> None:
        if enabled and client is None:
            raise ValueError("auth needs Redis")
        self._redis = client
        self._limiter = AsyncRateLimiter(client) if client is not None else None
        self.enabled = enabled
        self.scope = scope
        self._default = default_limit
        self._cache_seconds = cache_seconds
        self._known: dict[bytes, tuple[ApiKey, float]] = {}

    async def authenticate(self, token: str | None) -> Principal:
        if not self.enabled:
            return Principal(ANONYMOUS, self._default)
        if not token:
            metrics.AUTH_FAILURES.labels("missing").inc()
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        key = await self._verified(token)
        if key is None:
            metrics.AUTH_FAILURES.labels("invalid").inc()
            raise Unauthenticated("invalid or revoked API key")
        if not key.allows(self.scope):
            metrics.AUTH_FAILURES.labels("scope").inc()
            raise PermissionDenied(f"this API key lacks the '{self.scope}' scope")
        limit = RateLimit(
            key.rate_per_second or self._default.per_second, key.burst or self._default.burst
        )
        return Principal(key.id, limit)

    async def _verified(self, token: str) -> ApiKey | None:
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        assert self._redis is not None
        with redis_errors("the API key store"):
            key = await authenticate_async(self._redis, token)
        if key is not None and self._cache_seconds > 0:
            if len(self._known) >= _KNOWN_KEYS_MAX:
                self._known.clear()
            self._known[digest] = (key, now + self._cache_seconds)
        return key

    async def admit(self, token: str | None) -> Principal:
        """authenticate, then the key's rate limit (429 with Retry-After when over it)."""
        principal = await self.authenticate(token)
        if not self.enabled or self._limiter is None:
            return principal
        with redis_errors("the rate limiter"):
            decision = await self._limiter.acquire(
                f"{self.scope}:key:{principal.key_id}", principal.limit
            )
        if not decision.allowed:
            metrics.RATE_LIMITED.inc()
            raise ResourceExhausted(
                f"rate limit of {principal.limit.per_second:g} requests/s exceeded",
                retry_after=decision.retry_after,
            )
        return principal
