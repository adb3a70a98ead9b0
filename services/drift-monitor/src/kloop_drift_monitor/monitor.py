"""The drift monitor as the gRPC and HTTP front ends see it: the consumer thread, the
report schedule, status and reports."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Literal

import redis

from kloop.drift.v1 import drift_pb2 as pb
from kloop_core.errors import FailedPrecondition, InvalidArgument, KloopError, NotFound
from kloop_core.logging import get_logger
from kloop_core.redis import redis_ping
from kloop_drift_monitor.clients import MlflowReports, RegistryClient
from kloop_drift_monitor.consumer import Consumer
from kloop_drift_monitor.reference import Reference, ReferenceCache
from kloop_drift_monitor.reports import current_rows, reference_rows, render_report
from kloop_drift_monitor.retrain import RetrainRequester
from kloop_drift_monitor.settings import DriftMonitorSettings
from kloop_drift_monitor.status import version_status
from kloop_drift_monitor.store import StateStore
from kloop_drift_monitor.windows import VersionState

log = get_logger(__name__)

REPORT_FORMATS = ("html", "json")


class DriftMonitor:
    def __init__(
        self,
        settings: DriftMonitorSettings,
        *,
        redis_client: redis.Redis,
        consumer_client: redis.Redis,
        registry: RegistryClient,
        reports: MlflowReports,
        requester: RetrainRequester | None,
    ) -> None:
        self.settings = settings
        self.config = settings.monitor_config()
        self.redis = redis_client
        self.registry = registry
        self.reports = reports
        self.requester = requester
        self.references = ReferenceCache(registry, retry_seconds=settings.reference_retry_seconds)
        self.consumer = Consumer(settings, consumer_client, self.references, requester)
        # Status and reports read with their own client: the consumer's is busy blocking.
        self.store = StateStore(
            redis_client,
            prefix=settings.key_prefix,
            group=settings.consumer_group,
            dead_maxlen=settings.dead_letter_maxlen,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._spawn("kloop-drift-consumer", lambda: self.consumer.run(self._stop))
        if self.settings.report_interval_seconds is not None:
            self._spawn("kloop-drift-reports", self._report_schedule)

    def _spawn(self, name: str, target: object) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the threads (an uncommitted batch is redelivered later), close clients."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self.registry.close()
        if self.requester is not None:
            self.requester.close()
        self.consumer.client.close()
        self.redis.close()

    def ready(self) -> bool:
        return self.consumer.stats.connected and redis_ping(self.redis)

    # --- status ---------------------------------------------------------------------------

    def _reference(self, state: VersionState) -> tuple[Reference | None, str | None]:
        """What this replica knows, without fetching: status must not wait on the registry."""
        reference = self.references.loaded(state.model, state.version)
        problem = self.references.problem(state.model, state.version)
        return reference, problem or (None if reference else "not loaded by this replica yet")

    def status(self, model: str = "", version: str = "") -> pb.GetStatusResponse:
        if version and not model:
            raise InvalidArgument("a version needs its model")
        states = [
            s
            for s in self.store.load_all()
            if (not model or s.model == model) and (not version or s.version == version)
        ]
        if model and not states:
            raise NotFound(f"no events seen for {model}" + (f" v{version}" if version else ""))
        now = time.time()
        versions = []
        for state in states:
            reference, problem = self._reference(state)
            versions.append(
                version_status(
                    state,
                    self.config,
                    reference=reference,
                    problem=problem,
                    now=now,
                )
            )
        stats = self.consumer.stats
        return pb.GetStatusResponse(
            versions=versions,
            consumer=pb.ConsumerStatus(
                consumer_group=self.settings.consumer_group,
                consumer_name=self.settings.consumer_name,
                connected=stats.connected,
                predictions_processed=stats.predictions,
                feedback_processed=stats.feedback,
                dead_lettered=stats.dead_lettered,
                duplicates=stats.duplicates,
                lag=stats.lag,
                pending=stats.pending,
            ),
        )

    # --- reports --------------------------------------------------------------------------

    def report(
        self, model: str, version: str, fmt: str = "html", *, include_content: bool = False
    ) -> pb.Report:
        """Build the Evidently report of the version's last window, store it in MLflow."""
        fmt = fmt or "html"
        if fmt not in REPORT_FORMATS:
            raise InvalidArgument(f"format must be one of {', '.join(REPORT_FORMATS)}")
        if not model or not version:
            raise InvalidArgument("model and version are required")
        state = self.store.load((model, version))
        if state is None:
            raise NotFound(f"no events seen for {model} v{version}")
        sample = state.report_sample()
        if not sample:
            raise FailedPrecondition(f"no sampled events for {model} v{version} yet")
        try:
            texts = self.registry.holdout_texts(model, version)
            document = self.registry.model_document(model, version)
        except NotFound as e:
            raise FailedPrecondition(
                f"reports need the version's holdout.jsonl and model.json: {e.message}"
            ) from e
        reference = reference_rows(document, texts)
        current = current_rows(sample)
        output_format: Literal["html", "json"] = "json" if fmt == "json" else "html"
        content = render_report(reference, current, output_format)
        run_id = self.registry.run_id(model, version)
        created = datetime.now(UTC)
        filename = f"drift-v{version}-w{state.windows}-{created:%Y%m%dT%H%M%S%fZ}.{fmt}"
        artifact_path = self.reports.store(run_id, filename, content)
        log.info("report stored", model=model, version=version, run_id=run_id, path=artifact_path)
        message = pb.Report(
            model=model,
            version=version,
            format=fmt,
            run_id=run_id,
            artifact_path=artifact_path,
            artifact_uri=f"runs:/{run_id}/{artifact_path}",
            size_bytes=len(content),
            current_rows=len(current["score"]),
            reference_rows=len(reference["score"]),
            window_sequence=state.windows,
            content=content if include_content else b"",
        )
        message.created_at.FromDatetime(created)
        return message

    def _report_schedule(self) -> None:
        """Every report_interval_seconds, one replica (a Redis lock per round) reports
        on every version that has sampled events."""
        interval = self.settings.report_interval_seconds or 0.0
        lock = f"{self.settings.key_prefix}:report-round"
        while not self._stop.wait(interval):
            try:
                # 90% of the interval: the lock is free again before the next round.
                ttl_ms = int(interval * 900)
                if not self.redis.set(lock, self.settings.consumer_name, nx=True, px=ttl_ms):
                    continue
                states = self.store.load_all()
            except redis.RedisError as e:
                log.warning("scheduled report round skipped", error=repr(e))
                continue
            for state in states:
                if not state.report_sample():
                    continue
                try:
                    self.report(state.model, state.version, self.settings.report_format)
                except (KloopError, redis.RedisError) as e:
                    log.warning(
                        "scheduled report failed",
                        model=state.model,
                        version=state.version,
                        error=repr(e),
                    )
