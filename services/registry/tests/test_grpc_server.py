"""End to end over gRPC: a real registry server on a free port, real MLflow, real Redis."""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mlflow import MlflowClient

from kloop.registry.v1 import registry_pb2 as pb
from kloop.registry.v1.registry_pb2_grpc import RegistryServiceStub
from kloop_client.local import free_port
from kloop_core.grpc_server import RunningService, start_service
from kloop_registry.main import build_app
from kloop_registry.settings import RegistrySettings

from .factories import make_settings
from .mlflow_runs import LoggedRun, log_keyword_run, log_sentiment_run

# Keyword models scored on KEYWORD_HOLDOUT: log_loss = -ln(high) (lower is better).
POOR = {"low": 0.4, "high": 0.6}  # log_loss 0.511
GOOD = {"low": 0.2, "high": 0.8}  # log_loss 0.223
BEST = {"low": 0.1, "high": 0.9}  # log_loss 0.105


@pytest.fixture(scope="module")
def service(settings: RegistrySettings) -> Iterator[RunningService]:
    with start_service(build_app(settings), grpc_port=0, http_port=0) as running:
        yield running


def stub_for(running: RunningService) -> Iterator[RegistryServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        yield RegistryServiceStub(channel)


@pytest.fixture(scope="module")
def stub(service: RunningService) -> Iterator[RegistryServiceStub]:
    yield from stub_for(service)


@pytest.fixture(scope="module")
def replica(settings: RegistrySettings, tmp_path_factory: pytest.TempPathFactory):
    """A second registry process-alike: same MLflow, Redis and stream, its own cache."""
    other = settings.model_copy(update={"artifact_cache_dir": tmp_path_factory.mktemp("replica")})
    with start_service(build_app(other), grpc_port=0, http_port=0) as running:
        yield from stub_for(running)


def register(
    stub: RegistryServiceStub, name: str, run: LoggedRun, /, **overrides: object
) -> pb.ModelVersion:
    request = pb.RegisterVersionRequest(
        name=name,
        run_id=run.run_id,
        sha256=run.sha256,
        size_bytes=run.size_bytes,
        dataset_digest="d" * 64,
        tags={"team": "nlp"},
    )
    for key, value in overrides.items():
        setattr(request, key, value)
    return stub.RegisterVersion(request, timeout=30)


def keyword_version(
    stub: RegistryServiceStub, mlflow_uri: str, tmp: Path, name: str, quality: dict[str, float]
) -> str:
    return register(stub, name, log_keyword_run(mlflow_uri, tmp, **quality)).version


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30, **kwargs)
    return info.value.code()


def history(stub: RegistryServiceStub, name: str) -> list[pb.AuditEntry]:
    return list(stub.GetHistory(pb.GetHistoryRequest(name=name), timeout=10).entries)


# --- registration ---------------------------------------------------------------------


def test_register_version_records_digests_and_is_idempotent(
    stub: RegistryServiceStub, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    run = log_keyword_run(mlflow_uri, tmp_path, **GOOD)
    first = register(stub, model_name, run)
    assert (first.version, first.run_id, first.sha256) == ("1", run.run_id, run.sha256)
    assert first.size_bytes == run.size_bytes and first.dataset_digest == "d" * 64
    assert first.artifact_uri == f"runs:/{run.run_id}/model"
    assert first.metrics["accuracy"] == 1.0 and first.created_at.seconds > 0
    assert first.tags["team"] == "nlp" and len(first.tags["kloop.holdout_digest"]) == 64
    assert first.tags["kloop.sha256"] == run.sha256
    assert first.tags["kloop.size_bytes"] == str(run.size_bytes)

    retried = register(stub, model_name, run)
    assert retried.version == "1"
    versions = stub.ListVersions(pb.ListVersionsRequest(name=model_name), timeout=10).versions
    assert [v.version for v in versions] == ["1"]
    assert stub.GetVersion(pb.GetVersionRequest(name=model_name, version="1")).sha256 == run.sha256


def test_register_refuses_a_digest_or_size_mismatch_and_creates_nothing(
    stub: RegistryServiceStub, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    run = log_keyword_run(mlflow_uri, tmp_path, **GOOD)
    with pytest.raises(grpc.RpcError) as info:
        register(stub, model_name, run, sha256="0" * 64)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not match" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        register(stub, model_name, run, size_bytes=run.size_bytes + 1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(stub.ListVersions, pb.ListVersionsRequest(name=model_name)) == (
        grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"name": "bad name!"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"sha256": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"artifact_path": "../etc"}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"run_id": "f" * 32}, grpc.StatusCode.NOT_FOUND),
        ({"artifact_path": "elsewhere"}, grpc.StatusCode.NOT_FOUND),
    ],
)
def test_register_bad_requests(
    stub: RegistryServiceStub,
    mlflow_uri: str,
    tmp_path: Path,
    model_name: str,
    overrides: dict[str, str],
    expected: grpc.StatusCode,
) -> None:
    run = log_keyword_run(mlflow_uri, tmp_path, **GOOD)
    with pytest.raises(grpc.RpcError) as info:
        register(stub, model_name, run, **overrides)
    assert info.value.code() == expected


