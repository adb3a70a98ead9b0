"""OIP over gRPC against a real server: kloop's own stubs, tritonclient (in a subprocess),
health and reflection."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop.oip.v2.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from kloop_inference.tensors import encode_raw
from kloop_model import SentimentClassifier

from .conftest import ServerThread

TEXTS = ["I love this product, it is great!", "terrible, awful, bad", "", "naïve café ✓"]


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> GRPCInferenceServiceStub:
    return GRPCInferenceServiceStub(channel)


def text_request(texts: list[str], *, raw: bool, **fields: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="sentiment", **fields)
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    if raw:
        request.raw_input_contents.append(encode_raw(np.array(texts, dtype=object), "BYTES"))
    else:
        tensor.contents.bytes_contents.extend(t.encode() for t in texts)
    return request


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "contents"])
def test_model_infer_scores_like_the_numpy_model(
    stub: GRPCInferenceServiceStub, sentiment_model: SentimentClassifier, raw: bool
) -> None:
    response = stub.ModelInfer(text_request(TEXTS, raw=raw, id="a-1"), timeout=10)
    assert (response.model_name, response.model_version, response.id) == ("sentiment", "1", "a-1")
    if raw:
        scores = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    else:
        scores = np.array(response.outputs[0].contents.fp32_contents, dtype=np.float32)
    np.testing.assert_allclose(scores, sentiment_model.predict_proba(TEXTS), atol=1e-6)
    assert list(response.outputs[0].shape) == [len(TEXTS)]


def test_versions_are_numbers_or_aliases(stub: GRPCInferenceServiceStub) -> None:
    for version in ("", "1", "production"):
        response = stub.ModelInfer(
            text_request(["ok"], raw=True, model_version=version), timeout=10
        )
        assert response.model_version == "1"


def error_of(
    stub: GRPCInferenceServiceStub, request: pb.ModelInferRequest
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=10)
    return info.value.code(), info.value.details()


def test_errors_have_the_right_codes_and_say_what_is_wrong(stub: GRPCInferenceServiceStub) -> None:
    bad_utf8 = text_request(["x"], raw=False)
    bad_utf8.inputs[0].contents.bytes_contents[0] = b"\xc3\x28"
    assert error_of(stub, bad_utf8) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'text': BYTES element 0 is not valid UTF-8 (byte 0xc3 at offset 0)",
    )
    short = text_request(["a", "b"], raw=False)
    short.inputs[0].shape[:] = [3]
    assert error_of(stub, short) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'text': shape [3] needs 3 elements, contents.bytes_contents has 2",
    )
    wrong_type = pb.ModelInferRequest(model_name="sentiment")
    wrong_type.inputs.add(name="text", datatype="FP32", shape=[1]).contents.fp32_contents.append(1)
    assert error_of(stub, wrong_type) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'text' must be BYTES, got FP32",
    )
    unknown_input = text_request(["a"], raw=True)
    unknown_input.inputs[0].name = "words"
    assert error_of(stub, unknown_input) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'sentiment' has no input named 'words'; inputs: text",
    )
    unknown_model = text_request(["a"], raw=True)
    unknown_model.model_name = "nope"
    code, message = error_of(stub, unknown_model)
    assert (code, message.split(";")[0]) == (
        grpc.StatusCode.NOT_FOUND,
        "model 'nope' is not served here",
    )
    code, _ = error_of(stub, text_request(["a"], raw=True, model_version="canary"))
    assert code == grpc.StatusCode.NOT_FOUND


def test_readiness_metadata_health_and_reflection(
    stub: GRPCInferenceServiceStub, channel: grpc.Channel
) -> None:
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name="sentiment")).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="sentiment", version="canary")).ready
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelReady(pb.ModelReadyRequest(name="nope"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert stub.ServerMetadata(pb.ServerMetadataRequest()).extensions == ["binary_tensor_data"]
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="numeric"))
    assert (metadata.versions, metadata.platform) == (["3"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("x", "FP32", [-1, 3]),
        ("count", "INT64", [-1]),
        ("on", "BOOL", [-1]),
    ]
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
    )
    names = {service.name for service in answer.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_unmodified_tritonclient_grpc(
    server: ServerThread, sentiment_model: SentimentClassifier
) -> None:
    probe = Path(__file__).with_name("triton_grpc_probe.py")
    completed = subprocess.run(
        [sys.executable, str(probe), server.grpc, *TEXTS],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = json.loads(completed.stdout)
    assert (found["live"], found["ready"], found["model_ready"]) == (True, True, True)
    assert (found["model_version"], found["id"]) == ("1", "g-1")
    np.testing.assert_allclose(
        found["probabilities"], sentiment_model.predict_proba(TEXTS), atol=1e-6
    )
    assert found["metadata"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]
    assert found["errors"]["unknown_model"][0] == "StatusCode.NOT_FOUND"
    assert found["errors"]["absent_alias"][0] == "StatusCode.NOT_FOUND"
    assert found["errors"]["wrong_datatype"] == [
        "StatusCode.INVALID_ARGUMENT",
        "input 'text' must be BYTES, got FP32",
    ]
