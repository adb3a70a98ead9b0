"""The retraining pipeline: prepare data -> train (the training service registers the
version) -> evaluate -> gate -> canary -> analyze -> promote or roll back.

Why one step per task invocation over a record in Redis (not a Celery chain):
- "exactly one pipeline per model" is one SET NX on a lock key, and a second request
  simply gets the running pipeline's id;
- the state is a record, not in-flight messages: a lost message is re-sent by the
  sweeper from the record, `kloop-worker history` and the demo read it, and a retry's
  backoff survives a worker restart;
- every invocation is short (one call or one poll), so a killed worker's task comes
  back after a visibility timeout of seconds without long tasks being handed out twice;
  waiting (for training, for the canary window) is a re-scheduled poll, not a sleep.

Each step is idempotent: training runs are submitted with an idempotency key derived
from the pipeline id and attempt, alias moves are re-checked before they are made, and
a step's outcome is stored only once (see pipelines.PipelineStore.advance).

Never half-registered: a version is aliased only after the registry shows it complete
(its sha256 recorded, from this pipeline's successful run); a failed attempt's
leftovers are never referenced.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from kloop.training.v1 import training_pb2 as tr
from kloop_core.errors import (
    DeadlineExceeded,
    KloopError,
    NotFound,
    Unavailable,
    is_transient_error,
)
from kloop_core.logging import get_logger
from kloop_model.dataset import DatasetError, builtin_dataset, load_dataset
from kloop_worker import canary
from kloop_worker.clients import RegistryClient, TrainingClient, read_stream
from kloop_worker.datasets import (
    InputError,
    combine,
    feedback_examples,
    jsonl_texts,
    probe_texts,
    shipped_or_file,
    write_dataset,
)
from kloop_worker.inference import InferenceClient
from kloop_worker.pipelines import Pipeline, PipelineStore, State
from kloop_worker.settings import WorkerSettings

log = get_logger(__name__)

CANARY, PRODUCTION = "canary", "production"
HOLDOUT_FILE = "holdout.jsonl"  # stored by training beside each version's model.onnx
MAX_REASON = 1000


class PipelineError(Exception):
    """A step cannot succeed (retrying would not help); the message says why."""


@dataclass(frozen=True)
class Next:
    """Run `step` after `delay` seconds (the same step again: a poll)."""

    step: str
    context: dict[str, Any] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Finish:
    state: State
    outcome: str
    context: dict[str, Any] = field(default_factory=dict)


Result = Next | Finish


@dataclass
class PipelineEnv:
    settings: WorkerSettings
    store: PipelineStore
    registry: RegistryClient
    training: TrainingClient
    inference: InferenceClient
    redis: redis.Redis
    clock: Callable[[], float] = time.time
    rng: Callable[[], float] = random.random


# --- plain functions --------------------------------------------------------------------


def backoff(attempt: int, base: float, cap: float, roll: float) -> float:
    """Exponential backoff with jitter: base x 2^attempt, capped, times 0.5..1."""
    return float(min(cap, base * 2.0**attempt) * (0.5 + roll / 2))


def metric_failures(
    metrics: Mapping[str, float], minimums: Mapping[str, float], maximums: Mapping[str, float]
) -> list[str]:
    """Why the holdout metrics are not good enough ([] when they are)."""
    failures = []
    for name, floor in sorted(minimums.items()):
        value = metrics.get(name, math.nan)
        if not value >= floor:  # NaN fails too
            failures.append(f"{name} {value:.4f} < {floor}")
    for name, ceiling in sorted(maximums.items()):
        value = metrics.get(name, math.nan)
        if not value <= ceiling:
            failures.append(f"{name} {value:.4f} > {ceiling}")
    return failures


def gate_numbers(decision: Any) -> dict[str, Any]:
    return {
        "approved": decision.approved,
        "metric": decision.metric,
        "candidate_value": decision.candidate_value,
        "baseline_value": decision.baseline_value,
        "margin": decision.margin,
        "baseline_version": decision.baseline_version,
        "holdout_digest": decision.holdout_digest,
        "holdout_size": decision.holdout_size,
        "explanation": decision.explanation,
    }


def thresholds(settings: WorkerSettings, trigger: str = "") -> canary.Thresholds:
    after_drift = trigger == "drift"
    max_score_ks = settings.max_score_ks_after_drift if after_drift else settings.max_score_ks
    return canary.Thresholds(
        min_events=settings.canary_min_events,
        max_error_rate_increase=settings.max_error_rate_increase,
        max_latency_ratio=settings.max_latency_ratio,
        latency_slack_seconds=settings.latency_slack_seconds,
        max_score_ks=max_score_ks,
        min_agreement=settings.min_agreement,
    )


def _label(p: Pipeline) -> str:
    return f"pipeline {p.id}"


# --- steps (I/O through env) -----------------------------------------------------------


def prepare_data(p: Pipeline, env: PipelineEnv) -> Result:
    s = env.settings
    datasets = [shipped_or_file(name) for name in s.retrain_datasets]
    predictions = [
        fields
        for _, fields in read_stream(
            env.redis, s.prediction_events_stream, limit=s.feedback_max_events, newest_first=True
        )
    ]
    feedback = (
        fields
        for _, fields in read_stream(
            env.redis, s.feedback_stream, limit=s.feedback_max_events, newest_first=True
        )
    )
    labeled = feedback_examples(
        predictions, feedback, model=p.model, positive_label=s.positive_label
    )
    if s.retrain_datasets == ["builtin"] and not labeled:
        uri, rows = "", len(datasets[0])  # the training service has it built in
    else:
        data = combine(datasets, labeled, name=f"{p.model}-retrain")
        uri, rows = str(write_dataset(data, s.retrain_data_dir, p.model)), len(data)
    details = {
        "datasets": s.retrain_datasets,
        "feedback_rows": len(labeled),
        "rows": rows,
        "dataset_uri": uri or "builtin",
    }
    env.store.audit(
        p,
        "prepare_data",
        "data_prepared",
        f"{rows} labeled rows ({len(labeled)} from feedback)",
        details,
    )
    return Next("train", {"dataset_uri": uri, "rows": rows, "feedback_rows": len(labeled)})


def _params(values: Mapping[str, float]) -> dict[str, float | int]:
    """TrainingParams fields as the proto types them (epochs is an int, ...)."""
    fields = tr.TrainingParams.DESCRIPTOR.fields_by_name
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise PipelineError(f"unknown training parameters {unknown}")
    return {
        name: int(v) if fields[name].cpp_type != fields[name].CPPTYPE_DOUBLE else float(v)
        for name, v in values.items()
    }


def train(p: Pipeline, env: PipelineEnv) -> Result:
    s, ctx = env.settings, p.context
    attempt = int(ctx.get("train_attempt", 1))
    run_id = ctx.get("run_id", "")
    poll = s.training_poll_seconds
    if not run_id:
        run = env.training.submit(
            p.model,
            dataset_uri=ctx.get("dataset_uri", ""),
            params=_params(s.training_params),
            tags={"worker.pipeline_id": p.id, "worker.trigger": p.trigger},
            idempotency_key=f"kloop-worker:{p.id}:train:{attempt}",
        )
        env.store.audit(p, "train", "training_submitted", f"run {run.run_id} (attempt {attempt})")
        return Next(
            "train",
            {"run_id": run.run_id, "train_attempt": attempt, "train_started_at": env.clock()},
            delay=poll,
        )
    run = env.training.get_run(run_id)
    if run.state in (tr.RUN_STATE_QUEUED, tr.RUN_STATE_RUNNING):
        if env.clock() - float(ctx.get("train_started_at", 0)) > s.training_timeout_seconds:
            raise PipelineError(
                f"training run {run_id} did not finish within {s.training_timeout_seconds:g} s"
            )
        return Next("train", delay=poll)
    if run.state == tr.RUN_STATE_FAILED:
        if not env.training.serving():
            # A dependency of training (MLflow, Redis) is down: an outage, retried with
            # backoff within the step's budget, not a failed attempt.
            raise Unavailable(f"run {run_id} failed while training is not ready: {run.error}")
        env.store.audit(
            p, "train", "training_failed", f"run {run_id} failed: {run.error}", {"attempt": attempt}
        )
        if attempt >= s.training_attempts:
            raise PipelineError(f"training failed {attempt} times; last: {run.error}")
        delay = backoff(attempt, s.retry_backoff_seconds, s.retry_backoff_max_seconds, env.rng())
        return Next("train", {"run_id": "", "train_attempt": attempt + 1}, delay=delay)
    if not run.model_version:
        raise PipelineError(f"run {run_id} succeeded without a registered version")
    metrics = dict(run.metrics)
    env.store.audit(p, "train", "trained", f"run {run_id} registered v{run.model_version}", metrics)
    return Next(
        "evaluate",
        {"version": run.model_version, "mlflow_run_id": run.mlflow_run_id, "metrics": metrics},
    )


def evaluate(p: Pipeline, env: PipelineEnv) -> Result:
    s, ctx = env.settings, p.context
    version = ctx["version"]
    record = env.registry.get_version(p.model, version)
    # Registration is complete only when the registry recorded the artifact's digest
    # for this very run; anything less is never aliased.
    if not record.sha256 or record.run_id != ctx["mlflow_run_id"]:
        raise PipelineError(
            f"v{version} is not completely registered (sha256 {record.sha256 or 'missing'}, "
            f"run {record.run_id or 'missing'}): it will not be aliased"
        )
    failures = metric_failures(ctx["metrics"], s.min_metrics, s.max_metrics)
    if failures:
        message = f"v{version} rejected by evaluation: {'; '.join(failures)}"
        env.store.audit(p, "evaluate", "evaluation_failed", message, ctx["metrics"])
        return Finish(State.REJECTED, message)
    env.store.audit(p, "evaluate", "evaluated", f"v{version} meets the metric floors")
    return Next("gate")


def gate(p: Pipeline, env: PipelineEnv) -> Result:
    version = p.context["version"]
    # The registry's trail records why this retrain happened (the drift evidence, cut
    # short; the worker's own audit log has all of it).
    evidence = json.dumps(p.evidence, sort_keys=True, separators=(",", ":"))
    reason = f"{_label(p)}: gate before canary (dry run); trigger {p.trigger} {evidence}"
    decision = env.registry.promote(
        p.model, version, target=PRODUCTION, reason=reason[:MAX_REASON], dry_run=True
    )
    numbers = gate_numbers(decision)
    event = "gate_approved" if decision.approved else "gate_rejected"
    env.store.audit(p, "gate", event, decision.explanation, numbers)
    if not decision.approved:
        return Finish(State.REJECTED, f"gate rejected v{version}: {decision.explanation}")
    return Next("canary", {"gate": numbers, "baseline_version": decision.baseline_version})


def start_canary(p: Pipeline, env: PipelineEnv) -> Result:
    s, ctx = env.settings, p.context
    version, baseline = ctx["version"], ctx["baseline_version"]
    g = ctx["gate"]
    gate_text = f"gate {g['metric']} {g['candidate_value']:.4f}"
    if not baseline:
        reason = f"{_label(p)}: first version, nothing to compare a canary with; {gate_text}"
        env.registry.set_alias(p.model, PRODUCTION, version, reason)
        env.store.audit(p, "canary", "promoted", reason)
        return Finish(State.SUCCEEDED, f"v{version} is production (first version)")
    current = env.registry.resolve(p.model, PRODUCTION)
    if current is None or current.version != baseline:
        # Production moved since the gate: judge the candidate against the new one.
        env.store.audit(p, "canary", "regate", "production moved since the gate")
        return Next("gate")
    reason = (
        f"{_label(p)}: canary v{version} vs production v{baseline}; "
        f"{gate_text} vs {g['baseline_value']:.4f} (margin {g['margin']})"
    )
    env.registry.set_alias(p.model, CANARY, version, reason)
    now = env.clock()
    env.store.audit(p, "canary", "canary_started", reason)
    return Next(
        "analyze",
        # Stream ids are <ms>-<seq>: events from the canary's start on.
        {"canary_started_at": now, "canary_start_id": f"{int(now * 1000)}-0", "canary_set": 1},
        delay=min(s.canary_window_seconds, s.canary_poll_seconds),
    )


def _probe(p: Pipeline, env: PipelineEnv) -> tuple[list[str], str]:
    """Texts to compare the two versions on, and where they come from: production's
    holdout, where production is known to do well (the candidate should keep that), else
    the candidate's training data. Not the canary's live traffic: after a drift the
    candidate is *meant* to answer differently there."""
    ctx, count = p.context, env.settings.probe_texts
    raw = env.registry.download(p.model, ctx["baseline_version"], HOLDOUT_FILE)
    if raw:
        try:
            texts = jsonl_texts(raw.decode("utf-8"), HOLDOUT_FILE)
        except (InputError, UnicodeDecodeError):
            texts = []
        if texts:
            return texts[:count], f"production v{ctx['baseline_version']} holdout"
    uri = ctx.get("dataset_uri", "")
    dataset = load_dataset(uri) if uri else builtin_dataset()
    return probe_texts(dataset, count), "training data"


def _agreement(p: Pipeline, env: PipelineEnv, texts: list[str]) -> float | None:
    """Share of `texts` both versions label alike; None when inference does not serve
    both versions (yet)."""
    ctx = p.context
    try:
        answered_c, canary_scores = env.inference.score(p.model, ctx["version"], texts)
        answered_p, production_scores = env.inference.score(p.model, ctx["baseline_version"], texts)
    except NotFound:
        return None
    except KloopError as error:
        if is_transient_error(error) or isinstance(error, DeadlineExceeded):
            return None
        raise
    if (answered_c, answered_p) != (ctx["version"], ctx["baseline_version"]):
        return None
    return canary.agreement(canary_scores, production_scores, env.settings.threshold)


def analyze(p: Pipeline, env: PipelineEnv) -> Result:
    s, ctx = env.settings, p.context
    elapsed = env.clock() - float(ctx["canary_started_at"])
    poll = s.canary_poll_seconds
    if elapsed < s.canary_window_seconds:
        return Next("analyze", delay=min(poll, s.canary_window_seconds - elapsed))
    samples = (
        canary.parse_event(fields, p.model)
        for _, fields in read_stream(
            env.redis,
            s.prediction_events_stream,
            after=ctx["canary_start_id"],
            limit=s.canary_max_events,
        )
    )
    canary_stats, production_stats = canary.split_samples(
        (sample for sample in samples if sample is not None),
        canary_version=ctx["version"],
        production_version=ctx["baseline_version"],
    )
    can_wait = elapsed < s.canary_max_wait_seconds
    if min(canary_stats.events, production_stats.events) < s.canary_min_events and can_wait:
        return Next("analyze", delay=poll)
    texts, source = _probe(p, env)
    agreement_rate = _agreement(p, env, texts)
    if agreement_rate is None and can_wait:
        return Next("analyze", delay=poll)
    verdict = canary.decide(
        canary_stats,
        production_stats,
        agreement_rate,
        thresholds(s, p.trigger),
        require_traffic=s.on_insufficient_traffic == "rollback",
    )
    summary = verdict.summary()
    event = "canary_passed" if verdict.passed else "canary_failed"
    details = {**verdict.numbers, "probe": f"{len(texts)} texts from {source}"}
    env.store.audit(p, "analyze", event, summary, details)
    return Next(
        "promote" if verdict.passed else "rollback",
        {"analysis": verdict.numbers, "analysis_summary": summary},
    )


def promote(p: Pipeline, env: PipelineEnv) -> Result:
    ctx = p.context
    version = ctx["version"]
    summary = ctx["analysis_summary"]
    current_canary = env.registry.resolve(p.model, CANARY)
    current_production = env.registry.resolve(p.model, PRODUCTION)
    ours = current_canary is not None and current_canary.version == version
    already = current_production is not None and current_production.version == version
    if not (ours or already):
        raise PipelineError(f"the canary alias no longer points at v{version}: not promoting")
    reason = f"{_label(p)}: promoted after the canary window; {summary}"
    env.registry.set_alias(p.model, PRODUCTION, version, reason)
    env.registry.delete_alias(p.model, CANARY, f"{_label(p)}: v{version} promoted to production")
    env.store.audit(p, "promote", "promoted", reason, ctx.get("analysis", {}))
    return Finish(State.SUCCEEDED, f"v{version} promoted to production; {summary}")


def rollback(p: Pipeline, env: PipelineEnv) -> Result:
    ctx = p.context
    version = ctx["version"]
    failure = ctx.get("failure", "")
    why = failure or ctx.get("analysis_summary", "")
    current = env.registry.resolve(p.model, CANARY)
    if current is not None and current.version == version:
        env.registry.delete_alias(p.model, CANARY, f"{_label(p)}: rolled back v{version}; {why}")
    env.store.audit(p, "rollback", "rolled_back", f"v{version} removed from canary; {why}")
    if failure:
        return Finish(State.FAILED, f"failed, canary v{version} removed: {failure}")
    return Finish(State.ROLLED_BACK, f"v{version} rolled back; {why}")


STEPS: dict[str, Callable[[Pipeline, PipelineEnv], Result]] = {
    "prepare_data": prepare_data,
    "train": train,
    "evaluate": evaluate,
    "gate": gate,
    "canary": start_canary,
    "analyze": analyze,
    "promote": promote,
    "rollback": rollback,
}


# --- the step runner ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    result: Result
    # Retry bookkeeping to store with the result.
    attempts: int
    retry_since: float
    last_error: str


def _retryable(error: BaseException) -> bool:
    return is_transient_error(error) or isinstance(error, DeadlineExceeded)


def execute(p: Pipeline, env: PipelineEnv) -> Outcome:
    """Run the pipeline's current step and decide what comes next, including retries
    (transient errors, with backoff, for `step_retry_budget_seconds`) and failures
    (a canary this pipeline set is rolled back first)."""
    s = env.settings
    try:
        return Outcome(STEPS[p.step](p, env), 0, 0.0, "")
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        now = env.clock()
        since = p.retry_since or now
        if _retryable(error) and now - since < s.step_retry_budget_seconds:
            delay = backoff(
                p.attempts, s.retry_backoff_seconds, s.retry_backoff_max_seconds, env.rng()
            )
            log.warning(
                "pipeline step failed; retrying",
                pipeline_id=p.id,
                step=p.step,
                attempt=p.attempts + 1,
                delay_seconds=round(delay, 2),
                error=message,
            )
            env.store.audit(
                p, p.step, "retrying", message, {"attempt": p.attempts + 1, "delay": delay}
            )
            return Outcome(Next(p.step, delay=delay), p.attempts + 1, since, message)
        if not isinstance(error, PipelineError | KloopError | DatasetError | ValueError):
            log.exception("pipeline step crashed", pipeline_id=p.id, step=p.step)
        env.store.audit(p, p.step, "step_failed", message)
        if p.context.get("canary_set") and p.step != "rollback":
            return Outcome(Next("rollback", {"failure": message}), 0, 0.0, message)
        return Outcome(Finish(State.FAILED, f"{p.step} failed: {message}"), 0, 0.0, message)
