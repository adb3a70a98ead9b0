"""End to end with the real registry (real MLflow, real Redis): models come only through
the registry's gRPC API, and moving an alias under load never fails a request."""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from mlflow import MlflowClient

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop.oip.v2.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kloop.registry.v1 import registry_pb2 as registry_pb
from kloop.registry.v1.registry_pb2_grpc import RegistryServiceStub
from kloop_core.grpc_server import start_service
from kloop_inference.settings import InferenceSettings
from kloop_model import SentimentClassifier, TrainingParams
from kloop_model.dataset import builtin_dataset
from kloop_model.onnx_export import export_onnx, sentiment_signature
from kloop_registry.main import build_app
from kloop_registry.settings import RegistrySettings

from .conftest import ServerThread, make_settings

pytestmark = pytest.mark.slow

MOVES = 10
CLIENT_THREADS = 4


@pytest.fixture(scope="module")
def registry(
    mlflow_uri: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    settings = RegistrySettings(
        mlflow_tracking_uri=mlflow_uri,
        redis_url=redis_url,
        artifact_cache_dir=tmp_path_factory.mktemp("registry-cache"),
        events_stream=f"kloop:test-events:{uuid.uuid4().hex[:8]}",
        watch_block_seconds=0.2,
        grpc_port=0,
        http_port=0,
        shutdown_grace_seconds=0.5,
    )
    with start_service(build_app(settings), grpc_port=0, http_port=0) as running:
        yield f"127.0.0.1:{running.grpc_port}"


def register_sentiment(stub: RegistryServiceStub, mlflow_uri: str, name: str, epochs: int) -> str:
    """Train a model, log its `model/` artifacts to a run, register it: a new version."""
    data = builtin_dataset()
    model = SentimentClassifier(TrainingParams(epochs=epochs)).fit(data.texts, data.labels)
    onnx_bytes = export_onnx(model, model_name=name).SerializeToString()
    client = MlflowClient(mlflow_uri)
    run = client.create_run("0")
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / "model.onnx").write_bytes(onnx_bytes)
        (out / "signature.json").write_text(str(sentiment_signature()).replace("'", '"'))
        client.log_artifacts(run.info.run_id, str(out), "model")
    client.set_terminated(run.info.run_id)
    version = stub.RegisterVersion(
        registry_pb.RegisterVersionRequest(
            name=name,
            run_id=run.info.run_id,
            sha256=hashlib.sha256(onnx_bytes).hexdigest(),
            size_bytes=len(onnx_bytes),
        ),
        timeout=60,
    )
    return version.version


@dataclass(frozen=True)
class Answer:
    started: float
    finished: float
    version: str | None  # None: the request failed
    error: str = ""


def keep_asking(
    url_http: str, url_grpc: str, name: str, use_grpc: bool, stop: threading.Event
) -> list[Answer]:
    answers: list[Answer] = []
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["great"]}]}
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"great"
    )
    with (
        httpx.Client(base_url=f"http://{url_http}", timeout=10) as http,
        grpc.insecure_channel(url_grpc) as channel,
    ):
        stub = GRPCInferenceServiceStub(channel)
        while not stop.is_set():
            started = time.monotonic()
            try:
                if use_grpc:
                    version = stub.ModelInfer(request, timeout=10).model_version
                else:
                    response = http.post(f"/v2/models/{name}/infer", json=body)
                    response.raise_for_status()
                    version = response.json()["model_version"]
                answers.append(Answer(started, time.monotonic(), version))
            except Exception as error:  # every failure is recorded, then asserted on
                answers.append(Answer(started, time.monotonic(), None, repr(error)))
    return answers


def served_version(http: httpx.Client, name: str) -> str:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["probe"]}]}
    return str(http.post(f"/v2/models/{name}/infer", json=body).json().get("model_version"))


def wait_until_served(http: httpx.Client, name: str, version: str) -> None:
    deadline = time.monotonic() + 60
    while served_version(http, name) != version:
        assert time.monotonic() < deadline, f"version {version} was never served"
        time.sleep(0.02)


def test_alias_moves_under_load_fail_nothing_and_name_live_versions(
    registry: str, mlflow_uri: str, tmp_path: Path
) -> None:
    name = f"sentiment-{uuid.uuid4().hex[:8]}"
    registry_channel = grpc.insecure_channel(registry)
    stub = RegistryServiceStub(registry_channel)
    versions = [register_sentiment(stub, mlflow_uri, name, epochs) for epochs in (20, 60, 200)]
    stub.SetAlias(
        registry_pb.SetAliasRequest(name=name, alias="production", version=versions[0]), timeout=30
    )

    settings: InferenceSettings = make_settings(
        registry_addr=registry,
        cache_dir=tmp_path / "cache",
        models={name: ["production", "canary"]},
        startup_wait_seconds=30,
    )
    with ServerThread(settings) as running:
        running.wait_ready(60)
        http = httpx.Client(base_url=f"http://{running.http}", timeout=10)
        assert served_version(http, name) == versions[0]
        # The canary alias is followed too, by event.
        stub.SetAlias(
            registry_pb.SetAliasRequest(name=name, alias="canary", version=versions[1]), timeout=30
        )
        deadline = time.monotonic() + 60
        while http.get(f"/v2/models/{name}/versions/canary/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)

        # (time the move started, time it was served, version) for every alias change.
        moves: list[tuple[float, float, str]] = [(0.0, 0.0, versions[0])]
        stop = threading.Event()
        results: list[list[Answer]] = [[] for _ in range(CLIENT_THREADS)]
        clients = [
            threading.Thread(
                target=lambda i=i: results[i].extend(
                    keep_asking(running.http, running.grpc, name, i % 2 == 1, stop)
                )
            )
            for i in range(CLIENT_THREADS)
        ]
        for client in clients:
            client.start()
        try:
            for move in range(MOVES):
                target = versions[(move + 1) % len(versions)]
                started = time.monotonic()
                stub.SetAlias(
                    registry_pb.SetAliasRequest(name=name, alias="production", version=target),
                    timeout=30,
                )
                wait_until_served(http, name, target)
                moves.append((started, time.monotonic(), target))
                time.sleep(0.1)
        finally:
            stop.set()
            for client in clients:
                client.join(30)
    registry_channel.close()

    answers = [answer for per_client in results for answer in per_client]
    failures = [answer for answer in answers if answer.version is None]
    assert not failures, failures[:5]
    assert len(answers) > 50
    for answer in answers:
        # Live at the time: the alias's target when the request started (possibly the
        # previous one, until the server swapped) up to any move started before it ended.
        first = max(i for i, (_, served, _) in enumerate(moves) if served <= answer.started)
        last = max(i for i, (started, _, _) in enumerate(moves) if started <= answer.finished)
        allowed = {version for _, _, version in moves[max(0, first - 1) : last + 1]}
        assert answer.version in allowed, (answer, moves)
    assert {answer.version for answer in answers} == set(versions)
