# Celery ships no type hints: its decorators would make every task "untyped".
# mypy: disable-error-code="untyped-decorator"
"""Celery tasks: thin edges that load state, call the plain logic, store the outcome and
send what comes next. Every task is idempotent: a redelivered message is harmless."""

from __future__ import annotations

import re
import time
from typing import Any

from celery import Task, shared_task
from celery.signals import task_postrun, task_prerun, task_retry

from kloop_core.errors import DeadlineExceeded, InvalidArgument, KloopError, is_transient_error
from kloop_core.logging import get_logger
from kloop_worker import metrics
from kloop_worker.celery_app import (
    DRIFT_REPORT,
    RETRAIN,
    RETRAIN_STEP,
    SCORE_CHUNK,
    SCORE_JOB,
    SWEEP,
)
from kloop_worker.clients import request_drift_report
from kloop_worker.datasets import InputError, read_texts
from kloop_worker.jobs import JobStatus, assemble, chunk_range, failed_chunk
from kloop_worker.pipelines import Pipeline, State
from kloop_worker.retrain import Finish, backoff, execute
from kloop_worker.runtime import Runtime, runtime

log = get_logger(__name__)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# --- batch scoring ------------------------------------------------------------------------


@shared_task(name=SCORE_JOB, bind=True)
def score_job(self: Task, job_id: str) -> None:
    """Plan a job (queued -> running, reading a dataset's texts) and send one task per
    chunk not done yet; sent again by the sweeper for a stalled job."""
    rt = runtime(self.app)
    s = rt.settings
    job = rt.jobs.get(job_id)
    if job is None:
        rt.jobs.forget(job_id)
        return
    if job.status is JobStatus.QUEUED:
        texts = None
        if job.source == "uri":
            try:
                texts = read_texts(
                    job.dataset_uri,
                    roots=s.job_dataset_roots,
                    max_bytes=s.job_max_dataset_bytes,
                    max_rows=s.job_max_rows,
                )
            except InputError as error:
                rt.jobs.fail(job_id, str(error))
                return
        rt.jobs.start(job_id, s.job_chunk_size, texts)
        job = rt.jobs.get(job_id)
    if job is None or job.status is not JobStatus.RUNNING:
        return
    missing = rt.jobs.missing_chunks(job)
    with self.app.producer_or_acquire() as producer:
        for index in missing:
            self.app.send_task(SCORE_CHUNK, args=(job_id, index), producer=producer)
    log.info("job planned", job_id=job_id, rows=job.total, chunks_sent=len(missing))


def _retryable(error: KloopError) -> bool:
    return is_transient_error(error) or isinstance(error, DeadlineExceeded)


@shared_task(name=SCORE_CHUNK, bind=True)
def score_chunk(self: Task, job_id: str, index: int) -> None:
    """Score one chunk in one ModelInfer request and write its rows exactly once."""
    rt = runtime(self.app)
    s = rt.settings
    job = rt.jobs.get(job_id)
    if job is None or job.status is not JobStatus.RUNNING:
        metrics.CHUNKS.labels("dropped").inc()
        return
    rows = chunk_range(index, job.total, job.chunk_size)
    texts = rt.jobs.texts(job_id, rows)
    if len(texts) != len(rows):  # the job finished meanwhile and its input is gone
        metrics.CHUNKS.labels("dropped").inc()
        return
    valid = [t for t in texts if t.strip() and len(t) <= s.job_max_text_chars]
    try:
        version, scores = (
            rt.env.inference.score(job.model, job.version, valid) if valid else ("", [])
        )
    except KloopError as error:
        if not _retryable(error):
            # The model is unknown or not a text scorer: no chunk can succeed.
            rt.jobs.fail(job_id, f"model {job.model!r} ({job.version or 'production'}): {error}")
            return
        if self.request.retries < s.job_chunk_retries:
            delay = backoff(
                self.request.retries, s.retry_backoff_seconds, s.retry_backoff_max_seconds, 0.5
            )
            raise self.retry(countdown=delay) from None
        result = failed_chunk(len(texts), f"inference unavailable: {error}")
    else:
        result = assemble(texts, s.job_max_text_chars, version, scores)
    outcome = rt.jobs.write_chunk(job_id, index, result)
    if outcome == "written":
        metrics.CHUNKS.labels("written").inc()
        metrics.JOB_ROWS.labels(job.model, "scored").inc(result.scored)
        metrics.JOB_ROWS.labels(job.model, "failed").inc(result.failed)
    else:
        metrics.CHUNKS.labels("duplicate" if outcome == "duplicate" else "dropped").inc()


# --- retraining ---------------------------------------------------------------------------


def _trigger(evidence: dict[str, Any]) -> str:
    explicit = evidence.get("trigger")
    if isinstance(explicit, str) and explicit:
        return explicit
    return "drift" if "trigger_id" in evidence else "manual"


