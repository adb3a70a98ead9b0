"""The Celery configuration: no-lost-task settings, routing by task name, beat."""

from __future__ import annotations

import pytest
from celery.schedules import crontab
from pydantic import ValidationError

from kloop_worker.celery_app import beat_schedule, celery_config, create_celery
from kloop_worker.settings import WorkerSettings, parse_cron


def settings(**overrides: object) -> WorkerSettings:
    return WorkerSettings(redis_url="redis://127.0.0.1:6399/0", **overrides)  # type: ignore[arg-type]


def test_no_lost_task_settings() -> None:
    conf = celery_config(settings(visibility_timeout_seconds=12))
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    transport = conf["broker_transport_options"]
    assert transport["visibility_timeout"] == 12
    assert transport["unacked_restore_interval"] == 1.0
    assert transport["unacked_restore_throttle"] == 1
    assert transport["unacked_mutex_expire"] == 5
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["broker_connection_max_retries"] is None


@pytest.mark.parametrize(
    ("task", "queue"),
    [
        ("kloop.score_job", "scoring"),
        ("kloop.score_chunk", "scoring"),
        ("kloop.retrain", "training"),
        ("kloop.retrain.step", "training"),
        ("kloop.ingest_documents", "ingestion"),
        ("kloop.drift_report", "maintenance"),
        ("kloop.maintenance.sweep", "maintenance"),
        ("something.else", "maintenance"),
    ],
)
def test_routing_by_task_name(task: str, queue: str) -> None:
    app = create_celery(settings())
    route = app.amqp.router.route({}, task)
    assert route["queue"].name == queue
    # Each queue has its own exchange and key: a message lands in exactly one queue.
    assert route["queue"].routing_key == queue and route["queue"].exchange.name == queue


def test_beat_schedule() -> None:
    schedule = beat_schedule(
        settings(
            retrain_crons={"sentiment": "0 3 * * 0"},
            report_models=["sentiment", "other"],
            drift_report_cron="30 1 * * *",
            sweep_interval_seconds=10,
        )
    )
    assert schedule["sweep"] == {"task": "kloop.maintenance.sweep", "schedule": 10}
    retrain = schedule["retrain-sentiment"]
    assert retrain["task"] == "kloop.retrain"
    assert retrain["args"] == ("sentiment", {"trigger": "schedule", "cron": "0 3 * * 0"})
    assert retrain["schedule"] == crontab("0", "3", "0", "*", "*")
    assert schedule["drift-report-other"]["args"] == ("other",)
    assert schedule["drift-report-other"]["schedule"] == crontab("30", "1")
    assert schedule["sweep-documents"] == {
        "task": "kloop.maintenance.sweep_documents",
        "schedule": 10,
    }
    assert set(beat_schedule(settings(drift_report_cron=""))) == {"sweep", "sweep-documents"}


def test_cron_expressions_are_validated() -> None:
    assert parse_cron("*/15 * * * 1-5") == crontab("*/15", "*", "1-5", "*", "*")
    with pytest.raises(ValueError, match="5 fields"):
        parse_cron("* * *")
    with pytest.raises(ValidationError, match="cron"):
        settings(retrain_crons={"m": "61 * * * *"})


def test_waits_must_fit_the_visibility_timeout() -> None:
    with pytest.raises(ValidationError, match="retry_backoff_max_seconds must be at most"):
        settings(visibility_timeout_seconds=4, retry_backoff_max_seconds=3)
    with pytest.raises(ValidationError, match="canary_poll_seconds"):
        settings(visibility_timeout_seconds=4, retry_backoff_max_seconds=1)
    settings(visibility_timeout_seconds=20, retry_backoff_max_seconds=10)


def test_broker_and_backend_default_to_redis_url() -> None:
    s = settings()
    assert s.broker == s.result_backend == "redis://127.0.0.1:6399/0"
    s = settings(broker_url="redis://b:1/0")
    assert (s.broker, s.result_backend) == ("redis://b:1/0", "redis://b:1/0")