# --- promotion, aliases, rollback ---------------------------------------------------------


def test_first_real_model_is_approved_without_a_baseline(
    stub: RegistryServiceStub, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    version = register(stub, model_name, log_sentiment_run(mlflow_uri, tmp_path)).version
    decision = stub.Promote(
        pb.PromoteRequest(name=model_name, version=version, actor="ci"), timeout=60
    )
    assert decision.approved and decision.baseline_version == ""
    assert "first version" in decision.explanation
    assert decision.holdout_size > 0 and len(decision.holdout_digest) == 64
    assert 0 < decision.candidate_metrics["accuracy"] <= 1
    assert decision.candidate_value == decision.candidate_metrics["log_loss"]
    assert decision.change.alias == "production" and decision.change.version == version
    resolved = stub.ResolveAlias(pb.ResolveAliasRequest(name=model_name, alias="production"))
    assert resolved.version == version and list(resolved.aliases) == ["production"]
    (entry,) = history(stub, model_name)
    assert (entry.action, entry.actor, entry.details["applied"]) == (
        "promotion_approved",
        "ci",
        "true",
    )


def test_promotion_approved_then_rejected_with_numbers_in_the_trail(
    stub: RegistryServiceStub, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    v1 = keyword_version(stub, mlflow_uri, tmp_path, model_name, POOR)
    v2 = keyword_version(stub, mlflow_uri, tmp_path, model_name, GOOD)
    v3 = keyword_version(stub, mlflow_uri, tmp_path, model_name, POOR)
    stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="production", version=v1))

    approved = stub.Promote(pb.PromoteRequest(name=model_name, version=v2, reason="better"))
    assert approved.approved and approved.baseline_version == v1
    assert approved.metric == "log_loss" and approved.margin == pytest.approx(0.01)
    assert approved.candidate_value == pytest.approx(0.2231, abs=1e-3)
    assert approved.baseline_value == pytest.approx(0.5108, abs=1e-3)
    assert approved.baseline_metrics["log_loss"] == approved.baseline_value
    assert approved.change.previous_version == v1 and approved.change.version == v2

    rejected = stub.Promote(pb.PromoteRequest(name=model_name, version=v3))
    assert not rejected.approved and not rejected.HasField("change")
    assert "rejected" in rejected.explanation and "margin" in rejected.explanation
    production = stub.ResolveAlias(pb.ResolveAliasRequest(name=model_name, alias="production"))
    assert production.version == v2

    trail = history(stub, model_name)
    assert [(e.action, e.version, e.previous_version) for e in trail] == [
        ("alias_set", v1, ""),
        ("promotion_approved", v2, v1),
        ("promotion_rejected", v3, v2),
    ]
    numbers = trail[2].details
    assert float(numbers["candidate_value"]) == pytest.approx(rejected.candidate_value)
    assert float(numbers["baseline_value"]) == pytest.approx(rejected.baseline_value)
    assert float(numbers["improvement"]) < 0.01 and numbers["applied"] == "false"
    assert numbers["holdout_digest"] == rejected.holdout_digest and numbers["holdout_size"] == "20"
    assert "candidate.accuracy" in numbers and "baseline.roc_auc" in numbers
    last = stub.GetHistory(pb.GetHistoryRequest(name=model_name, limit=1)).entries
    assert [e.action for e in last] == ["promotion_rejected"]


