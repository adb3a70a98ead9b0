"""Redis client with the timeouts and retries every service should use."""

from __future__ import annotations

import redis
from pydantic import SecretStr
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from kloop_core.logging import get_logger

log = get_logger(__name__)

# Redis commands are fast; a reply slower than this means trouble, and callers must
# fail fast (503) rather than queue up behind a dead connection.
CONNECT_TIMEOUT_SECONDS = 1.0
RETRIES = 3
HEALTH_CHECK_INTERVAL_SECONDS = 30


def create_redis(
    url: str | SecretStr, *, socket_timeout: float = 2.0, decode_responses: bool = False
) -> redis.Redis:
    """A pooled client for `url` (`redis://[:password@]host:port/db`).

    Connection and timeout errors are retried up to 3 times with jittered exponential
    backoff (50 ms .. 1 s) -- note this includes non-idempotent commands such as INCR or
    XADD, which may then apply twice; pick idempotent designs (ids, SET NX) for those.
    Idle pooled connections are checked with PING every 30 s before reuse.
    """
    raw_url = url.get_secret_value() if isinstance(url, SecretStr) else url
    return redis.Redis.from_url(
        raw_url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(CONNECT_TIMEOUT_SECONDS, socket_timeout),
        socket_keepalive=True,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), RETRIES),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=HEALTH_CHECK_INTERVAL_SECONDS,
        decode_responses=decode_responses,
    )


def redis_ping(client: redis.Redis) -> bool:
    """True when Redis answers PING; never raises (for readiness checks)."""
    try:
        return bool(client.ping())
    except Exception as exc:  # any failure, including auth errors, means "not usable"
        log.debug("redis ping failed", error=repr(exc))
        return False
