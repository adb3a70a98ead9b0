"""The Celery application: broker and result backend on Redis, four queues routed by
task name, the no-lost-task settings, and the beat schedule.

Tasks (all JSON):
| task                    | queue       | args                      | sent by                 |
|-------------------------|-------------|---------------------------|-------------------------|
| kloop.score_job         | scoring     | job_id                    | gateway (POST /v1/jobs) |
| kloop.score_chunk       | scoring     | job_id, chunk index       | kloop.score_job         |
| kloop.retrain           | training    | model, evidence (dict)    | drift monitor, beat     |
| kloop.retrain.step      | training    | pipeline_id, seq          | the pipeline itself     |
| kloop.drift_report      | maintenance | model                     | beat (nightly)          |
| kloop.maintenance.sweep | maintenance | -                         | beat                    |
| kloop.ingest_document   | ingestion   | collection, doc id, req   | gateway (POST /v1/docs) |
| kloop.ingest_delete     | ingestion   | collection, doc id, req   | gateway (DELETE)        |
| kloop.maintenance.sweep_documents | maintenance | -               | beat                    |
"""

from __future__ import annotations

import weakref
from typing import Any

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from kloop_worker.settings import (
    INGESTION,
    MAINTENANCE,
    QUEUES,
    SCORING,
    TRAINING,
    WorkerSettings,
    parse_cron,
)

SCORE_JOB = "kloop.score_job"
SCORE_CHUNK = "kloop.score_chunk"
RETRAIN = "kloop.retrain"
RETRAIN_STEP = "kloop.retrain.step"
DRIFT_REPORT = "kloop.drift_report"
SWEEP = "kloop.maintenance.sweep"
INGEST_DOCUMENT = "kloop.ingest_document"
INGEST_DELETE = "kloop.ingest_delete"
SWEEP_DOCUMENTS = "kloop.maintenance.sweep_documents"

# Glob patterns on task names (Celery matches them in order).
ROUTES: dict[str, dict[str, str]] = {
    "kloop.score_*": {"queue": SCORING},
    "kloop.retrain*": {"queue": TRAINING},
    "kloop.ingest*": {"queue": INGESTION},
    "kloop.maintenance.*": {"queue": MAINTENANCE},
    DRIFT_REPORT: {"queue": MAINTENANCE},
}


UNACKED_MUTEX_EXPIRE_SECONDS = 5


def queue(name: str) -> Queue:
    # Own exchange and key per queue: bound to one shared default they would each get a
    # copy of every message.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)  # type: ignore[no-untyped-call]


def celery_config(settings: WorkerSettings) -> dict[str, Any]:
    redis_socket = {
        "socket_timeout": 10.0,
        "socket_connect_timeout": 2.0,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        # kombu also checks its BRPOP connection at this rate: a Redis that vanished
        # without closing the socket is noticed in seconds.
        "health_check_interval": 5,
    }
    return {
        "broker_url": settings.broker,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # --- no lost task ---------------------------------------------------------------
        # Acknowledge after the task ran: a worker that dies mid-task leaves the message
        # unacknowledged, and the broker hands it out again.
        "task_acks_late": True,
        # Prefork: a child killed mid-task (OOM, kill -9) requeues its message at once.
        "task_reject_on_worker_lost": True,
        # Take one message per free slot, never a backlog another worker could run.
        "worker_prefetch_multiplier": 1,
        "worker_disable_prefetch": True,
        "broker_transport_options": {
            **redis_socket,
            # Unacknowledged this long -> handed out again (tasks are kept short).
            "visibility_timeout": settings.visibility_timeout_seconds,
            # kombu's defaults (10 s x 10) make the sweep for such messages run every
            # ~100 s; every interval here.
            "unacked_restore_interval": settings.unacked_restore_interval_seconds,
            "unacked_restore_throttle": 1,
            # The sweep runs under a Redis lock that kombu keeps for 300 s by default: a
            # worker killed (or cut off from Redis) mid-sweep would block every sweep,
            # so every redelivery, for five minutes. A sweep takes milliseconds.
            "unacked_mutex_expire": UNACKED_MUTEX_EXPIRE_SECONDS,
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": 5.0}},
        "redis_socket_timeout": 10.0,
        "redis_socket_connect_timeout": 2.0,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": 5,
        "result_expires": settings.result_expires_seconds,
        # Only kloop.retrain returns something worth keeping (the pipeline id).
        "task_ignore_result": True,
        # --- Redis restarts ---------------------------------------------------------------
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # Tasks running when the connection drops will be handed out again anyway (their
        # acks are lost): cancel them instead of finishing twice.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # --- queues -----------------------------------------------------------------------
        "task_queues": [queue(name) for name in QUEUES],
        "task_default_queue": MAINTENANCE,
        "task_routes": ROUTES,
        # --- process ----------------------------------------------------------------------
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule": beat_schedule(settings),
        "beat_schedule_filename": str(settings.beat_schedule_file),
    }


def beat_schedule(settings: WorkerSettings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {
        "sweep": {"task": SWEEP, "schedule": settings.sweep_interval_seconds},
        "sweep-documents": {"task": SWEEP_DOCUMENTS, "schedule": settings.sweep_interval_seconds},
    }
    for model, cron in sorted(settings.retrain_crons.items()):
        schedule[f"retrain-{model}"] = {
            "task": RETRAIN,
            "schedule": parse_cron(cron),
            "args": (model, {"trigger": "schedule", "cron": cron}),
        }
    if settings.drift_report_cron:
        for model in settings.report_models:
            schedule[f"drift-report-{model}"] = {
                "task": DRIFT_REPORT,
                "schedule": parse_cron(settings.drift_report_cron),
                "args": (model,),
            }
    return schedule


_settings: weakref.WeakKeyDictionary[Celery, WorkerSettings] = weakref.WeakKeyDictionary()


def create_celery(settings: WorkerSettings) -> Celery:
    # The worker imports the tasks at start-up ("include"); producers and the health
    # probe never need them (nor the clients and NumPy they pull in).
    app = Celery(
        "kloop-worker",
        set_as_current=False,
        include=["kloop_worker.tasks", "kloop_worker.ingest_tasks"],
    )
    app.conf.update(celery_config(settings))
    _settings[app] = settings
    return app


def settings_of(app: Celery) -> WorkerSettings:
    return _settings[app]