def test_dry_run_and_canary_target_leave_production_alone(
    stub: RegistryServiceStub, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    v1 = keyword_version(stub, mlflow_uri, tmp_path, model_name, POOR)
    v2 = keyword_version(stub, mlflow_uri, tmp_path, model_name, GOOD)
    stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="production", version=v1))
    dry = stub.Promote(pb.PromoteRequest(name=model_name, version=v2, dry_run=True))
    assert dry.approved and not dry.HasField("change")
    canary = stub.Promote(pb.PromoteRequest(name=model_name, version=v2, target_alias="canary"))
    assert canary.approved and canary.change.alias == "canary"
    model = next(m for m in stub.ListModels(pb.ListModelsRequest()).models if m.name == model_name)
    assert dict(model.aliases) == {"production": v1, "canary": v2}
    assert model.latest_version == v2
    details = [e.details for e in history(stub, model_name)[1:]]
    assert [(d["dry_run"], d["applied"]) for d in details] == [("true", "false"), ("false", "true")]


def test_rollback_moves_the_alias_back(
    stub: RegistryServiceStub, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    v1 = keyword_version(stub, mlflow_uri, tmp_path, model_name, POOR)
    v2 = keyword_version(stub, mlflow_uri, tmp_path, model_name, GOOD)
    rollback = pb.RollbackRequest(name=model_name, alias="production", actor="oncall")
    stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="production", version=v1))
    assert code_of(stub.Rollback, rollback) == grpc.StatusCode.FAILED_PRECONDITION
    stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="production", version=v2))

    change = stub.Rollback(rollback)
    assert (change.version, change.previous_version) == (v1, v2)
    assert change.entry.action == "rollback" and change.entry.actor == "oncall"
    assert (
        stub.ResolveAlias(pb.ResolveAliasRequest(name=model_name, alias="production")).version == v1
    )

    deleted = stub.DeleteAlias(pb.DeleteAliasRequest(name=model_name, alias="production"))
    assert (deleted.version, deleted.previous_version) == ("", v1)
    assert code_of(
        stub.ResolveAlias, pb.ResolveAliasRequest(name=model_name, alias="production")
    ) == (grpc.StatusCode.NOT_FOUND)
    restored = stub.Rollback(rollback)
    assert restored.version == v1
    assert [e.action for e in history(stub, model_name)] == [
        "alias_set", "alias_set", "rollback", "alias_deleted", "rollback",
    ]  # fmt: skip
    # The trail is mirrored on the versions it concerns, and kept out of ModelVersion.tags
    # (GetHistory serves it).
    mirrored = MlflowClient(mlflow_uri).get_model_version(model_name, v1).tags
    assert sorted(k for k in mirrored if k.startswith("kloop.audit.")) == [
        "kloop.audit.000000001", "kloop.audit.000000003", "kloop.audit.000000004",
        "kloop.audit.000000005",
    ]  # fmt: skip
    version = stub.GetVersion(pb.GetVersionRequest(name=model_name, version=v1))
    assert not any(k.startswith("kloop.audit.") for k in version.tags)


def test_not_found_and_invalid_arguments(
    stub: RegistryServiceStub, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    v1 = keyword_version(stub, mlflow_uri, tmp_path, model_name, GOOD)
    nf, bad = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
    cases = [
        (stub.Promote, pb.PromoteRequest(name=model_name, version="99"), nf),
        (stub.Promote, pb.PromoteRequest(name="no-such-model", version="1"), nf),
        (stub.SetAlias, pb.SetAliasRequest(name=model_name, alias="canary", version="99"), nf),
        (stub.SetAlias, pb.SetAliasRequest(name="no-such-model", alias="canary", version="1"), nf),
        (stub.ResolveAlias, pb.ResolveAliasRequest(name=model_name, alias="canary"), nf),
        (stub.ResolveAlias, pb.ResolveAliasRequest(name="no-such-model", alias="canary"), nf),
        (stub.DeleteAlias, pb.DeleteAliasRequest(name=model_name, alias="canary"), nf),
        (stub.GetHistory, pb.GetHistoryRequest(name="no-such-model"), nf),
        (stub.GetVersion, pb.GetVersionRequest(name=model_name, version="2"), nf),
        (stub.SetAlias, pb.SetAliasRequest(name=model_name, alias="Prod", version=v1), bad),
        (stub.SetAlias, pb.SetAliasRequest(name=model_name, alias="v2", version=v1), bad),
        (stub.SetAlias, pb.SetAliasRequest(name=model_name, alias="latest", version=v1), bad),
        (stub.SetAlias, pb.SetAliasRequest(name=model_name, alias="", version=v1), bad),
        (stub.SetAlias, pb.SetAliasRequest(name="", alias="canary", version=v1), bad),
        (stub.GetVersion, pb.GetVersionRequest(name=model_name, version="one"), bad),
        (stub.GetHistory, pb.GetHistoryRequest(name=model_name, limit=-1), bad),
        (stub.Promote, pb.PromoteRequest(name=model_name, version=v1, target_alias="a b"), bad),
    ]
    assert [code_of(call, request) for call, request, _ in cases] == [c for _, _, c in cases]
    shadow = stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="shadow-2_x", version=v1))
    assert shadow.version == v1


