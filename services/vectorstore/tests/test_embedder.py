"""Embedding through the real inference server (services/inference, as a process)
serving a self-contained ONNX embedding model (BYTES `text` -> FP32 `embedding`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from kloop.oip.v2 import grpc_predict_v2_pb2 as oip
from kloop.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from kloop.vectorstore.v1 import vectorstore_pb2 as pb
from kloop_client.local import free_port
from kloop_core.resilience import Deadline
from kloop_vectorstore.embedder import InferenceEmbedder, decode_embeddings

from .conftest import ServiceFactory, embedding_models
from .test_grpc_server import CORPUS, create, search, struct

MODEL = embedding_models.MODEL


@pytest.fixture(scope="module")
def inference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("models")
    folder = root / MODEL / "3"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(embedding_models.concepts_onnx())
    port = free_port()
    env = {
        **os.environ,
        "KLOOP_INFERENCE_GRPC_PORT": str(port),
        "KLOOP_INFERENCE_HTTP_PORT": str(free_port()),
        "KLOOP_INFERENCE_MODEL_REPOSITORY": str(root),
        "KLOOP_INFERENCE_MODELS": json.dumps({MODEL: ["production"]}),
        "KLOOP_INFERENCE_CACHE_DIR": str(root / "cache"),
        "KLOOP_INFERENCE_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kloop_inference.main"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    stub = oip_grpc.GRPCInferenceServiceStub(channel)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if stub.ModelReady(oip.ModelReadyRequest(name=MODEL), timeout=1).ready:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, "inference server did not become ready"
            time.sleep(0.2)
        yield address
    finally:
        channel.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_decode_handles_raw_output_contents() -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    response = oip.ModelInferResponse(
        outputs=[
            oip.ModelInferResponse.InferOutputTensor(
                name="embedding", datatype="FP32", shape=[2, 3]
            )
        ],
        raw_output_contents=[matrix.astype("<f4").tobytes()],
    )
    assert np.array_equal(decode_embeddings("m", response, 2), matrix)


@pytest.mark.slow
def test_real_inference_server_embeds_like_the_reference(inference: str) -> None:
    embedder = InferenceEmbedder(inference, batch_size=2)
    texts = ["Fixing my CAR", "printer error E4021", "bread", "nothing known here", "motor"]
    result = embedder.embed(MODEL, texts, Deadline(10))
    embedder.close()
    assert result.model_version == "3"
    assert np.allclose(result.vectors, embedding_models.embed(texts), atol=1e-6)


@pytest.mark.slow
def test_service_upserts_and_searches_texts_through_the_real_server(
    inference: str, start: ServiceFactory, backend_kind: str
) -> None:
    stub = start(backend_kind, inference).stub
    create(stub)
    docs = [pb.Document(id=i, text=t, metadata=struct(m)) for i, t, m in CORPUS]
    response = stub.Upsert(pb.UpsertRequest(collection="docs", documents=docs), timeout=20)
    assert response.upserted == len(CORPUS) and response.embedding_model_version == "3"
    assert search(stub, text="printer error E4021", k=1) == ["d3"]
    result = stub.Search(pb.SearchRequest(collection="docs", text="bread loaf", mode=pb.DENSE))
    assert result.hits[0].id == "d5" and result.embedding_model_version == "3"
