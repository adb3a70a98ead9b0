"""LocalExecutor scheduling and shutdown; execute_run and recover_runs over the real
Redis and MLflow server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from mlflow import MlflowClient

from kloop_core.errors import Unavailable
from kloop_model.dataset import builtin_dataset, dataset_digest
from kloop_training.executors import LocalExecutor, execute_run, recover_runs
from kloop_training.pipeline import STAGE_PROGRESS, PipelineConfig, RunSpec
from kloop_training.runs import RunState, RunStore
from kloop_training.tracking import MlflowTracker

if TYPE_CHECKING:
    from conftest import RecordingRegistrar


class Probe:
    """A run function that records how many runs execute at once."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.done: list[str] = []
        self.saw_stop: list[str] = []

    def __call__(self, run_id: str, should_stop: Callable[[], bool]) -> None:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        deadline = time.monotonic() + self.seconds
        while time.monotonic() < deadline:
            if should_stop():
                self.saw_stop.append(run_id)
                break
            time.sleep(0.01)
        with self.lock:
            self.active -= 1
            self.done.append(run_id)


def _wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_runs_execute_off_the_caller_thread_bounded(builtin_spec: RunSpec) -> None:
    probe = Probe(0.15)
    executor = LocalExecutor(probe, max_workers=2)
    started = time.monotonic()
    for i in range(5):
        executor.submit(f"r{i}")
    assert time.monotonic() - started < 0.1  # submit returns at once
    _wait_for(lambda: len(probe.done) == 5)
    assert probe.peak == 2
    executor.shutdown()


def test_a_run_submitted_twice_executes_once() -> None:
    probe = Probe(0.2)
    executor = LocalExecutor(probe, max_workers=1)
    executor.submit("r")
    executor.submit("r")
    _wait_for(lambda: len(probe.done) == 1)
    time.sleep(0.1)
    assert probe.done == ["r"]
    executor.shutdown()


def test_shutdown_stops_running_runs_and_drops_queued_ones() -> None:
    probe = Probe(30)
    executor = LocalExecutor(probe, max_workers=1, drain_seconds=5)
    executor.submit("running")
    executor.submit("queued")
    _wait_for(lambda: probe.active == 1)
    started = time.monotonic()
    executor.shutdown(wait=True)
    assert time.monotonic() - started < 2
    assert probe.saw_stop == ["running"]
    assert probe.done == ["running"]
    executor.submit("late")  # ignored: stays QUEUED in the store for the next start
    time.sleep(0.1)
    assert probe.done == ["running"]


# --- execute_run --------------------------------------------------------------------------


def _submit(store: RunStore, spec: RunSpec) -> str:
    record, _ = store.create(spec, dataset_digest=dataset_digest(builtin_dataset()))
    return record.run_id


def test_execute_run_records_every_stage_to_success(
    store: RunStore,
    builtin_spec: RunSpec,
    tracker: MlflowTracker,
    pipeline_config: PipelineConfig,
    make_registrar: type[RecordingRegistrar],
) -> None:
    run_id = _submit(store, builtin_spec)
    execute_run(
        run_id,
        lambda: False,
        store=store,
        tracker=tracker,
        registrar=make_registrar(),
        config=pipeline_config,
    )
    record = store.get(run_id)
    assert record is not None
    assert record.state is RunState.SUCCEEDED
    assert (record.stage, record.progress, record.model_version) == ("done", 1.0, "7")
    assert record.attempts == 1 and record.error == ""
    assert record.started_at is not None and record.finished_at is not None
    assert record.metrics["accuracy"] > 0.5
    assert record.mlflow_run_id
    events = store.events(run_id)
    stages = [e.stage for e in events]
    assert stages[0] == "queued" and stages[-1] == "done"
    assert sorted(set(stages[1:-1]), key=stages.index) == list(STAGE_PROGRESS)
    progress = [e.progress for e in events]
    assert progress == sorted(progress)


