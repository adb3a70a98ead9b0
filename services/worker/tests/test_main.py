"""`kloop-worker`: worker options, the health probe against real workers, beat, the
audit log."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import redis

from kloop_worker.main import format_history, health, node_name, worker_argv
from kloop_worker.settings import WorkerSettings

from .conftest import Workers, env_value, wait_until


def test_worker_argv_puts_extra_options_last() -> None:
    s = WorkerSettings(pool="prefork", concurrency=3, queues=["scoring"])
    argv = worker_argv(s, ["--loglevel=DEBUG"])
    assert argv[:4] == ["worker", "--pool=prefork", "--concurrency=3", "--queues=scoring"]
    assert f"--hostname={node_name()}" in argv and "--without-mingle" in argv
    assert argv[-1] == "--loglevel=DEBUG"


def health_cli(workers: Workers) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KLOOP_WORKER_REDIS_URL": env_value(workers.redis_url)}
    return subprocess.run(
        [sys.executable, "-m", "kloop_worker.main", "health"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_health_probe_follows_this_hosts_worker(workers: Workers) -> None:
    assert health(workers.control, timeout=0.5) == 1  # no worker yet
    worker = workers.start(name=node_name())
    assert health(workers.control) == 0
    done = health_cli(workers)
    assert done.returncode == 0 and "pong" in done.stdout
    worker.stop()
    done = health_cli(workers)
    assert done.returncode == 1 and "did not answer" in done.stderr


def test_health_probe_without_a_broker_fails_cleanly() -> None:
    env = {**os.environ, "KLOOP_WORKER_REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run(
        [sys.executable, "-m", "kloop_worker.main", "health"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "unhealthy" in done.stderr


def test_history_lines(r: redis.Redis, workers: Workers) -> None:
    entries = [
        {
            "time": "1790000000.5",
            "pipeline_id": "0123456789abcdef",
            "step": "gate",
            "event": "gate_approved",
            "message": "approved: log_loss improved",
            "details": json.dumps({"candidate_value": 0.123456, "metric": "log_loss"}),
        }
    ]
    (line,) = format_history(entries)
    assert line.startswith("2026-09-21T14:13:20+00:00  0123456789ab  gate")
    assert "gate_approved" in line and "[candidate_value=0.1235 metric=log_loss]" in line
    r.xadd("kloop:worker:audit:m", entries[0])
    env = {**os.environ, "KLOOP_WORKER_REDIS_URL": workers.redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "kloop_worker.main", "history", "m"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == line


def test_beat_sends_the_schedules(workers: Workers, r: redis.Redis) -> None:
    """`kloop-worker beat` puts the periodic sweep on the maintenance queue (no worker
    consumes it here, so the messages stay to be counted)."""
    beat = workers.start_beat(sweep_interval_seconds=0.5)
    wait_until(lambda: r.llen("maintenance") >= 4, timeout=30)
    beat.stop()
    tasks = {json.loads(m)["headers"]["task"] for m in r.lrange("maintenance", 0, -1)}
    assert tasks == {"kloop.maintenance.sweep", "kloop.maintenance.sweep_documents"}
