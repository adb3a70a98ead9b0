"""Where runs execute: the `RunExecutor` interface, the in-process `LocalExecutor`, and
`execute_run`, the one entry point any executor runs for a run id (a Kubernetes Job
executor would call it in the Job's pod).

Single-replica assumption of the local executor: at start-up `recover_runs` re-queues
every run the store still lists as QUEUED or RUNNING, on the grounds that the process
that owned them is gone. With two replicas sharing one Redis, a starting replica would
also take over runs another live replica is executing; run one replica per Redis
namespace with this executor (the Job executor hands ownership to Kubernetes instead).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any, Protocol

from kloop_core.errors import KloopError
from kloop_core.logging import get_logger
from kloop_training.pipeline import (
    STAGE_PROGRESS,
    PipelineConfig,
    Registrar,
    RunInterrupted,
    StepError,
    Tracker,
    run_pipeline,
)
from kloop_training.runs import RunState, RunStore

log = get_logger(__name__)

# (run id, should_stop) -> None; never raises for a failing run (it records FAILED).
RunFunction = Callable[[str, Callable[[], bool]], None]


class RunExecutor(Protocol):
    def submit(self, run_id: str) -> None:
        """Start the run soon, off the caller's thread; returns at once."""
        ...

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking runs; running ones stop at their next step and go back to QUEUED."""
        ...


class LocalExecutor:
    """Runs in a bounded thread pool of this process (`max_workers` at a time; the rest
    wait in the pool's queue, and stay QUEUED in the store)."""

    def __init__(self, run: RunFunction, *, max_workers: int, drain_seconds: float = 10.0):
        self._run = run
        self._drain_seconds = drain_seconds
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="kloop-run")
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pending: dict[str, Future[None]] = {}

    def submit(self, run_id: str) -> None:
        with self._lock:
            if self._stopping.is_set():
                # Left QUEUED in the store: the next start of the service picks it up.
                log.info("executor stopping; run left queued", run_id=run_id)
                return
            if run_id in self._pending:
                return  # already queued or running here
            future = self._pool.submit(self._execute, run_id)
            self._pending[run_id] = future
        future.add_done_callback(lambda _f: self._forget(run_id))

    def _forget(self, run_id: str) -> None:
        with self._lock:
            self._pending.pop(run_id, None)

    def _execute(self, run_id: str) -> None:
        try:
            self._run(run_id, self._stopping.is_set)
        except Exception:
            # The store could not be written (Redis down): the run stays as last
            # recorded and is resumed by `recover_runs` at the next start.
            log.exception("run execution failed outside the pipeline", run_id=run_id)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            self._stopping.set()
            futures = list(self._pending.values())
        # Queued runs are dropped here (still QUEUED in the store); running ones notice
        # `_stopping` at their next step and record themselves QUEUED again.
        self._pool.shutdown(wait=False, cancel_futures=True)
        # A future cancelled in the queue never counts as done for `wait`: skip those.
        running = [f for f in futures if not f.cancelled()]
        if wait:
            _done, not_done = wait_for(running, timeout=self._drain_seconds)
            if not_done:
                log.warning("runs still executing at shutdown", count=len(not_done))


def execute_run(
    run_id: str,
    should_stop: Callable[[], bool],
    *,
    store: RunStore,
    tracker: Tracker,
    registrar: Registrar,
    config: PipelineConfig,
) -> None:
    """Run one stored run to SUCCEEDED or FAILED (or back to QUEUED if interrupted),
    recording every stage in the store."""
    record = store.get(run_id)
    if record is None or record.state.terminal:
        return
    attempt = record.attempts + 1
    stage = "dataset"
    store.record(
        run_id,
        state=RunState.RUNNING,
        stage=stage,
        progress=0.0,
        message=f"started (attempt {attempt})",
        started_at=time.time(),
        attempts=attempt,
        mlflow_run_id="",
        error="",
    )

    def report(at: str, message: str, *, mlflow_run_id: str = "") -> None:
        nonlocal stage
        stage = at
        changes: dict[str, Any] = {"mlflow_run_id": mlflow_run_id} if mlflow_run_id else {}
        store.record(
            run_id,
            state=RunState.RUNNING,
            stage=stage,
            progress=STAGE_PROGRESS[stage],
            message=message,
            **changes,
        )

    try:
        result = run_pipeline(
            run_id,
            record.spec,
            expected_digest=record.dataset_digest,
            config=config,
            tracker=tracker,
            registrar=registrar,
            report=report,
            should_stop=should_stop,
        )
    except RunInterrupted as e:
        log.info("run interrupted", run_id=run_id, stage=stage)
        store.record(
            run_id,
            state=RunState.QUEUED,
            stage="queued",
            progress=0.0,
            message=f"{e}: the service is shutting down; the run restarts with it",
        )
        return
    except Exception as e:
        error = f"{stage} failed: {e}" if str(e) else f"{stage} failed: {type(e).__name__}"
        # Expected failures (bad data, a dependency down) need no traceback; bugs do.
        expected = isinstance(e, KloopError | StepError)
        log.warning("run failed", run_id=run_id, stage=stage, error=error, exc_info=not expected)
        store.record(
            run_id,
            state=RunState.FAILED,
            stage=stage,
            progress=STAGE_PROGRESS.get(stage, 0.0),
            message=error,
            error=error,
            finished_at=time.time(),
        )
        return
    store.record(
        run_id,
        state=RunState.SUCCEEDED,
        stage="done",
        progress=1.0,
        message=f"registered {record.spec.model_name} version {result.model_version}",
        finished_at=time.time(),
        mlflow_run_id=result.mlflow_run_id,
        model_version=result.model_version,
        dataset_digest=result.dataset_digest,
        metrics=result.metrics,
    )
    log.info("run succeeded", run_id=run_id, model_version=result.model_version)


def recover_runs(store: RunStore, executor: RunExecutor, tracker: Tracker) -> list[str]:
    """Re-queue the runs a previous process left QUEUED or RUNNING (see the module
    docstring for why this assumes a single replica); returns their ids."""
    recovered = []
    for run_id in store.active_run_ids():
        record = store.get(run_id)
        if record is None or record.state.terminal:
            continue
        if record.state is RunState.RUNNING:
            if record.mlflow_run_id:
                try:
                    tracker.end_run(record.mlflow_run_id, "KILLED")
                except Exception as e:  # MLflow down: the new attempt matters more
                    log.warning("could not end a stale MLflow run", error=str(e))
            store.record(
                run_id,
                state=RunState.QUEUED,
                stage="queued",
                progress=0.0,
                message=f"re-queued: the previous process stopped during {record.stage}",
            )
        executor.submit(run_id)
        recovered.append(run_id)
    if recovered:
        log.info("re-queued unfinished runs", count=len(recovered))
    return recovered
