from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from kloop_core import errors
from kloop_core.errors import ERROR_CODE_KEY, RETRY_AFTER_KEY, error_from_rpc
from kloop_core.grpc_server import RunningService, start_service

SERVICE = "kloop.test.v1.Echo"
ALL_ERRORS = [
    errors.InvalidArgument,
    errors.PayloadTooLarge,
    errors.Unprocessable,
    errors.NotFound,
    errors.AlreadyExists,
    errors.Conflict,
    errors.FailedPrecondition,
    errors.Unauthenticated,
    errors.PermissionDenied,
    errors.ResourceExhausted,
    errors.Unavailable,
    errors.DeadlineExceeded,
    errors.Internal,
]


@pytest.fixture(scope="module")
def readiness(echo: Any) -> Any:
    return echo.Flag(True)


@pytest.fixture(scope="module")
def service(echo: Any, readiness: Any) -> Iterator[RunningService]:
    running = start_service(echo.build_app(readiness=readiness), grpc_port=0, http_port=0)
    yield running
    running.stop(grace=0)


@pytest.fixture(scope="module")
def channel(service: RunningService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as ch:
        yield ch


def _unary(channel: grpc.Channel) -> Callable[..., Any]:
    return channel.unary_unary(f"/{SERVICE}/Echo")


def _http(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# --- request id ---------------------------------------------------------------------------


def test_request_id_is_echoed_in_initial_metadata_and_bound_in_the_handler(
    channel: grpc.Channel,
) -> None:
    response, call = _unary(channel).with_call(
        b"request-id", metadata=(("x-request-id", "req-123"),), timeout=5
    )
    assert response == b"req-123"
    assert ("x-request-id", "req-123") in [(m.key, m.value) for m in call.initial_metadata()]


@pytest.mark.parametrize("sent", [None, "bad id with spaces", "x" * 200, "semi;colon"])
def test_missing_or_unsafe_request_id_is_replaced_by_a_generated_one(
    channel: grpc.Channel, sent: str | None
) -> None:
    metadata = (("x-request-id", sent),) if sent is not None else ()
    response, call = _unary(channel).with_call(b"request-id", metadata=metadata, timeout=5)
    echoed = dict((m.key, m.value) for m in call.initial_metadata())["x-request-id"]
    assert response.decode() == echoed
    assert len(echoed) == 32 and echoed != sent


def test_request_id_reaches_handler_logs(channel: grpc.Channel, log_lines: Any) -> None:
    _unary(channel)(b"log", metadata=(("x-request-id", "log-req-1"),), timeout=5)
    handled = [line for line in log_lines() if line.get("event") == "handled"]
    assert handled and handled[0]["request_id"] == "log-req-1"
    assert handled[0]["service"] == "test" and handled[0]["logger"] == "echo"


# --- error mapping ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_kloop_errors_map_to_their_status_and_back(
    channel: grpc.Channel, cls: type[errors.KloopError]
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _unary(channel)(f"raise:{cls.__name__}".encode(), timeout=5)
    rpc_error: Any = info.value
    assert rpc_error.code() == cls.grpc_code
    assert rpc_error.details() == f"{cls.__name__} happened"
    trailing = dict(rpc_error.trailing_metadata())
    assert trailing[ERROR_CODE_KEY] == cls.code
    mapped = error_from_rpc(rpc_error)
    assert type(mapped) is cls
    assert mapped.message == f"{cls.__name__} happened"
    if cls in (errors.Unavailable, errors.ResourceExhausted):
        assert trailing[RETRY_AFTER_KEY] == "2.5"
        assert mapped.retry_after == 2.5
    else:
        assert RETRY_AFTER_KEY not in trailing
        assert mapped.retry_after is None


def test_unexpected_exception_is_internal_without_leaking_its_text(
    channel: grpc.Channel, log_lines: Any
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _unary(channel)(b"raise:boom", metadata=(("x-request-id", "boom-1"),), timeout=5)
    rpc_error: Any = info.value
    assert rpc_error.code() == grpc.StatusCode.INTERNAL
    assert rpc_error.details() == "internal error (request id boom-1)"
    logged = [line for line in log_lines() if line.get("event") == "rpc handler raised"]
    assert logged and logged[0]["request_id"] == "boom-1" and logged[0]["level"] == "error"
    assert "RuntimeError: cannot reach redis://:***@db" in logged[0]["exception"]
    assert "hunter2" not in json.dumps(log_lines())


def test_dependency_down_becomes_unavailable_with_retry_after(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _unary(channel)(b"raise:redis-down", timeout=5)
    rpc_error: Any = info.value
    assert rpc_error.code() == grpc.StatusCode.UNAVAILABLE
    assert "127.0.0.1" not in rpc_error.details()
    assert dict(rpc_error.trailing_metadata())[RETRY_AFTER_KEY] == "1"


def test_status_set_by_the_handler_itself_is_kept(channel: grpc.Channel) -> None:
    for command, code, details in [
        (b"raise:abort", grpc.StatusCode.NOT_FOUND, "aborted by the handler"),
        (b"raise:set-code", grpc.StatusCode.FAILED_PRECONDITION, "set by the handler"),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            _unary(channel)(command, timeout=5)
        rpc_error: Any = info.value
        assert (rpc_error.code(), rpc_error.details()) == (code, details)


def test_unary_stream_yields_then_maps_a_late_error(channel: grpc.Channel) -> None:
    count = channel.unary_stream(f"/{SERVICE}/Count")
    assert list(count(b"3", timeout=5)) == [b"0", b"1", b"2"]
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for item in count(b"2:raise", timeout=5):
            received.append(item)
    assert received == [b"0", b"1"]
    rpc_error: Any = info.value
    assert rpc_error.code() == grpc.StatusCode.NOT_FOUND and rpc_error.details() == "ran out"


def test_stream_handlers_see_the_request_id(channel: grpc.Channel) -> None:
    count = channel.unary_stream(f"/{SERVICE}/Count")
    items = list(count(b"1:request-id", metadata=(("x-request-id", "s-1"),), timeout=5))
    assert items == [b"0", b"s-1"]


def test_stream_unary_and_stream_stream(channel: grpc.Channel) -> None:
    join = channel.stream_unary(f"/{SERVICE}/Join")
    assert join(iter([b"a", b"b"]), timeout=5) == b"a,b"
    with pytest.raises(grpc.RpcError) as info:
        join(iter([b"a", b"raise"]), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]

    shout = channel.stream_stream(f"/{SERVICE}/Shout")
    assert list(shout(iter([b"a", b"b"]), timeout=5)) == [b"A", b"B"]
    with pytest.raises(grpc.RpcError) as info:
        list(shout(iter([b"a", b"boom"]), timeout=5))
    rpc_error: Any = info.value
    assert rpc_error.code() == grpc.StatusCode.INTERNAL
    assert "xyzzy" not in rpc_error.details()


# --- metrics ------------------------------------------------------------------------------


def test_metrics_count_by_method_and_code_with_bounded_labels(
    service: RunningService, channel: grpc.Channel
) -> None:
    method = f"{SERVICE}/Echo"
    ok = {"service": "echo", "method": method, "code": "OK"}
    not_found = {**ok, "code": "NOT_FOUND"}
    before_ok = _sample("kloop_grpc_server_requests_total", **ok)
    before_nf = _sample("kloop_grpc_server_requests_total", **not_found)
    before_hist = _sample(
        "kloop_grpc_server_request_duration_seconds_count", service="echo", method=method
    )
    _unary(channel)(b"hi", timeout=5)
    _unary(channel)(b"hi", timeout=5)
    with pytest.raises(grpc.RpcError):
        _unary(channel)(b"raise:NotFound", timeout=5)
    assert _sample("kloop_grpc_server_requests_total", **ok) == before_ok + 2
    assert _sample("kloop_grpc_server_requests_total", **not_found) == before_nf + 1
    assert (
        _sample("kloop_grpc_server_request_duration_seconds_count", service="echo", method=method)
        == before_hist + 3
    )

    # An unknown method is UNIMPLEMENTED and creates no series (names are caller-chosen).
    with pytest.raises(grpc.RpcError) as info:
        channel.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"", timeout=5)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
    status, headers, body = _http(service.http_port, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    text = body.decode()
    assert "NoSuchMethod" not in text
    assert f'kloop_grpc_server_requests_total{{code="OK",method="{method}",service="echo"}}' in text
    assert 'kloop_build_info{service="echo",version="' in text


def test_a_call_whose_client_gave_up_is_counted_as_such(channel: grpc.Channel) -> None:
    labels = {"service": "echo", "method": f"{SERVICE}/Echo", "code": "DEADLINE_EXCEEDED"}
    before = _sample("kloop_grpc_server_requests_total", **labels)
    with pytest.raises(grpc.RpcError) as info:
        _unary(channel)(b"sleep:0.3", timeout=0.05)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    _wait_for(lambda: _sample("kloop_grpc_server_requests_total", **labels) == before + 1)


def test_client_cancellation_is_counted_and_not_logged_as_an_error(
    echo: Any, channel: grpc.Channel, log_lines: Any
) -> None:
    labels = {"service": "echo", "method": f"{SERVICE}/Join", "code": "CANCELLED"}
    before = _sample("kloop_grpc_server_requests_total", **labels)
    release = threading.Event()

    def requests() -> Iterator[bytes]:
        yield b"a"
        release.wait(10)  # the client never finishes its stream

    echo.JOIN_STARTED.clear()
    call = channel.stream_unary(f"/{SERVICE}/Join").future(requests(), timeout=20)
    assert echo.JOIN_STARTED.wait(10), "the server never started the call"
    call.cancel()
    release.set()
    _wait_for(
        lambda: _sample("kloop_grpc_server_requests_total", **labels) == before + 1, timeout=15
    )
    assert not [line for line in log_lines() if line.get("level") == "error"]


# --- health, readiness, reflection, ops HTTP ---------------------------------------------------


def test_readiness_drives_grpc_health_and_readyz(
    service: RunningService, channel: grpc.Channel, readiness: Any
) -> None:
    stub = health_pb2_grpc.HealthStub(channel)

    def statuses() -> set[int]:
        return {
            stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status
            for name in ("", SERVICE)
        }

    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        (health_pb2.HealthCheckResponse.NOT_SERVING),
    )
    try:
        _wait_for(lambda: statuses() == {serving})
        assert _http(service.http_port, "/readyz")[0] == 200

        readiness.set(False)
        _wait_for(lambda: statuses() == {not_serving})
        status, headers, body = _http(service.http_port, "/readyz")
        assert status == 503 and headers["Retry-After"] == "1"
        assert json.loads(body) == {"error": {"code": "not_ready", "message": "not ready yet"}}
        assert _http(service.http_port, "/livez")[0] == 200  # alive, just not ready

        readiness.set(True)
        _wait_for(lambda: statuses() == {serving})
        assert _http(service.http_port, "/readyz")[0] == 200
    finally:
        readiness.set(True)

    with pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def test_failing_readiness_check_counts_as_not_ready(echo: Any) -> None:
    def broken() -> bool:
        raise ConnectionError("redis down")

    with start_service(echo.build_app(readiness=broken), grpc_port=0, http_port=0) as running:
        time.sleep(0.2)
        assert not running.ready
        assert _http(running.http_port, "/readyz")[0] == 503


def test_ports_in_use_fail_loudly_and_ops_http_can_be_turned_off(
    echo: Any, service: RunningService
) -> None:
    with pytest.raises(RuntimeError, match="cannot listen for gRPC"):
        start_service(echo.build_app(), grpc_port=service.grpc_port, http_port=0)
    with pytest.raises(RuntimeError, match="cannot listen for HTTP"):
        start_service(echo.build_app(), grpc_port=0, http_port=service.http_port)

    app = echo.build_app()
    app.ops_http = False
    with start_service(app, grpc_port=0, http_port=service.http_port) as running:
        assert running.http_port == 0 and running.grpc_port > 0


def test_ops_server_unknown_path_is_a_json_404(service: RunningService) -> None:
    status, _, body = _http(service.http_port, "/nope")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


def test_reflection_lists_the_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


# --- shutdown -----------------------------------------------------------------------------


def test_stop_drains_in_flight_calls_refuses_new_ones_and_ends_health_watches(
    echo: Any,
) -> None:
    shutdown_calls: list[str] = []
    app = echo.build_app(on_shutdown=lambda: shutdown_calls.append("done"))
    running = start_service(app, grpc_port=0, http_port=0)
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        _wait_for(
            lambda: (
                health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
                == health_pb2.HealthCheckResponse.SERVING
            )
        )
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        slow = _unary(channel).future(b"sleep:0.6", timeout=10)
        time.sleep(0.2)  # the slow call is running

        started = time.monotonic()
        stopper = threading.Thread(target=running.stop, kwargs={"grace": 5})
        stopper.start()
        _wait_for(lambda: not running.ready)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert list(watch) == []  # then the watch ends cleanly instead of holding the drain
        with pytest.raises(grpc.RpcError):
            _unary(channel)(b"late", timeout=2)
        assert slow.result() == b"slept"
        stopper.join(timeout=10)
        # Finished with the slow call, not after the 5 s grace the open watch would take.
        assert time.monotonic() - started < 3
        assert shutdown_calls == ["done"]
        assert running.wait(timeout=0)


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    script = Path(__file__).with_name("echo_service.py")
    env = {**os.environ, "KLOOP_ECHO_SHUTDOWN_GRACE_SECONDS": "5", "KLOOP_ECHO_LOG_LEVEL": "info"}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        started: dict[str, Any] = {}
        for raw in proc.stdout:
            line = json.loads(raw)
            if line["event"] == "service started":
                started = line
                break
        assert started, proc.stderr.read() if proc.stderr else ""
        with grpc.insecure_channel(f"127.0.0.1:{started['grpc_port']}") as channel:
            grpc.channel_ready_future(channel).result(timeout=5)
            slow = _unary(channel).future(b"sleep:1.0", timeout=10)
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError) as info:
                _unary(channel)(b"after-sigterm", timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            assert slow.result() == b"slept"
        assert proc.wait(timeout=10) == 0
        events = [json.loads(raw)["event"] for raw in proc.stdout]
        assert events.index("signal received") < events.index("on_shutdown ran")
        assert events[-1] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
