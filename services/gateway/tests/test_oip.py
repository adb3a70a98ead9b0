from __future__ import annotations

import struct

import pytest

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop_core.errors import FailedPrecondition, Internal
from kloop_gateway.oip import (
    Signature,
    infer_request,
    scores_from_response,
    signature_from_metadata,
)

Tensor = pb.ModelMetadataResponse.TensorMetadata


def test_signature_from_metadata() -> None:
    metadata = pb.ModelMetadataResponse(
        name="m",
        inputs=[Tensor(name="sentence", datatype="BYTES", shape=[-1])],
        outputs=[
            Tensor(name="ids", datatype="INT64", shape=[-1]),
            Tensor(name="p", datatype="FP32", shape=[-1, 1]),
        ],
    )
    assert signature_from_metadata(metadata) == Signature("sentence", "p")


@pytest.mark.parametrize(
    ("inputs", "outputs"),
    [
        (
            [Tensor(name="x", datatype="FP32", shape=[-1, 3])],
            [Tensor(name="p", datatype="FP32", shape=[-1])],
        ),
        (
            [Tensor(name="t", datatype="BYTES", shape=[-1])],
            [Tensor(name="p", datatype="FP32", shape=[-1, 2])],
        ),
        (
            [
                Tensor(name="a", datatype="BYTES", shape=[-1]),
                Tensor(name="b", datatype="BYTES", shape=[-1]),
            ],
            [Tensor(name="p", datatype="FP32", shape=[-1])],
        ),
    ],
)
def test_models_that_are_not_text_scorers_are_refused(
    inputs: list[pb.ModelMetadataResponse.TensorMetadata],
    outputs: list[pb.ModelMetadataResponse.TensorMetadata],
) -> None:
    with pytest.raises(FailedPrecondition, match="not a text scorer"):
        signature_from_metadata(pb.ModelMetadataResponse(name="m", inputs=inputs, outputs=outputs))


def test_infer_request() -> None:
    request = infer_request("m", "canary", Signature("text", "p"), ["a", "é"])
    assert (request.model_name, request.model_version) == ("m", "canary")
    (tensor,) = request.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("text", "BYTES", [2])
    assert list(tensor.contents.bytes_contents) == [b"a", "é".encode()]
    assert [o.name for o in request.outputs] == ["p"]


def _output(datatype: str, **kw: object) -> pb.ModelInferResponse.InferOutputTensor:
    return pb.ModelInferResponse.InferOutputTensor(name="p", datatype=datatype, shape=[2], **kw)  # type: ignore[arg-type]


def test_scores_from_contents_and_raw_outputs() -> None:
    signature = Signature("text", "p")
    fp32 = pb.ModelInferResponse(
        outputs=[_output("FP32", contents=pb.InferTensorContents(fp32_contents=[0.25, 0.5]))]
    )
    assert scores_from_response(fp32, signature, 2) == [0.25, 0.5]
    raw = pb.ModelInferResponse(
        outputs=[_output("FP64")], raw_output_contents=[struct.pack("<2d", 0.125, 0.75)]
    )
    assert scores_from_response(raw, signature, 2) == [0.125, 0.75]


@pytest.mark.parametrize(
    "response",
    [
        pb.ModelInferResponse(),
        pb.ModelInferResponse(
            outputs=[_output("FP32", contents=pb.InferTensorContents(fp32_contents=[0.5]))]
        ),
        pb.ModelInferResponse(outputs=[_output("FP32")], raw_output_contents=[b"\x00" * 7]),
        pb.ModelInferResponse(outputs=[_output("INT64")]),
    ],
)
def test_answers_without_one_score_per_text_are_internal_errors(
    response: pb.ModelInferResponse,
) -> None:
    with pytest.raises(Internal):
        scores_from_response(response, Signature("text", "p"), 2)