@shared_task(name=RETRAIN, bind=True, ignore_result=False)
def retrain(self: Task, model: str, evidence: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start the model's retraining pipeline, or join the one already running: returns
    {"pipeline_id", "created"}. The pipeline id is this task's id, so a redelivered
    request is recognised."""
    if not isinstance(model, str) or not _MODEL_NAME.match(model):
        raise InvalidArgument(f"invalid model name {model!r}")
    rt = runtime(self.app)
    evidence = dict(evidence or {})
    pipeline_id = str(self.request.id)
    created = rt.pipelines.create(pipeline_id, model, trigger=_trigger(evidence), evidence=evidence)
    if created.pipeline_id == pipeline_id:
        # Also when not created: this very request ran before and may have died before
        # sending the first step (a duplicate step message is dropped by its seq).
        pipeline = rt.pipelines.get(pipeline_id)
        if pipeline is not None and pipeline.running:
            self.app.send_task(RETRAIN_STEP, args=(pipeline_id, pipeline.seq))
    log.info(
        "retrain requested", model=model, pipeline_id=created.pipeline_id, created=created.created
    )
    return {"pipeline_id": created.pipeline_id, "created": created.created}


def _finish(rt: Runtime, p: Pipeline, state: State, outcome: str, context: dict[str, Any]) -> int:
    seq = rt.pipelines.advance(
        p,
        due_at=time.time(),
        finished=True,
        changes={
            "state": state.value,
            "outcome": outcome,
            "finished_at": time.time(),
            "context": context,
            "attempts": 0,
            "retry_since": 0.0,
        },
    )
    if seq:
        rt.pipelines.audit(p, p.step, state.value, outcome)
        metrics.PIPELINES_FINISHED.labels(state.value).inc()
        log.info(
            "pipeline finished", pipeline_id=p.id, model=p.model, state=state.value, outcome=outcome
        )
    return seq


@shared_task(name=RETRAIN_STEP, bind=True)
def retrain_step(self: Task, pipeline_id: str, seq: int) -> None:
    """Run the pipeline's current step once, store what it found, schedule the next."""
    rt = runtime(self.app)
    p = rt.pipelines.get(pipeline_id)
    if p is None or not p.running or p.seq != seq:
        return  # stale or duplicate message: the pipeline moved on
    if rt.pipelines.running_for(p.model) != p.id:
        _finish(rt, p, State.FAILED, "abandoned: the model's pipeline lock expired", p.context)
        return
    outcome = execute(p, rt.env)
    result = outcome.result
    context = {**p.context, **result.context}
    if isinstance(result, Finish):
        metrics.PIPELINE_STEPS.labels(p.step, "finished").inc()
        _finish(rt, p, result.state, result.outcome, context)
        return
    kind = "retry" if outcome.attempts else "next"
    metrics.PIPELINE_STEPS.labels(p.step, kind).inc()
    new_seq = rt.pipelines.advance(
        p,
        due_at=time.time() + result.delay,
        finished=False,
        changes={
            "step": result.step,
            "context": context,
            "attempts": outcome.attempts,
            "retry_since": outcome.retry_since,
            "last_error": outcome.last_error,
        },
    )
    if new_seq:
        self.app.send_task(
            RETRAIN_STEP, args=(pipeline_id, new_seq), countdown=result.delay or None
        )


# --- maintenance --------------------------------------------------------------------------


@shared_task(name=DRIFT_REPORT, bind=True, ignore_result=False)
def drift_report(self: Task, model: str) -> dict[str, str]:
    """The nightly drift report of the model's production version (built and stored as
    an MLflow artifact by the drift monitor)."""
    rt = runtime(self.app)
    s = rt.settings
    production = rt.env.registry.resolve(model, "production")
    if production is None:
        log.info("no production version: no drift report", model=model)
        return {}
    try:
        stored = request_drift_report(
            s.drift_monitor_url,
            model,
            production.version,
            fmt=s.drift_report_format,
            timeout=s.drift_report_timeout_seconds,
        )
    except KloopError as error:
        if not _retryable(error) or self.request.retries >= 3:
            raise
        raise self.retry(countdown=s.retry_backoff_max_seconds) from None
    log.info("drift report stored", model=model, version=production.version, **stored)
    return {"model": model, "version": production.version, **stored}


@shared_task(name=SWEEP, bind=True)
def sweep(self: Task) -> None:
    """Re-send the work of stalled jobs and overdue pipelines (messages lost with a
    Redis restart, a gateway that died between saving a job and sending it)."""
    rt = runtime(self.app)
    older_than = time.time() - rt.settings.stall_seconds
    for job_id in rt.jobs.stalled(older_than):
        if rt.jobs.get(job_id) is None:
            rt.jobs.forget(job_id)
            continue
        rt.jobs.touch(job_id)
        self.app.send_task(SCORE_JOB, args=(job_id,))
        log.warning("re-sent a stalled job", job_id=job_id)
    for pipeline_id in rt.pipelines.overdue(older_than):
        p = rt.pipelines.get(pipeline_id)
        if p is None or not p.running:
            rt.pipelines.forget(pipeline_id)
            continue
        self.app.send_task(RETRAIN_STEP, args=(pipeline_id, p.seq))
        log.warning("re-sent an overdue pipeline step", pipeline_id=pipeline_id, step=p.step)


# --- task metrics -------------------------------------------------------------------------

_started: dict[str, float] = {}


@task_prerun.connect
def _task_started(task_id: str, **_: Any) -> None:
    _started[task_id] = time.perf_counter()


@task_postrun.connect
def _task_done(task_id: str, task: Task, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        metrics.TASK_DURATION.labels(task.name).observe(time.perf_counter() - started)
    if state != "RETRY":  # counted by _task_retried
        outcome = "success" if state == "SUCCESS" else "failure"
        metrics.TASKS.labels(task.name, outcome).inc()


@task_retry.connect
def _task_retried(sender: Task | None = None, **_: Any) -> None:
    if sender is not None:
        metrics.TASKS.labels(sender.name, "retry").inc()