def test_concurrent_alias_changes_across_replicas_are_serialized(
    stub: RegistryServiceStub,
    replica: RegistryServiceStub,
    mlflow_uri: str,
    tmp_path: Path,
    model_name: str,
) -> None:
    v1 = keyword_version(stub, mlflow_uri, tmp_path, model_name, POOR)
    v2 = keyword_version(stub, mlflow_uri, tmp_path, model_name, GOOD)
    v3 = keyword_version(stub, mlflow_uri, tmp_path, model_name, BEST)
    # Each call targets its own version, so none of them can be a no-op.
    v4 = keyword_version(stub, mlflow_uri, tmp_path, model_name, POOR)
    v5 = keyword_version(stub, mlflow_uri, tmp_path, model_name, POOR)
    stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="production", version=v1))
    production = {"name": model_name, "alias": "production"}
    calls = [
        (stub.Promote, pb.PromoteRequest(name=model_name, version=v2, actor="a")),
        (replica.Promote, pb.PromoteRequest(name=model_name, version=v3, actor="b")),
        (stub.SetAlias, pb.SetAliasRequest(**production, version=v4, actor="c")),
        (replica.SetAlias, pb.SetAliasRequest(**production, version=v5, actor="d")),
    ]
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call, request) -> None:
        barrier.wait()
        try:
            call(request, timeout=60)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=c) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []

    trail = history(stub, model_name)[1:]
    assert sorted(e.actor for e in trail) == ["a", "b", "c", "d"]
    # Replaying the trail in order reproduces every previous_version and the final alias.
    current = v1
    for entry in trail:
        assert entry.previous_version == current, entry
        moved = entry.action == "alias_set" or entry.details.get("applied") == "true"
        if moved:
            current = entry.version
    final = stub.ResolveAlias(pb.ResolveAliasRequest(name=model_name, alias="production"))
    assert final.version == current


