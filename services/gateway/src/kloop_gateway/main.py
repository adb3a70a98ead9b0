"""`kloop-gateway`: HTTP (FastAPI on uvicorn) and gRPC in one process."""

from __future__ import annotations

import signal
from collections.abc import Generator
from contextlib import contextmanager

import uvicorn
from opentelemetry.instrumentation.celery import CeleryInstrumentor

from kloop_core.logging import configure_logging, get_logger
from kloop_core.settings import load_settings, redacted_dict
from kloop_core.tracing import configure_tracing, shutdown_tracing
from kloop_gateway.app import create_app
from kloop_gateway.settings import GatewaySettings

log = get_logger(__name__)


class _Server(uvicorn.Server):
    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # As uvicorn's, minus re-raising the signal after the graceful shutdown (which
        # kills the process before main() can flush traces): exit 0 like every kloop
        # service.
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main() -> None:
    settings = load_settings(GatewaySettings)  # bad env: one line per variable, exit 2
    configure_logging("gateway", settings.log_level, settings.log_format)
    configure_tracing("gateway", settings.otlp_endpoint)
    # Jobs and documents go to the worker as Celery messages: the trace goes with them.
    CeleryInstrumentor().instrument()
    log.info("starting", config=redacted_dict(settings))
    # SIGTERM: uvicorn drains HTTP, then the app's lifespan stops gRPC (with
    # shutdown_grace_seconds) and flushes the pending prediction records.
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    try:
        _Server(config).run()
    finally:
        shutdown_tracing()
    log.info("stopped")


if __name__ == "__main__":
    main()
