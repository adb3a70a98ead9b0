"""Structured logs: one JSON object per line on stdout, for kloop code and libraries alike.

structlog renders through the stdlib `logging` handler, so `logging.getLogger("grpc")`
records come out in the same shape. Every line carries the service name, the request id
and the OpenTelemetry trace/span ids when there are any, and passes a masking step that
hides secrets.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from kloop_core.redaction import redact

request_id_var: ContextVar[str | None] = ContextVar("kloop_request_id", default=None)

# Incoming ids are echoed into logs and headers: accept only short, plain tokens so a
# caller cannot inject log lines or huge values.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

_service_name = "kloop"


def new_request_id() -> str:
    return uuid.uuid4().hex


def clean_request_id(value: str | None) -> str | None:
    """`value` if it is an acceptable request id, else None."""
    if value and _VALID_REQUEST_ID.match(value):
        return value
    return None


def bind_request_id(value: str | None = None) -> str:
    """Bind a request id to the current context (generated when None or invalid)."""
    request_id = clean_request_id(value) or new_request_id()
    request_id_var.set(request_id)
    return request_id


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger; `name` becomes the `logger` field (use `__name__`)."""
    return structlog.stdlib.get_logger(name)


def _add_service(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict.setdefault("service", _service_name)
    return event_dict


def _add_request_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    request_id = request_id_var.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict.setdefault("trace_id", format(span_context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(span_context.span_id, "016x"))
    return event_dict


def mask_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask secret-looking keys, SecretStr values, URL passwords."""
    masked: EventDict = redact(event_dict)
    return masked


def _drop_color_message(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # uvicorn duplicates its message with ANSI codes under this key.
    event_dict.pop("color_message", None)
    return event_dict


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Route structlog and stdlib logging to one stdout handler. Safe to call again."""
    global _service_name
    _service_name = service

    # Run at the call site (so context vars are those of the request), for both
    # structlog events and foreign stdlib records.
    pre_chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_service,
        _add_request_context,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_color_message,
            structlog.processors.format_exc_info,
            # After format_exc_info so a password inside an exception message is masked.
            mask_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    handler.set_name("kloop")

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that install their own handlers would print twice (or in plain text).
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers.clear()
        lib_logger.propagate = True

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *pre_chain,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a logger used before configure_logging() (at import time, in
        # tests) must still pick up the final configuration.
        cache_logger_on_first_use=False,
    )
