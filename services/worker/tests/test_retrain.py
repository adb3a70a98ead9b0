"""The retraining pipeline.

Plain functions and the step runner's retry/failure rules with a real Redis; then, slow,
the whole pipeline in a real worker process against the real training and registry
services over a real MLflow server and a real inference server: retrain -> canary ->
promote, the rollback path, and MLflow going down in the middle of a retrain.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import redis

from kloop.registry.v1 import registry_pb2 as reg
from kloop.registry.v1 import registry_pb2_grpc as reg_grpc
from kloop.training.v1 import training_pb2 as tr
from kloop.training.v1 import training_pb2_grpc as tr_grpc
from kloop_client.local import (
    ManagedProcess,
    free_port,
    http_ok,
    start_mlflow,
    start_process,
)
from kloop_core.errors import Unavailable
from kloop_core.grpc_server import RunningService, start_service
from kloop_registry.main import build_app as build_registry_app
from kloop_registry.settings import RegistrySettings
from kloop_training.grpc_server import create_app as create_training_app
from kloop_training.settings import TrainingSettings
from kloop_worker import retrain
from kloop_worker.pipelines import Pipeline, PipelineStore, State
from kloop_worker.retrain import (
    Finish,
    Next,
    PipelineEnv,
    PipelineError,
    backoff,
    execute,
    metric_failures,
    thresholds,
)
from kloop_worker.settings import WorkerSettings

from .conftest import TEST_SETTINGS, Monitor, RedisServer, Workers, wait_until

# --- plain functions ---------------------------------------------------------------------


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    assert backoff(0, 0.5, 5, roll=1.0) == 0.5
    assert backoff(0, 0.5, 5, roll=0.0) == 0.25
    assert backoff(3, 0.5, 5, roll=1.0) == 4.0
    assert backoff(10, 0.5, 5, roll=1.0) == 5.0


def test_score_ks_does_not_fail_a_canary_that_drift_asked_for_by_default() -> None:
    settings = WorkerSettings(redis_url="redis://127.0.0.1:1/0", max_score_ks=0.4)
    assert thresholds(settings, "manual").max_score_ks == 0.4
    assert thresholds(settings, "drift").max_score_ks == 1.0
    strict = settings.model_copy(update={"max_score_ks_after_drift": 0.6})
    assert thresholds(strict, "drift").max_score_ks == 0.6


def test_metric_failures() -> None:
    metrics = {"accuracy": 0.8, "log_loss": 0.4}
    assert metric_failures(metrics, {"accuracy": 0.7}, {"log_loss": 0.5}) == []
    assert metric_failures(metrics, {"accuracy": 0.9, "f1": 0.5}, {"log_loss": 0.3}) == [
        "accuracy 0.8000 < 0.9",
        "f1 nan < 0.5",
        "log_loss 0.4000 > 0.3",
    ]


def test_training_params_take_the_proto_types() -> None:
    assert retrain._params({"epochs": 50.0, "l2": 0.0}) == {"epochs": 50, "l2": 0.0}
    with pytest.raises(PipelineError, match="unknown training parameters"):
        retrain._params({"depth": 3})


# --- the step runner on a real Redis --------------------------------------------------------


@pytest.fixture
def store(redis_server: RedisServer, r: redis.Redis) -> PipelineStore:
    return PipelineStore(
        redis.Redis.from_url(redis_server.url),
        namespace="kloop:worker",
        lock_ttl_seconds=600,
        record_ttl_seconds=600,
        audit_maxlen=100,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_env(store: PipelineStore, clock: Clock, **services: Any) -> PipelineEnv:
    settings = WorkerSettings(step_retry_budget_seconds=60, retry_backoff_seconds=1)
    defaults: dict[str, Any] = {"registry": None, "training": None, "inference": None}
    return PipelineEnv(
        settings=settings,
        store=store,
        redis=None,  # type: ignore[arg-type]
        clock=clock,
        rng=lambda: 1.0,
        **{**defaults, **services},
    )


def pipeline(store: PipelineStore, step: str, **context: Any) -> Pipeline:
    pipeline_id = uuid.uuid4().hex
    store.create(pipeline_id, f"m-{pipeline_id[:6]}", trigger="manual", evidence={})
    p = store.get(pipeline_id)
    assert p is not None
    return Pipeline(**{**p.__dict__, "step": step, "context": context})


def test_transient_errors_are_retried_with_backoff_until_the_budget_is_spent(
    store: PipelineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(p: Pipeline, env: PipelineEnv) -> Next:
        raise Unavailable("registry is down")

    monkeypatch.setitem(retrain.STEPS, "gate", down)
    clock = Clock()
    env = make_env(store, clock)
    p = pipeline(store, "gate")
    first = execute(p, env)
    assert first.result == Next("gate", delay=1.0)
    assert (first.attempts, first.retry_since) == (1, 1000.0)
    assert "registry is down" in first.last_error
    clock.now += 30
    second = execute(Pipeline(**{**p.__dict__, "attempts": 1, "retry_since": 1000.0}), env)
    assert second.result == Next("gate", delay=2.0) and second.attempts == 2
    clock.now += 31  # the budget (60 s) is spent
    last = execute(Pipeline(**{**p.__dict__, "attempts": 2, "retry_since": 1000.0}), env)
    assert isinstance(last.result, Finish) and last.result.state is State.FAILED
    events = [e["event"] for e in store.history(p.model)]
    assert events == ["started", "retrying", "retrying", "step_failed"]


def test_a_failure_after_the_canary_was_set_rolls_it_back(
    store: PipelineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(p: Pipeline, env: PipelineEnv) -> Next:
        raise PipelineError("the canary alias no longer points at v2")

    monkeypatch.setitem(retrain.STEPS, "promote", broken)
    outcome = execute(pipeline(store, "promote", canary_set=1), make_env(store, Clock()))
    assert outcome.result == Next("rollback", {"failure": outcome.last_error})
    assert "no longer points" in outcome.last_error


def test_rollback_removes_only_its_own_canary(store: PipelineStore) -> None:
    deleted: list[str] = []
    registry = SimpleNamespace(
        resolve=lambda name, alias: reg.ModelVersion(version="3"),
        delete_alias=lambda name, alias, reason: deleted.append(reason),
    )
    env = make_env(store, Clock(), registry=registry)
    mine = retrain.rollback(pipeline(store, "rollback", version="3", failure="boom"), env)
    assert isinstance(mine, Finish) and mine.state is State.FAILED and len(deleted) == 1
    other = retrain.rollback(pipeline(store, "rollback", version="2", analysis_summary="x"), env)
    assert isinstance(other, Finish) and other.state is State.ROLLED_BACK and len(deleted) == 1


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (reg.ModelVersion(version="2", run_id="run-1"), "sha256 missing"),
        (reg.ModelVersion(version="2", sha256="ab" * 32, run_id="run-0"), "run run-0"),
    ],
)
def test_a_half_registered_version_is_never_aliased(
    store: PipelineStore, record: reg.ModelVersion, why: str
) -> None:
    registry = SimpleNamespace(get_version=lambda name, version: record)
    p = pipeline(store, "evaluate", version="2", mlflow_run_id="run-1", metrics={})
    with pytest.raises(PipelineError, match=f"not completely registered.*{why}"):
        retrain.evaluate(p, make_env(store, Clock(), registry=registry))


# --- end to end (slow) ------------------------------------------------------------------------


@dataclass
class Platform:
    """Registry and training in this process, over a real MLflow; a real worker."""

    mlflow_uri: str
    redis_url: str
    registry: RunningService
    training: RunningService
    channels: list[grpc.Channel]

    @property
    def registry_addr(self) -> str:
        return f"127.0.0.1:{self.registry.grpc_port}"

    @property
    def training_addr(self) -> str:
        return f"127.0.0.1:{self.training.grpc_port}"

    @property
    def registry_stub(self) -> reg_grpc.RegistryServiceStub:
        return reg_grpc.RegistryServiceStub(self.channels[0])

    @property
    def training_stub(self) -> tr_grpc.TrainingServiceStub:
        return tr_grpc.TrainingServiceStub(self.channels[1])

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        self.training.stop(grace=0)
        self.registry.stop(grace=0)

    def train_v1(self, model: str) -> str:
        """A version on the shipped dataset, made production by hand."""
        run = self.training_stub.SubmitRun(
            tr.SubmitRunRequest(model_name=model, dataset=tr.DatasetSpec(builtin=True)),
            timeout=30,
        )
        final = wait_until(
            lambda: (
                (got := self.training_stub.GetRun(tr.GetRunRequest(run_id=run.run_id)))
                and got.state in (tr.RUN_STATE_SUCCEEDED, tr.RUN_STATE_FAILED)
                and got
            ),
            timeout=180,
        )
        assert final.state == tr.RUN_STATE_SUCCEEDED, final.error
        self.registry_stub.SetAlias(
            reg.SetAliasRequest(name=model, alias="production", version=final.model_version),
            timeout=30,
        )
        return str(final.model_version)

    def aliases(self, model: str) -> dict[str, str]:
        found = self.registry_stub.ListModels(reg.ListModelsRequest(), timeout=30)
        return next(dict(m.aliases) for m in found.models if m.name == model)

    def history(self, model: str) -> list[reg.AuditEntry]:
        reply = self.registry_stub.GetHistory(reg.GetHistoryRequest(name=model), timeout=30)
        return list(reply.entries)


def start_platform(mlflow_uri: str, redis_url: str, state: Path) -> Platform:
    registry = start_service(
        build_registry_app(
            RegistrySettings(
                mlflow_tracking_uri=mlflow_uri,
                redis_url=redis_url,
                artifact_cache_dir=state / "registry-cache",
                watch_block_seconds=0.2,
                grpc_port=0,
                http_port=0,
                shutdown_grace_seconds=0.5,
                log_level="WARNING",
            )
        ),
        grpc_port=0,
        http_port=0,
    )
    training = start_service(
        create_training_app(
            TrainingSettings(
                mlflow_tracking_uri=mlflow_uri,
                redis_url=redis_url,
                registry_addr=f"127.0.0.1:{registry.grpc_port}",
                redis_namespace=f"kloop:test-training:{uuid.uuid4().hex[:8]}",
                parity_texts=1000,
                registry_attempts=2,
                grpc_port=0,
                http_port=0,
                shutdown_grace_seconds=0.5,
                log_level="WARNING",
            )
        ),
        grpc_port=0,
        http_port=0,
    )
    channels = [
        grpc.insecure_channel(f"127.0.0.1:{registry.grpc_port}"),
        grpc.insecure_channel(f"127.0.0.1:{training.grpc_port}"),
    ]
    return Platform(mlflow_uri, redis_url, registry, training, channels)


# Canary analysis in seconds rather than minutes.
PIPELINE_SETTINGS: dict[str, Any] = {
    "retrain_datasets": ["builtin", "shifted"],
    "canary_window_seconds": 3.0,
    "canary_min_events": 40,
    "canary_max_wait_seconds": 60.0,
    "probe_texts": 100,
    "step_retry_budget_seconds": 180.0,
    "rpc_timeout_seconds": 60.0,
}


@pytest.fixture(scope="module")
def models() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:6]
    return f"wk-promote-{tag}", f"wk-rollback-{tag}"


@pytest.fixture(scope="module")
def platform(
    mlflow_uri: str,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    models: tuple[str, str],
) -> Iterator[Platform]:
    running = start_platform(mlflow_uri, redis_server.url, tmp_path_factory.mktemp("platform"))
    for model in models:
        running.train_v1(model)
    yield running
    running.close()


@pytest.fixture(scope="module")
def following_inference(
    platform: Platform, models: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`kloop-inference` following the registry: it loads production and canary."""
    grpc_port, http_port = free_port(), free_port()
    state = tmp_path_factory.mktemp("following-inference")
    process: ManagedProcess = start_process(
        "inference",
        [sys.executable, "-m", "kloop_inference.main"],
        state_dir=state,
        env={
            "KLOOP_INFERENCE_REGISTRY_ADDR": platform.registry_addr,
            "KLOOP_INFERENCE_MODELS": json.dumps({m: ["production", "canary"] for m in models}),
            "KLOOP_INFERENCE_CACHE_DIR": str(state / "cache"),
            "KLOOP_INFERENCE_GRPC_PORT": str(grpc_port),
            "KLOOP_INFERENCE_HTTP_PORT": str(http_port),
            "KLOOP_INFERENCE_LOG_LEVEL": "WARNING",
        },
        ready=lambda: http_ok(f"http://127.0.0.1:{http_port}/v2/health/ready"),
        timeout=60,
    )
    yield f"127.0.0.1:{grpc_port}"
    process.stop()


