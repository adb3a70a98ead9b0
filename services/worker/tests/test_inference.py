"""The OIP client: signatures and scores parsed from real messages, and calls to a real
inference server (errors become kloop errors)."""

from __future__ import annotations

import struct

import pytest

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop_core.errors import FailedPrecondition, Internal, NotFound, Unavailable
from kloop_model import SentimentClassifier
from kloop_worker.inference import (
    InferenceClient,
    Signature,
    infer_request,
    scores_from_response,
    signature_from_metadata,
)

TensorMetadata = pb.ModelMetadataResponse.TensorMetadata


def test_signature_from_metadata() -> None:
    metadata = pb.ModelMetadataResponse(
        name="m",
        inputs=[TensorMetadata(name="text", datatype="BYTES", shape=[-1])],
        outputs=[TensorMetadata(name="p", datatype="FP32", shape=[-1, 1])],
    )
    assert signature_from_metadata(metadata) == Signature("text", "p")
    numeric = pb.ModelMetadataResponse(
        name="m",
        inputs=[TensorMetadata(name="x", datatype="FP32", shape=[-1, 3])],
        outputs=[TensorMetadata(name="p", datatype="FP32", shape=[-1])],
    )
    with pytest.raises(FailedPrecondition, match="not a text scorer"):
        signature_from_metadata(numeric)


def test_request_and_scores() -> None:
    signature = Signature("text", "p")
    request = infer_request("m", "production", signature, ["a", "é"])
    assert list(request.inputs[0].contents.bytes_contents) == [b"a", "é".encode()]
    assert request.model_version == "production" and request.outputs[0].name == "p"
    contents = pb.ModelInferResponse(
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(
                name="p", datatype="FP32", contents=pb.InferTensorContents(fp32_contents=[0.5, 1])
            )
        ]
    )
    assert scores_from_response(contents, signature, 2) == [0.5, 1.0]
    raw = pb.ModelInferResponse(
        outputs=[pb.ModelInferResponse.InferOutputTensor(name="p", datatype="FP64")],
        raw_output_contents=[struct.pack("<2d", 0.25, 0.75)],
    )
    assert scores_from_response(raw, signature, 2) == [0.25, 0.75]
    with pytest.raises(Internal, match="without 3 scores"):
        scores_from_response(raw, signature, 3)


def test_scores_from_the_real_server(inference_addr: str, model: SentimentClassifier) -> None:
    client = InferenceClient(inference_addr, timeout=10)
    try:
        version, scores = client.score("sentiment", "production", ["great", "awful"])
        assert version == "1"
        assert scores == pytest.approx(list(model.predict_proba(["great", "awful"])), abs=1e-6)
        with pytest.raises(NotFound):
            client.score("nope", "production", ["x"])
    finally:
        client.close()
    down = InferenceClient("127.0.0.1:1", timeout=2)
    with pytest.raises(Unavailable):
        down.score("sentiment", "production", ["x"])
    down.close()
