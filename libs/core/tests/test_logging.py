from __future__ import annotations

import io
import json
import logging
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from kloop_core.logging import (
    bind_request_id,
    configure_logging,
    get_logger,
    mask_secrets,
    request_id_var,
)
from kloop_core.redaction import MASK, is_secret_key
from kloop_core.tracing import get_tracer


@pytest.fixture(autouse=True)
def no_request_id() -> Any:
    token = request_id_var.set(None)
    yield
    request_id_var.reset(token)


def test_one_json_object_per_line_with_the_standard_fields(log_lines: Any) -> None:
    get_logger("kloop.test").info("model loaded", model="sentiment", version=3)
    (line,) = log_lines()
    assert line["event"] == "model loaded" and line["level"] == "info"
    assert line["service"] == "test" and line["logger"] == "kloop.test"
    assert line["model"] == "sentiment" and line["version"] == 3
    assert line["timestamp"].endswith("Z")
    assert "request_id" not in line and "trace_id" not in line


def test_stdlib_library_logs_are_json_too(log_lines: Any) -> None:
    logging.getLogger("some.library").warning("retrying %s in %ds", "GET", 2)
    (line,) = log_lines()
    assert line["event"] == "retrying GET in 2s"
    assert line["level"] == "warning" and line["logger"] == "some.library"


def test_request_id_and_trace_ids_are_added(log_lines: Any, span_exporter: Any) -> None:
    request_id = bind_request_id()
    assert len(request_id) == 32 and request_id_var.get() == request_id
    with get_tracer("t").start_as_current_span("work") as span:
        get_logger().info("inside")
    (line,) = log_lines()
    assert line["request_id"] == request_id
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")


def test_bind_request_id_keeps_valid_ids_only() -> None:
    assert bind_request_id("abc-123") == "abc-123"
    assert bind_request_id("evil\nline") != "evil\nline"


def test_secrets_never_reach_the_output(log_lines: Any) -> None:
    log = get_logger("secrets")
    log.info(
        "connecting",
        password="hunter2",
        api_key="ak-111",
        headers={"Authorization": "Bearer tok-222", "Accept": "json"},
        url="redis://:pw-333@redis:6379/0",
        dsn=SecretStr("postgres://u:pw-444@db/x"),
        token=SecretStr("tok-555"),
        prompt_tokens=12,
    )
    logging.getLogger("lib").info("login with password=pw-666 to https://u:pw-777@h/")
    try:
        raise ValueError("bad credentials for redis://:pw-888@cache:6379")
    except ValueError:
        log.exception("failed")
    output = json.dumps(log_lines())
    for secret in ("hunter2", "ak-111", "tok-222", "pw-333", "pw-444", "tok-555", "pw-666",
                   "pw-777", "pw-888"):  # fmt: skip
        assert secret not in output
    first = log_lines()[0]
    assert first["password"] == MASK and first["headers"]["Accept"] == "json"
    assert first["url"] == "redis://:***@redis:6379/0" and first["prompt_tokens"] == 12


def test_level_filtering_and_console_format(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()
    monkeypatch.setattr(sys, "stdout", buffer)
    configure_logging("svc", "WARNING", "console")
    try:
        get_logger("x").info("hidden")
        get_logger("x").warning("shown", password="hunter2")
        output = buffer.getvalue()
        assert "hidden" not in output and "shown" in output and "hunter2" not in output
    finally:
        monkeypatch.undo()
        configure_logging("test")


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("password", True),
        ("db_passwd", True),
        ("client_secret", True),
        ("access_token", True),
        ("x-api-key", True),
        ("apiKey", True),
        ("Authorization", True),
        ("set-cookie", True),
        ("aws_credentials", True),
        ("redisPassword", True),
        ("prompt_tokens", False),
        ("max_tokens", False),
        ("model", False),
        ("passage", False),
    ],
)
def test_secret_key_detection(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789!$%^*()-_+", min_size=8))
def test_masking_processor_hides_any_password_value(password: str) -> None:
    event = {"event": "x", "password": password, "nested": [{"token": password}]}
    masked = mask_secrets(None, "info", event)
    # Values only: the generated password may well be the word "password" itself.
    assert masked["password"] != password and masked["nested"][0]["token"] != password
    assert password not in json.dumps([masked["password"], masked["nested"]])
