"""`kloop-inference`: run the inference server until SIGTERM/SIGINT, then drain and exit."""

from __future__ import annotations

import asyncio
import signal

import uvloop

from kloop_core.logging import configure_logging, get_logger
from kloop_core.settings import load_settings, redacted_dict
from kloop_core.tracing import configure_tracing, shutdown_tracing
from kloop_inference.server import InferenceServer
from kloop_inference.settings import InferenceSettings

log = get_logger(__name__)


async def serve(settings: InferenceSettings) -> None:
    server = InferenceServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    log.info("shutting down")
    await server.stop()


def main() -> None:
    settings = load_settings(InferenceSettings)
    configure_logging("inference", settings.log_level, settings.log_format)
    configure_tracing("inference", settings.otlp_endpoint)
    log.info("starting", settings=redacted_dict(settings))
    try:
        uvloop.run(serve(settings))
    finally:
        shutdown_tracing()


if __name__ == "__main__":
    main()
