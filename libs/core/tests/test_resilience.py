from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from kloop_core import errors
from kloop_core.grpc_server import RunningService, start_service
from kloop_core.resilience import (
    CHANNEL_OPTIONS,
    MAX_MESSAGE_BYTES,
    Deadline,
    grpc_channel,
    is_retryable_rpc_error,
    is_transient_error,
    retry_call,
)

S = grpc.StatusCode


class FakeRpcError(grpc.RpcError):  # type: ignore[misc]
    def __init__(self, code: Any, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        self._code, self._trailing = code, trailing

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._code.name

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


class Flaky:
    """Fails with `error` for the first `failures` calls, then returns "ok"."""

    def __init__(self, failures: int, error: BaseException) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return f"ok {args} {kwargs}"


def test_deadline() -> None:
    deadline = Deadline(0.2)
    assert not deadline.expired
    assert 0.1 < deadline.remaining() <= 0.2
    assert deadline.timeout(cap=0.05) == 0.05
    time.sleep(0.21)
    assert deadline.expired and deadline.remaining() == 0.0 and deadline.timeout() == 0.0


@given(st.floats(min_value=0, max_value=100), st.floats(min_value=0, max_value=100))
def test_deadline_timeout_is_bounded(seconds: float, cap: float) -> None:
    timeout = Deadline(seconds).timeout(cap)
    assert 0 <= timeout <= min(seconds, cap)


def test_retryable_codes() -> None:
    assert is_retryable_rpc_error(FakeRpcError(S.UNAVAILABLE))
    assert is_retryable_rpc_error(FakeRpcError(S.RESOURCE_EXHAUSTED))
    for code in (S.DEADLINE_EXCEEDED, S.INVALID_ARGUMENT, S.INTERNAL, S.ABORTED, S.NOT_FOUND):
        assert not is_retryable_rpc_error(FakeRpcError(code))
    assert not is_retryable_rpc_error(ValueError())
    assert is_transient_error(redis.ConnectionError())
    assert is_transient_error(ConnectionRefusedError())
    assert is_transient_error(errors.Unavailable("x"))
    assert not is_transient_error(errors.NotFound("x"))


def test_retry_call_retries_transient_errors_then_succeeds() -> None:
    fn = Flaky(2, FakeRpcError(S.UNAVAILABLE))
    assert retry_call(fn, 1, initial_delay=0.001, key="v") == "ok (1,) {'key': 'v'}"
    assert fn.calls == 3


def test_retry_call_gives_up_after_attempts_with_the_original_error() -> None:
    fn = Flaky(10, redis.ConnectionError("down"))
    with pytest.raises(redis.ConnectionError):
        retry_call(fn, attempts=4, initial_delay=0.001)
    assert fn.calls == 4


def test_retry_call_does_not_retry_other_errors() -> None:
    for error in (FakeRpcError(S.INVALID_ARGUMENT), FakeRpcError(S.DEADLINE_EXCEEDED), KeyError()):
        fn = Flaky(1, error)
        with pytest.raises(type(error)):
            retry_call(fn, initial_delay=0.001)
        assert fn.calls == 1


def test_retry_on_accepts_exception_types() -> None:
    fn = Flaky(1, KeyError("k"))
    assert retry_call(fn, retry_on=(KeyError,), initial_delay=0.001).startswith("ok")


def test_retry_call_stops_at_the_deadline() -> None:
    fn = Flaky(100, ConnectionError())
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        retry_call(fn, attempts=100, initial_delay=0.05, max_delay=0.05, deadline=Deadline(0.3))
    assert time.monotonic() - started < 0.5
    assert 2 <= fn.calls <= 7


def test_retry_after_hint_is_honoured_and_a_long_one_ends_retries() -> None:
    fn = Flaky(1, FakeRpcError(S.RESOURCE_EXHAUSTED, (("retry-after", "0.2"),)))
    started = time.monotonic()
    retry_call(fn, initial_delay=0.001, max_delay=1.0)
    assert time.monotonic() - started >= 0.2

    fn = Flaky(1, errors.Unavailable("busy", retry_after=30))
    with pytest.raises(errors.Unavailable):
        retry_call(fn, initial_delay=0.001, max_delay=1.0)
    assert fn.calls == 1


@pytest.fixture(scope="module")
def service(echo: Any) -> Iterator[RunningService]:
    running = start_service(echo.build_app(), grpc_port=0, http_port=0)
    yield running
    running.stop(grace=0)


def test_grpc_channel_carries_large_messages(service: RunningService) -> None:
    assert ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES) in CHANNEL_OPTIONS
    payload = b"x" * (8 * 1024 * 1024)  # above gRPC's 4 MiB default
    with grpc_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        echo = channel.unary_unary("/kloop.test.v1.Echo/Echo")
        assert echo(payload, timeout=Deadline(10).timeout()) == payload


def test_a_down_dependency_fails_fast(unused_port: int) -> None:
    deadline = Deadline(1.0)
    with grpc_channel(f"127.0.0.1:{unused_port}") as channel:
        call = channel.unary_unary("/kloop.test.v1.Echo/Echo")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            retry_call(lambda: call(b"x", timeout=deadline.timeout()), deadline=deadline)
    assert info.value.code() in (S.UNAVAILABLE, S.DEADLINE_EXCEEDED)  # type: ignore[attr-defined]
    assert time.monotonic() - started < 1.5
    assert isinstance(
        errors.error_from_rpc(info.value), errors.Unavailable | errors.DeadlineExceeded
    )
