"""Bring your own embedder, end to end: `kloop models import` -> the registry (real
MLflow, real Redis) -> the inference server follows the alias -> embeddings over HTTP
(tritonclient) and gRPC; a second import hot-reloads it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from typer.testing import CliRunner

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop.oip.v2.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kloop_client.cli import app as kloop_cli
from kloop_core.grpc_server import start_service
from kloop_registry.main import build_app
from kloop_registry.settings import RegistrySettings

from .conftest import ServerThread, make_settings
from .embedding_models import DIM, TOKENIZER_JSON, tiny_embedder_onnx

TEXTS = ["the cat sat on the mat", "a cat sat on a mat", "quarterly revenue grew 4%", ""]


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


def kloop_import(registry: str, model: Path, name: str) -> str:
    result = CliRunner().invoke(
        kloop_cli,
        [
            "models",
            "import",
            str(model),
            "--name",
            name,
            "--tokenizer",
            str(TOKENIZER_JSON),
            "--alias",
            "production",
            "--registry",
            registry,
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    return result.output


def served(http: httpx.Client, name: str) -> tuple[str, np.ndarray]:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}]}
    answer = http.post(f"/v2/models/{name}/infer", json=body).json()
    output = answer["outputs"][0]
    return answer["model_version"], np.array(output["data"], np.float32).reshape(output["shape"])


def test_imported_embedder_is_served_by_alias_and_hot_reloaded(
    registry: str, tmp_path: Path
) -> None:
    name = f"embedder-{uuid.uuid4().hex[:8]}"
    first = tmp_path / "v1.onnx"
    first.write_bytes(tiny_embedder_onnx(seed=1))
    output = kloop_import(registry, first, name)
    assert f"{name} v1 registered: text-embedding model" in output
    assert "production: v- → v1" in output and "not gated" in output

    settings = make_settings(
        registry_addr=registry,
        cache_dir=tmp_path / "cache",
        models={name: ["production"]},
        startup_wait_seconds=30,
    )
    with (
        ServerThread(settings) as running,
        httpx.Client(base_url=f"http://{running.http}", timeout=10) as http,
    ):
        running.wait_ready(60)
        version, embeddings = served(http, name)
        assert version == "1" and embeddings.shape == (len(TEXTS), DIM)
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
        # Texts that share words are closer than texts that do not.
        assert embeddings[0] @ embeddings[1] > embeddings[0] @ embeddings[2]

        triton = triton_http.InferenceServerClient(running.http)
        tensor = triton_http.InferInput("text", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        np.testing.assert_allclose(
            triton.infer(name, [tensor]).as_numpy("embedding"), embeddings, atol=1e-6
        )
        with grpc.insecure_channel(running.grpc) as channel:
            request = pb.ModelInferRequest(model_name=name)
            request.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS)])
            request.inputs[0].contents.bytes_contents.extend(t.encode() for t in TEXTS)
            response = GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=10)
            grpc_embeddings = np.array(response.outputs[0].contents.fp32_contents)
            np.testing.assert_allclose(grpc_embeddings.reshape(-1, DIM), embeddings, atol=1e-6)

        # A second import under the same alias: the server follows the event.
        second = tmp_path / "v2.onnx"
        second.write_bytes(tiny_embedder_onnx(seed=2))
        assert f"{name} v2 registered" in kloop_import(registry, second, name)
        deadline = time.monotonic() + 30
        while (reloaded := served(http, name))[0] != "2":
            assert time.monotonic() < deadline, "v2 was never served"
            time.sleep(0.05)
        assert not np.allclose(reloaded[1], embeddings)
