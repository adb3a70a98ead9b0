"""gRPC edge: kloop.training.v1 messages to and from the domain, and the app wiring.

Handlers raise kloop errors; kloop_core's interceptor maps them to status codes.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator

import grpc
import redis
from google.protobuf.timestamp_pb2 import Timestamp

from kloop.training.v1 import training_pb2 as pb
from kloop.training.v1 import training_pb2_grpc
from kloop_core.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from kloop_core.grpc_server import GrpcApp
from kloop_core.logging import get_logger
from kloop_core.redis import create_redis, redis_ping
from kloop_model.dataset import dataset_digest
from kloop_training.clients import RegistryClient
from kloop_training.executors import LocalExecutor, RunExecutor, execute_run, recover_runs
from kloop_training.pipeline import (
    DatasetRef,
    PipelineConfig,
    RunParams,
    RunSpec,
    check_model_name,
    check_tags,
    load_run_dataset,
    resolve_params,
    split_dataset,
)
from kloop_training.runs import (
    InvalidPageToken,
    RunEventRecord,
    RunRecord,
    RunState,
    RunStore,
)
from kloop_training.settings import TrainingSettings
from kloop_training.tracking import MlflowTracker, configure_mlflow_client

log = get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TrainingService"].full_name
MAX_IDEMPOTENCY_KEY_CHARS = 256
MAX_PAGE_SIZE = 1000
_PARAM_FIELDS = ("seed", "test_fraction", "learning_rate", "epochs", "l2", "max_vocab", "min_count")
_STATE_TO_PB = {
    RunState.QUEUED: pb.RUN_STATE_QUEUED,
    RunState.RUNNING: pb.RUN_STATE_RUNNING,
    RunState.SUCCEEDED: pb.RUN_STATE_SUCCEEDED,
    RunState.FAILED: pb.RUN_STATE_FAILED,
}


# --- messages ---------------------------------------------------------------------------


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def spec_from_request(request: pb.SubmitRunRequest, defaults: RunParams) -> RunSpec:
    """Validated RunSpec; InvalidArgument names the offending field."""
    given = {name: getattr(request.params, name) for name in _PARAM_FIELDS}
    present = {name: v for name, v in given.items() if request.params.HasField(name)}
    source = request.dataset.WhichOneof("source")
    if source == "uri":
        if not request.dataset.uri.strip():
            raise InvalidArgument("dataset.uri is empty")
        ref = DatasetRef(uri=request.dataset.uri, format=request.dataset.format)
    elif source == "builtin" and not request.dataset.builtin:
        raise InvalidArgument("dataset.builtin is false: set it to true or give dataset.uri")
    else:
        ref = DatasetRef()  # no source given: the built-in dataset, as the proto says
    return RunSpec(
        model_name=check_model_name(request.model_name),
        dataset=ref,
        params=resolve_params(present, defaults),
        tags=check_tags(dict(request.tags)),
    )


def run_to_proto(r: RunRecord) -> pb.Run:
    spec = r.spec
    dataset = (
        pb.DatasetSpec(builtin=True)
        if spec.dataset.builtin
        else pb.DatasetSpec(uri=spec.dataset.uri, format=spec.dataset.format)
    )
    return pb.Run(
        run_id=r.run_id,
        model_name=spec.model_name,
        state=_STATE_TO_PB[r.state],
        stage=r.stage,
        progress=r.progress,
        created_at=_timestamp(r.created_at),
        started_at=_timestamp(r.started_at),
        finished_at=_timestamp(r.finished_at),
        mlflow_run_id=r.mlflow_run_id,
        model_version=r.model_version,
        dataset_digest=r.dataset_digest,
        metrics=dict(r.metrics),
        error=r.error,
        params=pb.TrainingParams(**spec.params.as_dict()),
        tags=dict(spec.tags),
        dataset=dataset,
    )


def event_to_proto(e: RunEventRecord, run: pb.Run | None = None) -> pb.RunEvent:
    return pb.RunEvent(
        run_id=e.run_id,
        state=_STATE_TO_PB[e.state],
        stage=e.stage,
        progress=e.progress,
        message=e.message,
        time=_timestamp(e.time),
        run=run,
    )


# --- servicer ---------------------------------------------------------------------------


class TrainingServicer(training_pb2_grpc.TrainingServiceServicer):
    def __init__(self, store: RunStore, executor: RunExecutor, settings: TrainingSettings) -> None:
        self._store = store
        self._executor = executor
        self._settings = settings
        self._defaults = RunParams(
            seed=settings.default_seed,
            test_fraction=settings.default_test_fraction,
            learning_rate=settings.default_learning_rate,
            epochs=settings.default_epochs,
            l2=settings.default_l2,
            max_vocab=settings.default_max_vocab,
            min_count=settings.default_min_count,
        )

    def SubmitRun(self, request: pb.SubmitRunRequest, context: grpc.ServicerContext) -> pb.Run:
        spec = spec_from_request(request, self._defaults)
        key = request.idempotency_key
        if len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidArgument(
                f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_CHARS} characters"
            )
        fingerprint = spec.fingerprint()
        if key and (existing := self._store.find_by_idempotency_key(key)) is not None:
            return run_to_proto(_same_request(existing, fingerprint))
        if self._store.active_count() >= self._settings.max_queued_runs:
            raise ResourceExhausted(
                f"{self._settings.max_queued_runs} runs are already queued or running; retry later",
                retry_after=30.0,
            )
        # Load and check the data now: bad input is the caller's error, not a failed run.
        dataset = load_run_dataset(
            spec.dataset,
            roots=self._settings.dataset_roots,
            max_bytes=self._settings.max_dataset_bytes,
        )
        split_dataset(dataset, spec.params)
        record, created = self._store.create(
            spec,
            dataset_digest=dataset_digest(dataset),
            idempotency_key=key,
            fingerprint=fingerprint,
        )
        if not created:  # a concurrent call with the same key won
            return run_to_proto(_same_request(record, fingerprint))
        self._executor.submit(record.run_id)
        log.info("run submitted", run_id=record.run_id, model=spec.model_name)
        return run_to_proto(record)

    def GetRun(self, request: pb.GetRunRequest, context: grpc.ServicerContext) -> pb.Run:
        return run_to_proto(self._get(request.run_id))

    def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListRunsResponse:
        if request.model_name:
            check_model_name(request.model_name)
        if request.page_size < 0:
            raise InvalidArgument(f"page_size must be >= 0, got {request.page_size}")
        page_size = min(request.page_size or self._settings.list_page_size, MAX_PAGE_SIZE)
        try:
            records, token = self._store.list_runs(
                model_name=request.model_name, page_size=page_size, page_token=request.page_token
            )
        except InvalidPageToken as e:
            raise InvalidArgument(str(e)) from e
        return pb.ListRunsResponse(runs=[run_to_proto(r) for r in records], next_page_token=token)

    def WatchRun(
        self, request: pb.WatchRunRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.RunEvent]:
        run_id = self._get(request.run_id).run_id
        after = "0-0"
        block = self._settings.watch_block_seconds
        # Blocking reads with a short timeout: no busy loop, and a cancelled client is
        # noticed within `block` seconds.
        while context.is_active():
            events = self._store.events(run_id, after=after, block_seconds=block)
            if not events:
                record = self._get(run_id)
                if not record.state.terminal:
                    continue
                # The terminal event may have landed since the read; else it expired.
                events = self._store.events(run_id, after=after)
                if not events:
                    yield _final_event(record)
                    return
            for event in events:
                after = event.event_id
                if event.state.terminal:
                    yield event_to_proto(event, run_to_proto(self._get(run_id)))
                    return
                yield event_to_proto(event)

    def _get(self, run_id: str) -> RunRecord:
        if not run_id:
            raise InvalidArgument("run_id is required")
        record = self._store.get(run_id)
        if record is None:
            raise NotFound(f"no run {run_id!r}")
        return record


def _same_request(existing: RunRecord, fingerprint: str) -> RunRecord:
    if existing.fingerprint != fingerprint:
        raise AlreadyExists(
            f"idempotency_key {existing.idempotency_key!r} was used for a different request "
            f"(run {existing.run_id}); use a new key"
        )
    return existing


def _final_event(record: RunRecord) -> pb.RunEvent:
    message = record.error or f"run {record.state.value.lower()}"
    return pb.RunEvent(
        run_id=record.run_id,
        state=_STATE_TO_PB[record.state],
        stage=record.stage,
        progress=record.progress,
        message=message,
        time=_timestamp(record.finished_at),
        run=run_to_proto(record),
    )


# --- wiring -----------------------------------------------------------------------------


def _recover_in_background(
    store: RunStore, executor: RunExecutor, tracker: MlflowTracker, stop: threading.Event
) -> None:
    """Re-queue unfinished runs once Redis answers (it may still be starting)."""
    delay = 0.5
    while not stop.is_set():
        try:
            recover_runs(store, executor, tracker)
            return
        except redis.RedisError as e:
            log.warning("cannot re-queue unfinished runs yet", error=str(e))
        stop.wait(delay)
        delay = min(delay * 2, 10.0)


def _build_executor(
    settings: TrainingSettings,
    store: RunStore,
    tracker: MlflowTracker,
    registry: RegistryClient,
    config: PipelineConfig,
) -> RunExecutor:
    if settings.executor == "kubernetes":
        from kloop_training.k8s_executor import JobExecutorSettings, KubernetesJobExecutor

        def submit_failed(run_id: str, error: str) -> None:
            store.record(
                run_id,
                state=RunState.FAILED,
                stage="queued",
                progress=0.0,
                message=error,
                error=error,
                finished_at=time.time(),
            )

        return KubernetesJobExecutor(JobExecutorSettings(), on_submit_failed=submit_failed)
    return LocalExecutor(
        functools.partial(
            execute_run, store=store, tracker=tracker, registrar=registry, config=config
        ),
        max_workers=settings.max_concurrent_runs,
        drain_seconds=settings.shutdown_grace_seconds,
    )


def create_app(settings: TrainingSettings) -> GrpcApp:
    """Everything the service needs, wired; `kloop_core.grpc_server` runs it."""
    configure_mlflow_client(settings.mlflow_timeout_seconds, settings.mlflow_max_retries)
    # Reads in WatchRun block for `watch_block_seconds`: the socket must wait longer.
    client = create_redis(settings.redis_url, socket_timeout=settings.watch_block_seconds + 2)
    store = RunStore(
        client,
        namespace=settings.redis_namespace,
        events_ttl_seconds=settings.events_ttl_seconds,
        idempotency_ttl_seconds=settings.idempotency_ttl_seconds,
    )
    tracker = MlflowTracker(
        settings.mlflow_tracking_uri, timeout_seconds=settings.mlflow_timeout_seconds
    )
    registry = RegistryClient(
        settings.registry_addr,
        timeout_seconds=settings.registry_timeout_seconds,
        attempts=settings.registry_attempts,
    )
    config = PipelineConfig(
        experiment_prefix=settings.experiment_prefix,
        dataset_roots=settings.dataset_roots,
        max_dataset_bytes=settings.max_dataset_bytes,
        parity_texts=settings.parity_texts,
        parity_tolerance=settings.parity_tolerance,
    )
    executor = _build_executor(settings, store, tracker, registry, config)
    servicer = TrainingServicer(store, executor, settings)
    stop_recovery = threading.Event()
    threading.Thread(
        target=_recover_in_background,
        args=(store, executor, tracker, stop_recovery),
        name="kloop-recover-runs",
        daemon=True,
    ).start()

    def on_shutdown() -> None:
        stop_recovery.set()
        executor.shutdown(wait=True)
        registry.close()
        client.close()

    return GrpcApp(
        settings=settings,
        service_name="training",
        register=lambda server: training_pb2_grpc.add_TrainingServiceServicer_to_server(
            servicer, server
        ),
        service_names=[SERVICE_NAME],
        readiness=lambda: redis_ping(client) and tracker.ping(),
        on_shutdown=on_shutdown,
    )