def test_execute_run_records_a_failure_and_fails_the_mlflow_run(
    store: RunStore,
    builtin_spec: RunSpec,
    tracker: MlflowTracker,
    pipeline_config: PipelineConfig,
    make_registrar: type[RecordingRegistrar],
    mlflow_uri: str,
) -> None:
    run_id = _submit(store, builtin_spec)
    down = Unavailable("registry at 127.0.0.1:1 is unavailable: connection refused")
    execute_run(
        run_id,
        lambda: False,
        store=store,
        tracker=tracker,
        registrar=make_registrar(fail_with=down),
        config=pipeline_config,
    )
    record = store.get(run_id)
    assert record is not None
    assert record.state is RunState.FAILED
    assert record.stage == "register"
    assert record.error == f"register failed: {down}"
    assert store.events(run_id)[-1].message == record.error
    assert store.active_run_ids() == []
    assert MlflowClient(mlflow_uri).get_run(record.mlflow_run_id).info.status == "FAILED"


def test_an_interrupted_run_goes_back_to_the_queue(
    store: RunStore,
    builtin_spec: RunSpec,
    tracker: MlflowTracker,
    pipeline_config: PipelineConfig,
    make_registrar: type[RecordingRegistrar],
    mlflow_uri: str,
) -> None:
    run_id = _submit(store, builtin_spec)

    def stop_once_tracked() -> bool:
        record = store.get(run_id)
        return record is not None and bool(record.mlflow_run_id)

    execute_run(
        run_id,
        stop_once_tracked,
        store=store,
        tracker=tracker,
        registrar=make_registrar(),
        config=pipeline_config,
    )
    record = store.get(run_id)
    assert record is not None
    assert record.state is RunState.QUEUED
    assert "interrupted before register" in store.events(run_id)[-1].message
    assert store.active_run_ids() == [run_id]
    assert MlflowClient(mlflow_uri).get_run(record.mlflow_run_id).info.status == "KILLED"


def test_a_finished_run_is_not_executed_again(
    store: RunStore,
    builtin_spec: RunSpec,
    tracker: MlflowTracker,
    pipeline_config: PipelineConfig,
    make_registrar: type[RecordingRegistrar],
) -> None:
    run_id = _submit(store, builtin_spec)
    store.record(run_id, state=RunState.FAILED, stage="fit", progress=0.1, message="x")
    registrar = make_registrar()
    execute_run(
        run_id, lambda: False, store=store, tracker=tracker, registrar=registrar,
        config=pipeline_config,
    )  # fmt: skip
    assert len(store.events(run_id)) == 2
    assert registrar.requests == []


class RecordingExecutor:
    def __init__(self) -> None:
        self.submitted: list[str] = []

    def submit(self, run_id: str) -> None:
        self.submitted.append(run_id)

    def shutdown(self, wait: bool = True) -> None:
        pass


def test_recover_runs_requeues_what_a_dead_process_left(
    store: RunStore, builtin_spec: RunSpec, tracker: MlflowTracker, mlflow_uri: str
) -> None:
    queued = _submit(store, builtin_spec)
    running = _submit(store, builtin_spec)
    finished = _submit(store, builtin_spec)
    stale = tracker.start_run("kloop-test/recovery", "stale", {})
    store.record(
        running, state=RunState.RUNNING, stage="fit", progress=0.1, message="", mlflow_run_id=stale
    )
    store.record(finished, state=RunState.SUCCEEDED, stage="done", progress=1.0, message="")
    executor = RecordingExecutor()
    assert recover_runs(store, executor, tracker) == [queued, running]
    assert executor.submitted == [queued, running]
    record = store.get(running)
    assert record is not None and record.state is RunState.QUEUED
    assert "previous process stopped during fit" in store.events(running)[-1].message
    assert MlflowClient(mlflow_uri).get_run(stale).info.status == "KILLED"
