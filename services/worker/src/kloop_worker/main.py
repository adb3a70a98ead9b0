# Celery ships no type hints: its decorators would make every task "untyped".
# mypy: disable-error-code="untyped-decorator"
"""`kloop-worker`: the Celery worker (default), beat, a health probe and the audit log.

kloop-worker [worker] [celery worker options...]   consume the configured queues
kloop-worker beat [celery beat options...]         run the schedules (one replica)
kloop-worker health                                exit 0 iff this host's worker
                                                   answers a ping (exec probe)
kloop-worker history MODEL [LIMIT]                 the worker's audit log of MODEL
"""

from __future__ import annotations

import datetime
import json
import socket
import sys
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.signals import setup_logging
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from prometheus_client import REGISTRY, start_http_server

from kloop_core.logging import configure_logging, get_logger
from kloop_core.metrics import set_build_info
from kloop_core.redis import create_redis
from kloop_core.settings import load_settings, redacted_dict
from kloop_core.tracing import configure_tracing
from kloop_worker.celery_app import create_celery
from kloop_worker.metrics import QueueLengthCollector
from kloop_worker.pipelines import PipelineStore
from kloop_worker.settings import WorkerSettings

log = get_logger(__name__)

COMMANDS = ("worker", "beat", "health", "history")
HEALTH_TIMEOUT_SECONDS = 3.0


def node_name(host: str | None = None) -> str:
    return f"kloop-worker@{host or socket.gethostname()}"


def worker_argv(settings: WorkerSettings, extra: Sequence[str]) -> list[str]:
    """Celery worker options from the settings; `extra` options come last and win."""
    return [
        "worker",
        f"--pool={settings.pool}",
        f"--concurrency={settings.concurrency}",
        f"--queues={','.join(settings.queues)}",
        f"--hostname={node_name()}",
        f"--loglevel={settings.log_level}",
        # No worker-to-worker chatter: nothing here uses it, and start-up takes < 1 s.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        *extra,
    ]


def health(app: Celery, timeout: float = HEALTH_TIMEOUT_SECONDS) -> int:
    """0 when this host's worker answers a ping through the broker within `timeout`."""
    name = node_name()
    try:
        with app.connection_for_write() as connection:
            # One attempt (0 retries): a probe answers within its own timeout.
            connection.ensure_connection(max_retries=0, timeout=timeout)
            replies = app.control.ping(destination=[name], timeout=timeout, connection=connection)
    except Exception as error:  # broker unreachable: unhealthy, never a traceback
        print(f"unhealthy: {error!r}", file=sys.stderr)
        return 1
    if any(name in reply for reply in replies):
        print(f"{name}: pong")
        return 0
    print(f"unhealthy: {name} did not answer within {timeout:g} s", file=sys.stderr)
    return 1


def format_history(entries: Sequence[dict[str, str]]) -> list[str]:
    lines = []
    for entry in entries:
        at = datetime.datetime.fromtimestamp(float(entry["time"]), datetime.UTC)
        details = json.loads(entry.get("details") or "{}")
        shown = " ".join(f"{k}={_short(v)}" for k, v in sorted(details.items()))
        lines.append(
            f"{at.isoformat(timespec='seconds')}  {entry['pipeline_id'][:12]}  "
            f"{entry['step']:<12} {entry['event']:<20} {entry['message']}"
            + (f"  [{shown}]" if shown else "")
        )
    return lines


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    command = args.pop(0) if args and not args[0].startswith("-") else "worker"
    if command not in COMMANDS:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
    settings = load_settings(WorkerSettings)
    configure_logging("worker", settings.log_level, settings.log_format)

    @setup_logging.connect(weak=False)
    def _keep_kloop_logging(**_: Any) -> None:
        # Connected: Celery then leaves logging to us (JSON lines, secrets masked).
        configure_logging("worker", settings.log_level, settings.log_format)

    app = create_celery(settings)
    if command == "health":
        raise SystemExit(health(app))
    if command == "history":
        if not args:
            print("usage: kloop-worker history MODEL [LIMIT]", file=sys.stderr)
            raise SystemExit(2)
        store = PipelineStore(
            create_redis(settings.redis_url),
            namespace=settings.namespace,
            lock_ttl_seconds=settings.pipeline_lock_ttl_seconds,
            record_ttl_seconds=settings.pipeline_ttl_seconds,
            audit_maxlen=settings.audit_maxlen,
        )
        limit = int(args[1]) if len(args) > 1 else 0
        print("\n".join(format_history(store.history(args[0], limit))))
        return
    configure_tracing("worker", settings.otlp_endpoint)
    # A task runs in the trace of the request that sent it (and passes it on).
    CeleryInstrumentor().instrument()
    log.info("starting", command=command, settings=redacted_dict(settings))
    if command == "beat":
        settings.beat_schedule_file.parent.mkdir(parents=True, exist_ok=True)
        app.start(["beat", f"--loglevel={settings.log_level}", *args])
        return
    set_build_info("worker")
    queues = create_redis(settings.broker)
    REGISTRY.register(QueueLengthCollector(settings.queues, lambda q: int(queues.llen(q))))
    start_http_server(settings.http_port, addr=settings.http_host)
    app.worker_main(worker_argv(settings, args))


if __name__ == "__main__":
    main()
