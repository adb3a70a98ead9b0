"""Open Inference Protocol messages for a text scorer: pure building and parsing.

A model the gateway can serve takes one BYTES input (a batch of texts, shape [-1]) and
has a floating-point output of shape [-1] or [-1, 1] (the score per text). Names are
read from the model's metadata, never assumed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop_core.errors import FailedPrecondition, Internal

_FLOAT_FORMATS = {"FP32": "f", "FP64": "d"}


@dataclass(frozen=True, slots=True)
class Signature:
    input_name: str
    output_name: str


def _row_shape(shape: Sequence[int]) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def signature_from_metadata(metadata: pb.ModelMetadataResponse) -> Signature:
    """The text input and the score output; FailedPrecondition if the model is not a
    text scorer."""
    texts = [t for t in metadata.inputs if t.datatype == "BYTES" and _row_shape(t.shape)]
    scores = [t for t in metadata.outputs if t.datatype in _FLOAT_FORMATS and _row_shape(t.shape)]
    if len(metadata.inputs) != 1 or len(texts) != 1 or not scores:
        raise FailedPrecondition(
            f"model '{metadata.name}' is not a text scorer: the gateway needs one BYTES "
            "input of shape [-1] and a FP32/FP64 output of shape [-1] or [-1, 1]"
        )
    return Signature(input_name=texts[0].name, output_name=scores[0].name)


def infer_request(
    model: str, version: str, signature: Signature, texts: Sequence[str]
) -> pb.ModelInferRequest:
    """`texts` must already be valid Unicode (see texts.check_texts)."""
    return pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name=signature.input_name,
                datatype="BYTES",
                shape=[len(texts)],
                contents=pb.InferTensorContents(bytes_contents=[t.encode() for t in texts]),
            )
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=signature.output_name)],
    )


def scores_from_response(
    response: pb.ModelInferResponse, signature: Signature, rows: int
) -> list[float]:
    """One score per text, from `contents` or `raw_output_contents` (either is legal)."""
    for index, output in enumerate(response.outputs):
        if output.name != signature.output_name:
            continue
        fmt = _FLOAT_FORMATS.get(output.datatype)
        if fmt is None:
            break
        if output.datatype == "FP32" and output.contents.fp32_contents:
            values = list(output.contents.fp32_contents)
        elif output.datatype == "FP64" and output.contents.fp64_contents:
            values = list(output.contents.fp64_contents)
        elif index < len(response.raw_output_contents):
            raw = response.raw_output_contents[index]
            size = struct.calcsize(fmt)
            if len(raw) % size:
                break
            values = list(struct.unpack(f"<{len(raw) // size}{fmt}", raw))
        else:
            values = []
        if len(values) != rows:
            break
        return values
    raise Internal(f"inference answered without {rows} scores in output '{signature.output_name}'")
