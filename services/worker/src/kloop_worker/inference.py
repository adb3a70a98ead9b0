"""Scoring texts through the inference service's Open Inference Protocol (gRPC)."""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop.oip.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from kloop_core.errors import FailedPrecondition, Internal, error_from_rpc
from kloop_core.resilience import grpc_channel

_FLOAT_FORMATS = {"FP32": "f", "FP64": "d"}


@dataclass(frozen=True, slots=True)
class Signature:
    input_name: str
    output_name: str


def _row_shape(shape: Sequence[int]) -> bool:
    return len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)


def signature_from_metadata(metadata: pb.ModelMetadataResponse) -> Signature:
    """One BYTES input (the texts) and a float output (a score per text), by name."""
    texts = [t for t in metadata.inputs if t.datatype == "BYTES" and _row_shape(t.shape)]
    scores = [t for t in metadata.outputs if t.datatype in _FLOAT_FORMATS and _row_shape(t.shape)]
    if len(metadata.inputs) != 1 or len(texts) != 1 or not scores:
        raise FailedPrecondition(
            f"model '{metadata.name}' is not a text scorer: one BYTES input of shape [-1] "
            "and a FP32/FP64 output of shape [-1] or [-1, 1] are needed"
        )
    return Signature(texts[0].name, scores[0].name)


def infer_request(
    model: str, version: str, signature: Signature, texts: Sequence[str]
) -> pb.ModelInferRequest:
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
    """One score per text, from `contents` or `raw_output_contents` (both are legal)."""
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
        if len(values) == rows:
            return values
        break
    raise Internal(f"inference answered without {rows} scores in '{signature.output_name}'")


class InferenceClient:
    """Blocking ModelInfer calls (one per chunk), thread-safe; gRPC failures become
    kloop errors (UNAVAILABLE -> Unavailable: transient, retried by the caller)."""

    def __init__(self, target: str, *, timeout: float) -> None:
        self._timeout = timeout
        self._channel = grpc_channel(target)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._signatures: dict[str, Signature] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def _signature(self, model: str) -> Signature:
        with self._lock:
            known = self._signatures.get(model)
        if known is not None:
            return known
        metadata = self._call(self._stub.ModelMetadata, pb.ModelMetadataRequest(name=model))
        signature = signature_from_metadata(metadata)
        with self._lock:
            self._signatures[model] = signature
        return signature

    def score(self, model: str, version: str, texts: Sequence[str]) -> tuple[str, list[float]]:
        """(the version that answered, one score per text) in one request."""
        signature = self._signature(model)
        request = infer_request(model, version, signature, texts)
        try:
            response = self._call(self._stub.ModelInfer, request)
        except FailedPrecondition:
            with self._lock:  # perhaps a new version with another signature
                self._signatures.pop(model, None)
            raise
        return response.model_version, scores_from_response(response, signature, len(texts))

    def _call(self, method: grpc.UnaryUnaryMultiCallable, request: Any) -> Any:
        try:
            return method(request, timeout=self._timeout)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None
