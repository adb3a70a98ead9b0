"""Deadlines, retries with backoff, and the standard client channel.

Rules (ARCHITECTURE "Deadlines and retries"): every remote call has a deadline; only
idempotent calls are retried; a dependency that is down makes the caller fail fast.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import tenacity

from kloop_core.errors import (
    RETRYABLE_GRPC_CODES,
    is_retryable_rpc_error,
    is_transient_error,
    retry_after_hint,
)
from kloop_core.logging import get_logger
from kloop_core.tracing import instrument_channel

__all__ = [
    "CHANNEL_OPTIONS",
    "MAX_MESSAGE_BYTES",
    "RETRYABLE_GRPC_CODES",
    "Deadline",
    "grpc_channel",
    "is_retryable_rpc_error",
    "is_transient_error",
    "retry_after_hint",
    "retry_call",
]

T = TypeVar("T")
log = get_logger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class Deadline:
    """A point in (monotonic) time by which a whole operation must be done.

    Pass `deadline.timeout()` as each remote call's timeout so that chained calls share
    one budget instead of each getting a fresh one.
    """

    __slots__ = ("_expires_at",)

    def __init__(self, seconds: float) -> None:
        self._expires_at = time.monotonic() + seconds

    @classmethod
    def from_grpc_context(cls, context: grpc.ServicerContext, default: float) -> Deadline:
        """The caller's deadline of an incoming RPC, or `default` seconds if it set none."""
        remaining = context.time_remaining()
        return cls(default if remaining is None else float(remaining))

    def remaining(self) -> float:
        return max(0.0, self._expires_at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._expires_at

    def timeout(self, cap: float | None = None) -> float:
        """Seconds left (at most `cap`), to pass as a call's timeout. 0 when expired."""
        remaining = self.remaining()
        return remaining if cap is None else min(remaining, cap)

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"


def retry_call(
    fn: Callable[..., T],
    *args: Any,
    attempts: int = 3,
    initial_delay: float = 0.1,
    max_delay: float = 2.0,
    retry_on: tuple[type[BaseException], ...] | Callable[[BaseException], bool] = (
        is_transient_error
    ),
    deadline: Deadline | None = None,
    **kwargs: Any,
) -> T:
    """Call `fn(*args, **kwargs)`, retrying transient failures with backoff and jitter.

    Only for idempotent calls. Waits grow exponentially from `initial_delay` (plus up to
    `initial_delay` of jitter) to `max_delay`, and at least the server's retry-after
    hint (a hint above `max_delay` ends the retries). With a `deadline`, no retry starts
    that could not begin before it; give each attempt the remaining budget with a lambda:
    `retry_call(lambda: stub.Get(req, timeout=dl.timeout()), deadline=dl)`.
    The last error is re-raised as is.
    """
    predicate = retry_on if not isinstance(retry_on, tuple) else _isinstance_of(retry_on)
    jittered = tenacity.wait_exponential_jitter(
        multiplier=initial_delay, max=max_delay, jitter=initial_delay
    )

    def wait(state: tenacity.RetryCallState) -> float:
        delay = jittered(state)
        error = state.outcome.exception() if state.outcome is not None else None
        hint = retry_after_hint(error) if error is not None else None
        if hint is not None:
            delay = max(delay, hint)
        return delay

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= attempts:
            return True
        # A retry-after beyond max_delay means "not soon": fail fast rather than stall.
        if state.upcoming_sleep > max_delay:
            return True
        return deadline is not None and deadline.remaining() <= state.upcoming_sleep

    def before_sleep(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.info(
            "retrying call",
            call=getattr(fn, "__qualname__", repr(fn)),
            attempt=state.attempt_number,
            delay_seconds=round(state.upcoming_sleep, 3),
            error=type(error).__name__,
        )

    retrying = tenacity.Retrying(
        stop=stop,
        wait=wait,
        retry=tenacity.retry_if_exception(predicate),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn, *args, **kwargs)


def _isinstance_of(types: tuple[type[BaseException], ...]) -> Callable[[BaseException], bool]:
    return lambda e: isinstance(e, types)


# Client pings every 30 s (also when idle) so a dead peer (a pod that vanished without
# a FIN) is noticed before the next call hangs on it; servers built by
# kloop_core.grpc_server accept pings at that rate.
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Spread calls over every address a name resolves to (k8s headless services).
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
)


def grpc_channel(target: str, *, instrument: bool = True) -> grpc.Channel:
    """An insecure channel (in-cluster traffic) with keepalive and 64 MiB messages,
    traced and carrying the request id unless `instrument=False`."""
    channel = grpc.insecure_channel(target, options=list(CHANNEL_OPTIONS))
    return instrument_channel(channel) if instrument else channel
