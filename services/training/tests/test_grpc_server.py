"""End to end over gRPC: the training service on a free port, the real registry service,
the real MLflow server and Redis."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts

from kloop.registry.v1 import registry_pb2, registry_pb2_grpc
from kloop.training.v1 import training_pb2 as pb
from kloop.training.v1 import training_pb2_grpc
from kloop_client.local import free_port
from kloop_core.grpc_server import RunningService
from kloop_core.redis import create_redis
from kloop_model.dataset import builtin_dataset, dataset_digest
from kloop_training.grpc_server import SERVICE_NAME
from kloop_training.pipeline import DatasetRef, RunParams, RunSpec
from kloop_training.runs import RunState, RunStore
from kloop_training.settings import TrainingSettings

Stub = training_pb2_grpc.TrainingServiceStub
StartService = Callable[[TrainingSettings], RunningService]
StubFor = Callable[[RunningService], Stub]
TERMINAL = (pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED)
STAGES = ["queued", "dataset", "split", "fit", "evaluate", "export", "profile", "track", "register"]
ARTIFACTS = [
    "holdout.jsonl",
    "model.json",
    "model.onnx",
    "reference_profile.json",
    "signature.json",
]
GOOD_CSV = "text,label\n" + "".join(
    f'"{t}",{y}\n' for t, y in zip(builtin_dataset().texts, builtin_dataset().labels, strict=True)
)


def watch(stub: Stub, run_id: str, timeout: float = 120.0) -> list[pb.RunEvent]:
    return list(stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=timeout))


def submit(stub: Stub, name: str, **kwargs: object) -> pb.Run:
    kwargs.setdefault("dataset", pb.DatasetSpec(builtin=True))
    return stub.SubmitRun(pb.SubmitRunRequest(model_name=name, **kwargs), timeout=30)  # type: ignore[arg-type]


def test_a_run_end_to_end(
    make_settings: Callable[..., TrainingSettings],
    start_training: StartService,
    stub_for: StubFor,
    registry_stub: registry_pb2_grpc.RegistryServiceStub,
    mlflow_uri: str,
    model_name: str,
    tmp_path: Path,
) -> None:
    # The production parity check: 10,000 generated texts (plus the holdout).
    service = start_training(make_settings(parity_texts=10_000))
    stub = stub_for(service)
    params = pb.TrainingParams(epochs=150, l2=0.0)  # explicit 0: no regularisation
    started = time.monotonic()
    run = submit(stub, model_name, params=params, tags={"team": "nlp"})
    assert time.monotonic() - started < 5  # returns at once; the run executes later
    assert run.state == pb.RUN_STATE_QUEUED
    assert run.dataset_digest == dataset_digest(builtin_dataset())

    events = watch(stub, run.run_id)
    stages = [e.stage for e in events]
    assert sorted(set(stages) - {"done"}, key=stages.index) == STAGES
    assert [e.progress for e in events] == sorted(e.progress for e in events)
    final = events[-1]
    assert final.state == pb.RUN_STATE_SUCCEEDED, final.message
    assert all(not e.HasField("run") for e in events[:-1])
    assert final.run.model_version

    got = stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5)
    assert got == final.run
    for metric in ("accuracy", "f1", "roc_auc", "log_loss", "precision", "recall"):
        assert metric in got.metrics
    assert got.metrics["onnx_parity_max_abs_diff"] <= 1e-5
    assert got.params.epochs == 150 and got.params.HasField("l2") and got.params.l2 == 0.0
    assert got.params.seed == 42 and got.params.test_fraction == 0.2  # service defaults
    assert got.dataset.builtin and got.tags == {"team": "nlp"}
    assert got.created_at.ToNanoseconds() <= got.started_at.ToNanoseconds()
    assert got.started_at.ToNanoseconds() <= got.finished_at.ToNanoseconds()

    client = MlflowClient(mlflow_uri)
    mlflow_run = client.get_run(got.mlflow_run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert client.get_experiment(mlflow_run.info.experiment_id).name == f"kloop/{model_name}"
    assert mlflow_run.data.params["epochs"] == "150"
    assert mlflow_run.data.params["l2"] == "0.0"
    assert mlflow_run.data.params["dataset_source"] == "kloop:builtin"
    assert mlflow_run.data.metrics["accuracy"] == got.metrics["accuracy"]
    (dataset_input,) = mlflow_run.inputs.dataset_inputs
    assert dataset_input.dataset.digest == got.dataset_digest[:32]
    assert json.loads(dataset_input.dataset.profile)["sha256"] == got.dataset_digest
    tags = mlflow_run.data.tags
    assert tags["kloop.dataset_digest"] == got.dataset_digest
    assert tags["kloop.run_id"] == run.run_id
    assert tags["kloop.model_version"] == got.model_version
    assert tags["team"] == "nlp"
    listed = sorted(f.path for f in client.list_artifacts(got.mlflow_run_id, "model"))
    assert listed == [f"model/{name}" for name in ARTIFACTS]
    local = Path(download_artifacts(run_id=got.mlflow_run_id, artifact_path="model",
                                    dst_path=str(tmp_path), tracking_uri=mlflow_uri))  # fmt: skip
    holdout_sha = hashlib.sha256((local / "holdout.jsonl").read_bytes()).hexdigest()
    assert tags["kloop.holdout_digest"] == holdout_sha
    onnx_bytes = (local / "model.onnx").read_bytes()

    version = registry_stub.GetVersion(
        registry_pb2.GetVersionRequest(name=model_name, version=got.model_version), timeout=10
    )
    assert version.run_id == got.mlflow_run_id
    assert version.sha256 == hashlib.sha256(onnx_bytes).hexdigest()
    assert version.size_bytes == len(onnx_bytes)
    assert version.dataset_digest == got.dataset_digest
    assert version.tags["kloop.run_id"] == run.run_id
    assert version.tags["kloop.holdout_digest"] == holdout_sha
    assert version.tags["team"] == "nlp"

    # Watching a finished run replays its events and ends with the final state.
    assert [e.stage for e in watch(stub, run.run_id)] == stages


def test_idempotency_key(
    make_settings: Callable[..., TrainingSettings],
    start_training: StartService,
    stub_for: StubFor,
    model_name: str,
) -> None:
    stub = stub_for(start_training(make_settings()))
    first = submit(stub, model_name, idempotency_key="nightly-2026-11-22")
    again = submit(stub, model_name, idempotency_key="nightly-2026-11-22")
    assert again.run_id == first.run_id
    listed = stub.ListRuns(pb.ListRunsRequest(model_name=model_name), timeout=5)
    assert [r.run_id for r in listed.runs] == [first.run_id]
    with pytest.raises(grpc.RpcError) as caught:
        submit(stub, model_name, idempotency_key="nightly-2026-11-22", tags={"other": "x"})
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "used for a different request" in caught.value.details()
    assert watch(stub, first.run_id)[-1].state == pb.RUN_STATE_SUCCEEDED
    # After the run finished, the key still answers with the same run.
    assert submit(stub, model_name, idempotency_key="nightly-2026-11-22").run_id == first.run_id


INVALID = grpc.StatusCode.INVALID_ARGUMENT
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
BAD_UTF8 = b'{"text": "ok", "label": 1}\n{"text": "\xc3\x28", "label": 0}\n'
# (what, request fields for `_request`, status code, what the message must contain)
BAD_REQUESTS: list[tuple[str, dict[str, object], grpc.StatusCode, list[str]]] = [
    ("bad name", {"model_name": "bad name!"}, INVALID, ["model_name"]),
    ("no name", {"model_name": ""}, INVALID, ["model_name is required"]),
    ("epochs", {"params": pb.TrainingParams(epochs=-5)}, INVALID, ["epochs must be between"]),
    ("fraction", {"params": pb.TrainingParams(test_fraction=1.5)}, INVALID, ["test_fraction"]),
    ("reserved tag", {"tags": {"kloop.run_id": "x"}}, INVALID, ["reserved prefix"]),
    ("builtin false", {"dataset": pb.DatasetSpec(builtin=False)}, INVALID, ["builtin is false"]),
    (
        "missing column",
        {"file": ("a.csv", "words,label\nhi,1\n")},
        INVALID,
        ["a.csv", "row 1", "missing column(s) 'text'"],
    ),
    (
        "label",
        {"file": ("b.csv", "text,label\ngood,1\nbad,maybe\n")},
        INVALID,
        ["b.csv", "row 3", "label 'maybe' is not binary"],
    ),
    ("empty", {"file": ("c.csv", "")}, INVALID, ["c.csv", "file is empty"]),
    (
        "too large",
        {"file": ("d.csv", "text,label\n" + "good,1\nbad,0\n" * 1000)},
        INVALID,
        ["d.csv", "over the limit of 4096 bytes"],
    ),
    ("utf-8", {"file": ("e.jsonl", BAD_UTF8)}, INVALID, ["e.jsonl", "row 2", "invalid UTF-8"]),
    (
        "too small",
        {"file": ("f.csv", "text,label\ngood,1\ngreat,1\nbad,0\n")},
        PRECONDITION,
        ["dataset too small"],
    ),
    ("no file", {"uri": "{root}/nope.csv"}, PRECONDITION, ["nope.csv", "no such file"]),
    ("relative", {"uri": "data/x.csv"}, INVALID, ["must be absolute"]),
    (
        "outside roots",
        {"uri": "/etc/passwd"},
        grpc.StatusCode.PERMISSION_DENIED,
        ["outside the allowed dataset roots"],
    ),
    ("scheme", {"uri": "https://example.com/x.csv"}, INVALID, ["unsupported dataset URI"]),
]


def _request(
    model_name: str,
    tmp_path: Path,
    /,
    *,
    file: tuple[str, str | bytes] | None = None,
    uri: str | None = None,
    **fields: object,
) -> pb.SubmitRunRequest:
    """A SubmitRunRequest on the built-in dataset, or on `file` written under tmp_path,
    or on `uri` ({root} is tmp_path); `fields` override the rest."""
    dataset = pb.DatasetSpec(builtin=True)
    if file is not None:
        path = tmp_path / file[0]
        path.write_bytes(file[1] if isinstance(file[1], bytes) else file[1].encode())
        dataset = pb.DatasetSpec(uri=str(path))
    if uri is not None:
        dataset = pb.DatasetSpec(uri=uri.format(root=tmp_path))
    values: dict[str, object] = {"model_name": model_name, "dataset": dataset, **fields}
    return pb.SubmitRunRequest(**values)  # type: ignore[arg-type]


def test_bad_input_gets_a_clear_error_and_the_service_stays_up(
    make_settings: Callable[..., TrainingSettings],
    start_training: StartService,
    stub_for: StubFor,
    model_name: str,
    tmp_path: Path,
) -> None:
    stub = stub_for(
        start_training(make_settings(dataset_roots=[str(tmp_path)], max_dataset_bytes=4096))
    )
    for label, fields, code, expected in BAD_REQUESTS:
        request = _request(model_name, tmp_path, **fields)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            stub.SubmitRun(request, timeout=10)
        assert time.monotonic() - started < 5, label
        assert caught.value.code() == code, (label, caught.value.details())
        for part in expected:
            assert part in caught.value.details(), (label, caught.value.details())
    # Nothing was queued for them, and the next valid request succeeds.
    assert not stub.ListRuns(pb.ListRunsRequest(model_name=model_name), timeout=5).runs
    good = tmp_path / "good.csv"
    good.write_text(GOOD_CSV)
    run = submit(stub, model_name, dataset=pb.DatasetSpec(uri=good.as_uri()))
    final = watch(stub, run.run_id)[-1]
    assert final.state == pb.RUN_STATE_SUCCEEDED, final.message
    assert final.run.dataset.uri == good.as_uri()


def _readyz(service: RunningService) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{service.http_port}/readyz", timeout=5):
            return 200
    except urllib.error.HTTPError as e:
        return e.code


def test_mlflow_unreachable_fails_the_run_quickly_and_clearly(
    make_settings: Callable[..., TrainingSettings],
    start_training: StartService,
    stub_for: StubFor,
    model_name: str,
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    service = start_training(make_settings(mlflow_tracking_uri=dead, mlflow_timeout_seconds=2))
    stub = stub_for(service)
    started = time.monotonic()
    run = submit(stub, model_name)
    assert time.monotonic() - started < 5
    final = watch(stub, run.run_id, timeout=60)[-1]
    assert time.monotonic() - started < 30
    assert final.state == pb.RUN_STATE_FAILED
    assert final.run.stage == "track"
    assert f"MLflow tracking server at {dead} is unreachable" in final.run.error
    assert final.message == final.run.error
    # Readiness says so too; the service still answers.
    time.sleep(1.5)
    assert _readyz(service) == 503
    assert stub.GetRun(pb.GetRunRequest(run_id=run.run_id), timeout=5).state == pb.RUN_STATE_FAILED


def test_registry_unreachable_fails_the_run_and_says_so(
    make_settings: Callable[..., TrainingSettings],
    start_training: StartService,
    stub_for: StubFor,
    model_name: str,
    mlflow_uri: str,
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    stub = stub_for(start_training(make_settings(registry_addr=dead)))
    run = submit(stub, model_name)
    final = watch(stub, run.run_id)[-1]
    assert final.state == pb.RUN_STATE_FAILED
    assert final.run.error.startswith(f"register failed: registry at {dead} is unavailable")
    status = MlflowClient(mlflow_uri).get_run(final.run.mlflow_run_id).info.status
    assert status == "FAILED"


def test_list_runs_pages_newest_first(
    make_settings: Callable[..., TrainingSettings],
    start_training: StartService,
    stub_for: StubFor,
    redis_url: str,
    default_params: RunParams,
) -> None:
    settings = make_settings()
    # Records written straight into the service's namespace: paging is a read path,
    # and training 7 models would only slow the test down.
    store = RunStore(create_redis(redis_url), namespace=settings.redis_namespace)
    ids = {"a": [], "b": []}  # type: dict[str, list[str]]
    for i in range(7):
        name = "a" if i % 3 else "b"
        spec = RunSpec(name, DatasetRef(), default_params)
        record, _ = store.create(spec, dataset_digest="", now=1000.0 + i)
        store.record(record.run_id, state=RunState.FAILED, stage="fit", progress=0.1, message="")
        ids[name].append(record.run_id)
    stub = stub_for(start_training(settings))

    def pages(model: str, size: int) -> list[list[str]]:
        out, token = [], ""
        while True:
            reply = stub.ListRuns(
                pb.ListRunsRequest(model_name=model, page_size=size, page_token=token), timeout=5
            )
            out.append([r.run_id for r in reply.runs])
            token = reply.next_page_token
            if not token:
                return out

    everything = list(reversed(ids["a"] + ids["b"]))
    everything.sort(key=lambda i: store.get(i).created_at, reverse=True)  # type: ignore[union-attr]
    assert pages("", 3) == [everything[:3], everything[3:6], everything[6:]]
    assert pages("a", 2) == [ids["a"][::-1][:2], ids["a"][::-1][2:]]
    assert pages("b", 0) == [ids["b"][::-1]]  # 0: the service default page size
    assert pages("nobody", 5) == [[]]
    for request, expected in [
        (pb.ListRunsRequest(page_token="not-a-token"), "malformed page_token"),
        (pb.ListRunsRequest(page_size=-1), "page_size must be >= 0"),
        (pb.ListRunsRequest(model_name="bad name"), "invalid model_name"),
    ]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListRuns(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in caught.value.details()


def test_unknown_runs_are_not_found(
    make_settings: Callable[..., TrainingSettings],
    start_training: StartService,
    stub_for: StubFor,
) -> None:
    stub = stub_for(start_training(make_settings()))
    for call in (
        lambda: watch(stub, "no-such-run", timeout=5),
        lambda: stub.GetRun(pb.GetRunRequest(run_id="no-such-run"), timeout=5),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "no run 'no-such-run'" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetRun(pb.GetRunRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_a_run_whose_events_expired(
    make_settings: Callable[..., TrainingSettings],
    start_training: StartService,
    stub_for: StubFor,
    redis_url: str,
    builtin_spec: RunSpec,
) -> None:
    settings = make_settings()
    store = RunStore(create_redis(redis_url), namespace=settings.redis_namespace)
    record, _ = store.create(builtin_spec, dataset_digest="")
    store.record(record.run_id, state=RunState.FAILED, stage="fit", progress=0.1,
                 message="boom", error="fit failed: boom", finished_at=1234.0)  # fmt: skip
    store._r.delete(store._events_key(record.run_id))
    stub = stub_for(start_training(settings))
    (event,) = watch(stub, record.run_id, timeout=10)
    assert event.state == pb.RUN_STATE_FAILED
    assert event.message == "fit failed: boom"
    assert event.run.error == "fit failed: boom"


def test_a_restart_requeues_unfinished_runs(
    make_settings: Callable[..., TrainingSettings],
    start_training: StartService,
    stub_for: StubFor,
    redis_url: str,
    builtin_spec: RunSpec,
) -> None:
    settings = make_settings()
    store = RunStore(create_redis(redis_url), namespace=settings.redis_namespace)
    digest = dataset_digest(builtin_dataset())
    # As a killed process leaves them: one mid-run, one never started.
    running, _ = store.create(builtin_spec, dataset_digest=digest)
    store.record(running.run_id, state=RunState.RUNNING, stage="fit", progress=0.1, message="")
    queued, _ = store.create(builtin_spec, dataset_digest=digest)
    stub = stub_for(start_training(settings))
    for run_id in (running.run_id, queued.run_id):
        events = watch(stub, run_id)
        assert events[-1].state == pb.RUN_STATE_SUCCEEDED, events[-1].message
        assert events[-1].run.model_version
    messages = [e.message for e in watch(stub, running.run_id)]
    assert any("re-queued: the previous process stopped during fit" in m for m in messages)


def test_health_and_readiness(
    make_settings: Callable[..., TrainingSettings], start_training: StartService
) -> None:
    service = start_training(make_settings())
    deadline = time.monotonic() + 10
    while _readyz(service) != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
