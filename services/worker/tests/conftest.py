"""Worker test fixtures: a Redis server of its own per test module (so workers, queues
and restarts never touch other packages' keys), real `kloop-worker` processes started,
killed and restarted by the tests, a real inference server (a subprocess over a model
folder), and the gateway's own job code as the client that creates and reads jobs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from kloop_client.local import (
    ManagedProcess,
    free_port,
    http_ok,
    start_process,
    start_redis,
    stop_group,
)
from kloop_core.rate_limit import RateLimit
from kloop_gateway.api.routes.jobs import JobCreate, JobQueue, JobSettings, ResultRow
from kloop_gateway.service import Principal
from kloop_gateway.settings import GatewaySettings
from kloop_model import SentimentClassifier
from kloop_model.dataset import builtin_dataset
from kloop_model.onnx_export import export_onnx
from kloop_worker.celery_app import create_celery
from kloop_worker.settings import WorkerSettings

MODEL = "sentiment"


def wait_until(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """The first truthy result of `check()`; errors count as "not yet" (e.g. while a
    server restarts) until the timeout, then the last one is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except (redis.ConnectionError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


# --- Redis --------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    state: Path
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    def stop(self) -> None:
        self.process.stop()

    def start(self) -> None:
        """Start again on the same port and data (append-only file: nothing is lost)."""
        self.process = start_redis(self.port, self.state)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    port = free_port()
    state = tmp_path_factory.mktemp("redis")
    server = RedisServer(port, state, start_redis(port, state))
    yield server
    server.stop()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the module's Redis, emptied before each test."""
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


# --- inference ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model() -> SentimentClassifier:
    data = builtin_dataset()
    return SentimentClassifier().fit(data.texts, data.labels)


@pytest.fixture(scope="session")
def inference_addr(
    model: SentimentClassifier, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`kloop-inference` serving sentiment v1 from a model folder."""
    root = tmp_path_factory.mktemp("models")
    (root / MODEL / "1").mkdir(parents=True)
    (root / MODEL / "1" / "model.onnx").write_bytes(export_onnx(model).SerializeToString())
    grpc_port, http_port = free_port(), free_port()
    process = start_process(
        "inference",
        [sys.executable, "-m", "kloop_inference.main"],
        state_dir=tmp_path_factory.mktemp("inference"),
        env={
            "KLOOP_INFERENCE_MODEL_REPOSITORY": str(root),
            "KLOOP_INFERENCE_MODELS": json.dumps({MODEL: ["production"]}),
            "KLOOP_INFERENCE_GRPC_PORT": str(grpc_port),
            "KLOOP_INFERENCE_HTTP_PORT": str(http_port),
            "KLOOP_INFERENCE_MAX_BATCH_SIZE": "1024",
            "KLOOP_INFERENCE_LOG_LEVEL": "WARNING",
        },
        ready=lambda: http_ok(f"http://127.0.0.1:{http_port}/v2/health/ready"),
    )
    yield f"127.0.0.1:{grpc_port}"
    process.stop()


# --- workers ------------------------------------------------------------------------------


def env_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass
class WorkerProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        """kill -9: no shutdown, no acknowledgement, no restore of its messages."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_group(self.process.pid, timeout=10)
        self.process.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Workers:
    """Starts `kloop-worker worker` processes with settings as environment variables."""

    def __init__(self, redis_url: str, state: Path, base: dict[str, Any]) -> None:
        self.redis_url = redis_url
        self.state = state
        self.base = {"redis_url": redis_url, **base}
        self.started: list[WorkerProcess] = []
        self.control = create_celery(self.settings())

    def settings(self, **overrides: Any) -> WorkerSettings:
        return WorkerSettings(**{**self.base, **overrides})

    def _spawn(self, argv: list[str], name: str, settings: dict[str, Any]) -> WorkerProcess:
        values = {**self.base, **settings}
        env = {
            **os.environ,
            **{f"KLOOP_WORKER_{key.upper()}": env_value(v) for key, v in values.items()},
        }
        log = self.state / f"worker-{len(self.started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "kloop_worker.main", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        started = WorkerProcess(name, process, log)
        self.started.append(started)
        return started

    def start(self, *, name: str = "", wait: bool = True, **settings: Any) -> WorkerProcess:
        name = name or f"test{len(self.started)}@{socket.gethostname()}"
        worker = self._spawn(["worker", f"--hostname={name}"], name, settings)
        if wait:
            self.wait_ready(worker)
        return worker

    def start_beat(self, **settings: Any) -> WorkerProcess:
        """`kloop-worker beat` with its own schedule file."""
        schedule = self.state / f"beat-{len(self.started)}" / "schedule"
        return self._spawn(["beat"], "beat", {"beat_schedule_file": str(schedule), **settings})

    def wait_ready(self, worker: WorkerProcess, timeout: float = 30.0) -> None:
        # Its log says so (a control ping from this process gets no reply once the test
        # process has seen a Redis restart; a fresh process's ping works, see test_main).
        def ready() -> bool:
            if worker.process.poll() is not None:
                raise AssertionError(f"worker exited:\n{worker.output()[-3000:]}")
            return f"{worker.name} ready." in worker.output()

        wait_until(ready, timeout)

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()
        self.control.close()


# Fast redelivery and retries for tests; every test can override any of these.
TEST_SETTINGS: dict[str, Any] = {
    "http_port": 0,
    "concurrency": 2,
    "visibility_timeout_seconds": 3.0,
    "unacked_restore_interval_seconds": 0.5,
    "retry_backoff_seconds": 0.1,
    "retry_backoff_max_seconds": 0.5,
    "training_poll_seconds": 0.5,
    "canary_poll_seconds": 0.5,
    "log_level": "INFO",
    "log_format": "console",
}


@pytest.fixture
def workers(
    redis_server: RedisServer, r: redis.Redis, tmp_path: Path, inference_addr: str
) -> Iterator[Workers]:
    factory = Workers(
        redis_server.url,
        tmp_path,
        {**TEST_SETTINGS, "inference_addr": inference_addr, "job_chunk_size": 100},
    )
    yield factory
    factory.stop_all()


# --- the gateway's job code as the client ----------------------------------------------------


class JobClient:
    """Creates, reads and cancels jobs with the gateway's own JobQueue (the contract)."""

    CALLER = Principal("tests", frozenset({"predict"}), RateLimit(1000, 1000))

    def __init__(self, redis_url: str, **job_settings: Any) -> None:
        self.loop = asyncio.new_event_loop()
        settings = GatewaySettings(redis_url=SecretStr(redis_url), grpc_port=0, http_port=0)
        self.queue = JobQueue(settings, JobSettings(**job_settings))

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def create(
        self, texts: list[str] | None = None, dataset_uri: str | None = None, model: str = MODEL
    ) -> str:
        body = JobCreate(model=model, texts=texts, dataset_uri=dataset_uri)
        job_id: str = self._run(self.queue.create(body, self.CALLER.key_id))
        return job_id

    def get(self, job_id: str) -> dict[str, str]:
        record: dict[str, str] = self._run(self.queue.get(job_id, self.CALLER))
        return record

    def cancel(self, job_id: str) -> dict[str, str]:
        record: dict[str, str] = self._run(self.queue.cancel(job_id, self.CALLER))
        return record

    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, str]:
        record: dict[str, str] = wait_until(
            lambda: (rec := self.get(job_id))["status"] not in ("queued", "running") and rec,
            timeout,
        )
        return record

    def rows(self, job_id: str, page: int = 700) -> list[ResultRow]:
        """Every result row, through the paged reads."""
        rows: list[ResultRow] = []
        cursor: str | None = "0"
        while cursor is not None:
            result = self._run(self.queue.rows(self.get(job_id), int(cursor), page))
            rows += result.items
            cursor = result.next_cursor
        return rows

    def close(self) -> None:
        self._run(self.queue.close())
        self.loop.close()


@pytest.fixture
def jobs(redis_server: RedisServer, r: redis.Redis) -> Iterator[JobClient]:
    client = JobClient(redis_server.url, result_ttl_seconds=120)
    yield client
    client.close()


# --- the drift monitor's report endpoint --------------------------------------------------


class Monitor(BaseHTTPRequestHandler):
    """GET /v1/reports/{model}/{version}?format=: 200 with where the report went, 404
    for model "unknown", 503 for model "down"."""

    seen: list[str] = []

    def do_GET(self) -> None:
        Monitor.seen.append(self.path)
        model = self.path.split("/")[3]
        status = {"unknown": 404, "down": 503}.get(model, 200)
        body = b"<html>report</html>" if status == 200 else b'{"error": "x"}'
        self.send_response(status)
        self.send_header("X-Kloop-Report-Uri", "runs:/r1/reports/drift.html")
        self.send_header("X-Kloop-Run-Id", "r1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="session")
def monitor_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Monitor)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