@pytest.fixture
def pipeline_workers(
    platform: Platform, following_inference: str, redis_server: RedisServer, tmp_path: Path
) -> Iterator[Workers]:
    client = redis.Redis.from_url(redis_server.url)
    client.delete("kloop:prediction-events")
    client.close()
    factory = Workers(
        redis_server.url,
        tmp_path,
        {
            **TEST_SETTINGS,
            **PIPELINE_SETTINGS,
            "registry_addr": platform.registry_addr,
            "training_addr": platform.training_addr,
            "inference_addr": following_inference,
            "retrain_data_dir": str(tmp_path / "data"),
        },
    )
    yield factory
    factory.stop_all()


def read_pipeline(redis_url: str, pipeline_id: str) -> dict[str, str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return client.hgetall(f"kloop:worker:pipeline:{pipeline_id}")  # type: ignore[return-value]
    finally:
        client.close()


def wait_for_step(redis_url: str, pipeline_id: str, step: str, timeout: float = 240) -> None:
    def reached() -> bool:
        record = read_pipeline(redis_url, pipeline_id)
        assert record.get("state") in ("running", None), record
        return record.get("step") == step

    wait_until(reached, timeout=timeout, interval=0.2)


def wait_finished(redis_url: str, pipeline_id: str, timeout: float = 240) -> dict[str, str]:
    record: dict[str, str] = wait_until(
        lambda: (
            (rec := read_pipeline(redis_url, pipeline_id)).get("state") not in (None, "running")
            and rec
        ),
        timeout=timeout,
        interval=0.2,
    )
    return record


class Traffic:
    """Writes prediction events as the gateway does, for production and the canary,
    until stopped."""

    def __init__(
        self, redis_url: str, model: str, versions: dict[str, str], latency: dict[str, float]
    ) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._model, self._versions, self._latency = model, versions, latency
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            for _ in range(5):
                alias = "canary" if rng.random() < 0.3 else "production"
                self._client.xadd(
                    "kloop:prediction-events",
                    {
                        "schema": "1",
                        "id": uuid.uuid4().hex,
                        "model": self._model,
                        "version": self._versions[alias],
                        "alias": alias,
                        "score": repr(rng.uniform(0.05, 0.95)),
                        "latency_seconds": f"{self._latency[alias] * rng.uniform(0.8, 1.2):.6f}",
                    },
                )
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()


def run_retrain(
    platform: Platform,
    workers: Workers,
    model: str,
    canary_latency: float,
) -> tuple[str, dict[str, str]]:
    production = platform.aliases(model)["production"]
    evidence = {"trigger_id": uuid.uuid4().hex, "psi": 0.4}
    result = workers.control.send_task("kloop.retrain", args=[model, evidence], queue="training")
    pipeline_id = result.get(timeout=60)["pipeline_id"]
    wait_for_step(workers.redis_url, pipeline_id, "analyze")
    candidate = json.loads(read_pipeline(workers.redis_url, pipeline_id)["context"])["version"]
    assert platform.aliases(model) == {"production": production, "canary": candidate}
    traffic = Traffic(
        workers.redis_url,
        model,
        {"production": production, "canary": candidate},
        {"production": 0.002, "canary": canary_latency},
    )
    try:
        record = wait_finished(workers.redis_url, pipeline_id)
    finally:
        traffic.stop()
    return candidate, record


def worker_entries(entries: list[reg.AuditEntry]) -> list[tuple[str, str, str]]:
    return [(e.action, e.alias, e.version) for e in entries if e.actor == "kloop-worker"]


@pytest.mark.slow
def test_retrain_canary_promote(
    platform: Platform, pipeline_workers: Workers, models: tuple[str, str]
) -> None:
    model = models[0]
    pipeline_workers.start()
    v1 = platform.aliases(model)["production"]
    v2, record = run_retrain(platform, pipeline_workers, model, canary_latency=0.002)
    assert record["state"] == "succeeded", record["outcome"]
    assert platform.aliases(model) == {"production": v2}
    # The registry's audit trail (`kloop history`) has every decision, numbers included.
    entries = [e for e in platform.history(model) if e.actor == "kloop-worker"]
    assert worker_entries(entries) == [
        ("promotion_approved", "production", v2),  # the gate, a dry run
        ("alias_set", "canary", v2),
        ("alias_set", "production", v2),
        ("alias_deleted", "canary", ""),
    ]
    gate, canary_set, promoted, _ = entries
    assert gate.details["dry_run"] == "true" and gate.details["baseline_version"] == v1
    assert "trigger drift" in gate.reason and '"psi":0.4' in gate.reason
    assert "gate log_loss" in canary_set.reason
    assert "canary passed" in promoted.reason and "agreement" in promoted.reason
    context = json.loads(record["context"])
    assert context["analysis"]["canary_events"] >= 40
    # And the worker's own log says what happened, step by step.
    client = redis.Redis.from_url(pipeline_workers.redis_url, decode_responses=True)
    events = [e["event"] for _, e in client.xrange(f"kloop:worker:audit:{model}")]
    expected = ["started", "data_prepared", "trained", "gate_approved", "canary_started"]
    expected += ["canary_passed", "promoted", "succeeded"]
    assert [e for e in events if e in expected] == expected
    print(f"\ncanary analysis: {context['analysis_summary']}")


@pytest.mark.slow
def test_retrain_canary_rollback(
    platform: Platform, pipeline_workers: Workers, models: tuple[str, str]
) -> None:
    model = models[1]
    pipeline_workers.start()
    v1 = platform.aliases(model)["production"]
    v2, record = run_retrain(platform, pipeline_workers, model, canary_latency=0.05)
    assert record["state"] == "rolled_back", record
    assert platform.aliases(model) == {"production": v1}
    entries = [e for e in platform.history(model) if e.actor == "kloop-worker"]
    assert worker_entries(entries)[-1] == ("alias_deleted", "canary", "")
    assert entries[-1].previous_version == v2
    assert "rolled back" in entries[-1].reason and "p95 latency" in entries[-1].reason


@pytest.mark.slow
def test_mlflow_down_during_a_retrain(
    redis_server: RedisServer, tmp_path: Path, r: redis.Redis
) -> None:
    """MLflow stops before the pipeline trains: the train step retries with backoff
    (the training service reports itself not ready), MLflow comes back, the pipeline
    completes, and only the complete version of its successful run is aliased."""
    port = free_port()
    state = tmp_path / "mlflow"
    mlflow = start_mlflow(port, state)
    platform = start_platform(f"http://127.0.0.1:{port}", redis_server.url, tmp_path)
    workers = Workers(
        redis_server.url,
        tmp_path,
        {
            **TEST_SETTINGS,
            **PIPELINE_SETTINGS,
            "registry_addr": platform.registry_addr,
            "training_addr": platform.training_addr,
            "retrain_data_dir": str(tmp_path / "data"),
        },
    )
    try:
        workers.start()
        model = f"wk-mlflow-{uuid.uuid4().hex[:6]}"
        mlflow.stop()
        time.sleep(2)  # training's readiness (polled each second) notices
        result = workers.control.send_task("kloop.retrain", args=[model, {}], queue="training")
        pipeline_id = result.get(timeout=60)["pipeline_id"]

        def audit() -> list[dict[str, str]]:
            return [e for _, e in r.xrange(f"kloop:worker:audit:{model}")]

        wait_until(
            lambda: sum(e["event"] == "retrying" and e["step"] == "train" for e in audit()) >= 2,
            timeout=120,
        )
        assert read_pipeline(redis_server.url, pipeline_id)["state"] == "running"
        mlflow = start_mlflow(port, state)
        record = wait_finished(redis_server.url, pipeline_id)
        assert record["state"] == "succeeded", record["outcome"]
        context = json.loads(record["context"])
        production = platform.registry_stub.ResolveAlias(
            reg.ResolveAliasRequest(name=model, alias="production"), timeout=30
        )
        assert production.version == context["version"] and production.sha256
        assert production.run_id == context["mlflow_run_id"]
        versions = platform.registry_stub.ListVersions(
            reg.ListVersionsRequest(name=model), timeout=30
        ).versions
        assert [v.version for v in versions if v.aliases] == [production.version]
        print(f"\n{sum(e['event'] == 'retrying' for e in audit())} retries while MLflow was down")
    finally:
        workers.stop_all()
        platform.close()
        mlflow.stop()


@pytest.mark.slow
def test_nightly_drift_report_of_the_production_version(
    platform: Platform, redis_server: RedisServer, tmp_path: Path, monitor_url: str
) -> None:
    """The task beat sends nightly: resolve production in the registry, ask the drift
    monitor's report endpoint for it."""
    model = f"wk-report-{uuid.uuid4().hex[:6]}"
    version = platform.train_v1(model)
    workers = Workers(
        redis_server.url,
        tmp_path,
        {
            **TEST_SETTINGS,
            "registry_addr": platform.registry_addr,
            "drift_monitor_url": monitor_url,
        },
    )
    try:
        workers.start()
        stored = workers.control.send_task("kloop.drift_report", args=[model]).get(timeout=60)
        assert stored == {
            "model": model,
            "version": version,
            "artifact_uri": "runs:/r1/reports/drift.html",
            "run_id": "r1",
            "bytes": "19",
        }
        assert Monitor.seen[-1] == f"/v1/reports/{model}/{version}?format=html"
        no_production = workers.control.send_task("kloop.drift_report", args=["wk-none"])
        assert no_production.get(timeout=60) == {}
    finally:
        workers.stop_all()
