"""Text-embedding models: tokenizer in front of a graph, served over OIP HTTP and gRPC.

A tiny hand-built BERT-shaped graph with the real all-MiniLM-L6-v2 tokenizer.json."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop.oip.v2.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kloop_inference.models import ModelLoadError, load_model
from kloop_inference.tensors import TensorError, TensorSpec
from kloop_inference.text_embedding import TextEncoder, TokenizerError

from .conftest import ServerThread, make_settings, write_repository
from .embedding_models import DIM, TOKENIZER_JSON, tiny_embedder_onnx, write_embedder_repository
from .test_models import NullObserver

TEXTS = [
    "A man is playing a guitar.",
    "",
    "Ünïcödé: naïve café, 東京 🙂",
    "punctuation!!! ... ?? (x+y)=z",
]
LONG_TEXT = " ".join(f"word{i} lorem ipsum" for i in range(300))  # > 256 tokens
GRAPH_INPUTS = tuple(
    TensorSpec(name, "INT64", (-1, -1))
    for name in ("input_ids", "attention_mask", "token_type_ids")
)


@pytest.fixture(scope="module")
def tokenizer_json() -> bytes:
    return TOKENIZER_JSON.read_bytes()


@pytest.fixture(scope="module")
def embedder_onnx() -> bytes:
    return tiny_embedder_onnx()


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


# --- the encoder ---------------------------------------------------------------------


def test_encoder_pads_to_the_longest_text_and_truncates_at_256(tokenizer_json: bytes) -> None:
    encoder = TextEncoder(tokenizer_json, GRAPH_INPUTS, max_tokens=256)
    feed = encoder.encode({"text": np.array(["hi", "a longer sentence here"], dtype=object)})
    assert set(feed) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(a.dtype == np.int64 for a in feed.values())
    # [CLS] hi [SEP] padded to [CLS] a longer sentence here [SEP]: 6 tokens, not 128.
    assert feed["input_ids"].shape == (2, 6)
    assert feed["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1] * 6]
    assert not feed["token_type_ids"].any()
    # The shipped file says truncation 128; served, it is 256 (sentence-transformers').
    long = encoder.encode({"text": np.array([LONG_TEXT], dtype=object)})
    assert long["input_ids"].shape == (1, 256)


def test_encoder_feeds_only_what_the_graph_takes(tokenizer_json: bytes) -> None:
    inputs = (TensorSpec("input_ids", "INT32", (-1, -1)),)
    feed = TextEncoder(tokenizer_json, inputs, 256).encode({"text": np.array(["x"], dtype=object)})
    assert list(feed) == ["input_ids"] and feed["input_ids"].dtype == np.int32


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ((TensorSpec("text", "BYTES", (-1,)),), "must take input_ids"),
        ((TensorSpec("input_ids", "FP32", (-1, -1)),), "INT64 or INT32"),
        ((TensorSpec("input_ids", "INT64", (-1,)),), "shape \\[batch, sequence\\]"),
    ],
)
def test_encoder_refuses_graphs_that_do_not_take_tokens(
    tokenizer_json: bytes, inputs: tuple[TensorSpec, ...], message: str
) -> None:
    with pytest.raises(TokenizerError, match=message):
        TextEncoder(tokenizer_json, inputs, 256)


def test_encoder_refuses_a_file_that_is_not_a_tokenizer() -> None:
    with pytest.raises(TokenizerError, match="cannot be loaded"):
        TextEncoder(b'{"not": "a tokenizer"}', GRAPH_INPUTS, 256)


# --- loading ---------------------------------------------------------------------------


def load_embedder(model: bytes, tokenizer: bytes, executor: ThreadPoolExecutor):
    return load_model(
        "embedder",
        "1",
        "sha",
        model,
        settings=make_settings(),
        executor=executor,
        observer=NullObserver(),
        tokenizer_json=tokenizer,
    )


def test_a_model_with_a_tokenizer_takes_text_and_answers_unit_embeddings(
    embedder_onnx: bytes, tokenizer_json: bytes, executor: ThreadPoolExecutor
) -> None:
    model = load_embedder(embedder_onnx, tokenizer_json, executor)
    assert model.task == "text-embedding"
    assert model.signature.inputs == (TensorSpec("text", "BYTES", (-1,)),)
    assert model.signature.outputs == (TensorSpec("embedding", "FP32", (-1, DIM)),)
    assert model.signature.batchable
    assert model.cost.per_row_us > 0  # warmed up through the tokenizer
    batch = model.execute({"text": np.array([*TEXTS, LONG_TEXT], dtype=object)})["embedding"]
    assert batch.shape == (5, DIM) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-6)
    # Padding to the batch's longest text changes nothing: the graph pools by the mask.
    single = np.concatenate(
        [model.execute({"text": np.array([t], dtype=object)})["embedding"] for t in TEXTS]
    )
    np.testing.assert_allclose(batch[:4], single, atol=1e-6)
    with pytest.raises(TensorError, match="at least one text"):
        model.execute({"text": np.array([], dtype=object)})


def test_a_tokenizer_on_a_graph_that_takes_text_is_a_load_error(
    sentiment_onnx: bytes, tokenizer_json: bytes, executor: ThreadPoolExecutor
) -> None:
    with pytest.raises(ModelLoadError, match="must take input_ids"):
        load_embedder(sentiment_onnx, tokenizer_json, executor)


# --- served ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedding_server(
    tmp_path_factory: pytest.TempPathFactory, embedder_onnx: bytes, sentiment_onnx: bytes
) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("embedding-repository")
    write_repository(root, {"sentiment": {"1": sentiment_onnx}})
    write_embedder_repository(root, "embedder", embedder_onnx, version="2")
    settings = make_settings(
        model_repository=root,
        models={"sentiment": ["production"]},
        embedding_model="embedder",
        max_queue_delay_ms=2.0,
    )
    with ServerThread(settings) as running:
        running.wait_ready()
        yield running


def test_settings_add_the_embedding_model_to_the_served_models() -> None:
    settings = make_settings(embedding_model="embedder")
    assert settings.models == {"sentiment": ["production"], "embedder": ["production"]}
    with pytest.raises(ValueError, match="embedding_model"):
        make_settings(embedding_model="bad name!")


def test_http_metadata_and_tritonclient_embeddings(
    embedding_server: ServerThread, embedder_onnx: bytes, tokenizer_json: bytes
) -> None:
    with httpx.Client(base_url=f"http://{embedding_server.http}", timeout=10) as http:
        meta = http.get("/v2/models/embedder").json()
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, DIM]}]
        assert http.get("/v2/models/embedder/ready").status_code == 200
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}]}
        answer = http.post("/v2/models/embedder/infer", json=body).json()
        assert answer["model_version"] == "2"
        assert answer["outputs"][0]["shape"] == [2, DIM]
        # Bad input: a clear 400, never a 500.
        wrong = {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
        refused = http.post("/v2/models/embedder/infer", json=wrong)
        assert refused.status_code == 400 and "must be BYTES" in refused.json()["error"]
        matrix = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 1], "data": ["a"]}]}
        assert http.post("/v2/models/embedder/infer", json=matrix).status_code == 400
        metrics = http.get("/metrics").text
        assert 'model="embedder"' in metrics

    triton = triton_http.InferenceServerClient(embedding_server.http)
    tensor = triton_http.InferInput("text", [len(TEXTS)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
    served = triton.infer("embedder", [tensor]).as_numpy("embedding")
    expected = load_embedder(embedder_onnx, tokenizer_json, ThreadPoolExecutor(1)).execute(
        {"text": np.array(TEXTS, dtype=object)}
    )["embedding"]
    assert served.shape == (len(TEXTS), DIM)
    np.testing.assert_allclose(served, expected, atol=1e-6)


def test_grpc_embeddings_and_concurrent_requests_batch(embedding_server: ServerThread) -> None:
    with grpc.insecure_channel(embedding_server.grpc) as channel:
        stub = GRPCInferenceServiceStub(channel)

        def ask(texts: list[str]) -> np.ndarray:
            request = pb.ModelInferRequest(model_name="embedder")
            request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
            request.inputs[0].contents.bytes_contents.extend(t.encode() for t in texts)
            response = stub.ModelInfer(request, timeout=10)
            assert list(response.outputs[0].shape) == [len(texts), DIM]
            return np.array(response.outputs[0].contents.fp32_contents).reshape(-1, DIM)

        together = ask(TEXTS)
        with ThreadPoolExecutor(4) as pool:
            apart = list(pool.map(lambda t: ask([t]), TEXTS * 4))
        np.testing.assert_allclose(np.concatenate(apart[:4]), together, atol=1e-6)
        # Unknown input name -> INVALID_ARGUMENT with the served input named.
        bad = pb.ModelInferRequest(model_name="embedder")
        bad.inputs.add(name="input_ids", datatype="BYTES", shape=[1])
        bad.inputs[0].contents.bytes_contents.append(b"x")
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(bad, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "inputs: text" in (caught.value.details() or "")
    batches = [
        line
        for line in httpx.get(f"http://{embedding_server.http}/metrics").text.splitlines()
        if line.startswith("kloop_inference_batch") and 'model="embedder"' in line
    ]
    assert batches, "batching metrics for the embedder"


def test_the_embedder_alone_makes_the_server_ready(tmp_path: Path, embedder_onnx: bytes) -> None:
    root = write_embedder_repository(tmp_path, "minilm", embedder_onnx)
    settings = make_settings(model_repository=root, models={"minilm": ["production"]})
    with ServerThread(settings) as running:
        running.wait_ready()
        assert httpx.get(f"http://{running.http}/v2/health/ready").status_code == 200