def test_set_alias_to_the_same_version_is_a_recorded_no_op(
    stub: RegistryServiceStub, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    v1 = keyword_version(stub, mlflow_uri, tmp_path, model_name, GOOD)
    request = pb.SetAliasRequest(name=model_name, alias="canary", version=v1)
    stub.SetAlias(request)
    again = stub.SetAlias(request)
    assert again.previous_version == v1 and not again.HasField("entry")
    assert len(history(stub, model_name)) == 1


# --- events and artifacts ---------------------------------------------------------------------


def test_watch_models_replays_and_receives_set_alias_events(
    stub: RegistryServiceStub, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    received: queue.Queue[pb.ModelEvent] = queue.Queue()
    watch = stub.WatchModels(pb.WatchModelsRequest(name=model_name), timeout=60)

    def consume() -> None:
        try:
            for event in watch:
                received.put(event)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.CANCELLED

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(0.5)  # the watch starts at "now": let it get there
    run = log_keyword_run(mlflow_uri, tmp_path, **GOOD)
    v1 = register(stub, model_name, run).version
    stub.SetAlias(
        pb.SetAliasRequest(name=model_name, alias="canary", version=v1, actor="me", reason="try")
    )
    registered = received.get(timeout=10)
    alias_set = received.get(timeout=10)
    watch.cancel()
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert (registered.kind, registered.version, registered.sha256) == (
        "version_registered", v1, run.sha256,
    )  # fmt: skip
    assert (alias_set.kind, alias_set.alias, alias_set.version, alias_set.previous_version) == (
        "alias_set", "canary", v1, "",
    )  # fmt: skip
    assert (alias_set.actor, alias_set.reason, alias_set.sha256) == ("me", "try", run.sha256)
    assert alias_set.artifact_uri == f"runs:/{run.run_id}/model"

    replay = stub.WatchModels(
        pb.WatchModelsRequest(name=model_name, after_event_id=registered.event_id), timeout=2
    )
    with pytest.raises(grpc.RpcError) as info:
        for event in replay:
            assert event.event_id == alias_set.event_id
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    bad = stub.WatchModels(pb.WatchModelsRequest(after_event_id="yesterday"), timeout=5)
    with pytest.raises(grpc.RpcError) as info:
        next(iter(bad))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def download(stub: RegistryServiceStub, **request: str) -> tuple[pb.ArtifactChunk, bytes]:
    chunks = list(stub.DownloadArtifact(pb.DownloadArtifactRequest(**request), timeout=30))
    return chunks[0], b"".join(c.data for c in chunks)


def test_download_artifact_by_digest_and_by_version(
    stub: RegistryServiceStub,
    replica: RegistryServiceStub,
    mlflow_uri: str,
    tmp_path: Path,
    model_name: str,
) -> None:
    run = log_sentiment_run(mlflow_uri, tmp_path, epochs=5)
    version = register(stub, model_name, run).version
    head, data = download(stub, sha256=run.sha256)
    assert hashlib.sha256(data).hexdigest() == run.sha256 == head.sha256
    assert head.total_size == len(data) == run.size_bytes and head.path == "model.onnx"
    # A replica that never saw this model finds it by digest through MLflow.
    assert download(replica, sha256=run.sha256)[1] == data
    assert download(stub, name=model_name, version=version)[1] == data

    head, holdout = download(stub, name=model_name, version=version, path="holdout.jsonl")
    assert head.path == "holdout.jsonl" and hashlib.sha256(holdout).hexdigest() == head.sha256
    assert holdout.count(b"\n") > 10
    nf, bad = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
    for request, expected in [
        ({"sha256": "e" * 64}, nf),
        ({"sha256": "xyz"}, bad),
        ({"name": model_name}, bad),
        ({"name": model_name, "version": version, "path": "../../secrets"}, bad),
        ({"name": model_name, "version": version, "path": "nope.bin"}, nf),
        ({"sha256": run.sha256, "name": model_name, "version": version}, bad),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            list(stub.DownloadArtifact(pb.DownloadArtifactRequest(**request), timeout=30))
        assert info.value.code() == expected, request


# --- failure modes and health -------------------------------------------------------------


def test_dead_mlflow_gives_unavailable_fast(
    mlflow_uri: str, redis_url: str, tmp_path: Path
) -> None:
    dead = make_settings(f"http://127.0.0.1:{free_port()}", redis_url, tmp_path)
    with start_service(build_app(dead), grpc_port=0, http_port=0) as running:
        for stub in stub_for(running):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as info:
                stub.ResolveAlias(pb.ResolveAliasRequest(name="m", alias="production"), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "MLflow is unreachable" in info.value.details()
            with pytest.raises(grpc.RpcError) as info:
                stub.Promote(pb.PromoteRequest(name="m", version="1"), timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - started < 10
        time.sleep(1.5)  # one readiness poll
        with pytest.raises(urllib.error.HTTPError) as http_error:
            urllib.request.urlopen(f"http://127.0.0.1:{running.http_port}/readyz", timeout=5)
        assert http_error.value.code == 503


def test_dead_redis_refuses_alias_changes_before_anything_changes(
    stub: RegistryServiceStub, mlflow_uri: str, tmp_path: Path, model_name: str
) -> None:
    v1 = keyword_version(stub, mlflow_uri, tmp_path, model_name, POOR)
    v2 = keyword_version(stub, mlflow_uri, tmp_path, model_name, GOOD)
    stub.SetAlias(pb.SetAliasRequest(name=model_name, alias="production", version=v1))
    dead = make_settings(mlflow_uri, f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    with start_service(build_app(dead), grpc_port=0, http_port=0) as running:
        for no_redis in stub_for(running):
            for call, request in [
                (
                    no_redis.SetAlias,
                    pb.SetAliasRequest(name=model_name, alias="production", version=v2),
                ),
                (no_redis.Promote, pb.PromoteRequest(name=model_name, version=v2)),
                (no_redis.Rollback, pb.RollbackRequest(name=model_name, alias="production")),
                (no_redis.DeleteAlias, pb.DeleteAliasRequest(name=model_name, alias="production")),
            ]:
                with pytest.raises(grpc.RpcError) as info:
                    call(request, timeout=30)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
                assert "nothing was changed" in info.value.details()
            # Reads that need only MLflow still work.
            resolved = no_redis.ResolveAlias(
                pb.ResolveAliasRequest(name=model_name, alias="production")
            )
            assert resolved.version == v1
    assert len(history(stub, model_name)) == 1


def test_ready_when_mlflow_and_redis_answer(service: RunningService) -> None:
    url = f"http://127.0.0.1:{service.http_port}/readyz"
    deadline = time.monotonic() + 10
    while not service.ready and time.monotonic() < deadline:
        time.sleep(0.1)
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
