"""Embedding texts through the inference server (Open Inference Protocol V2, gRPC).

The contract of an embedding model: input `text`, BYTES, shape [n]; output
`embedding`, FP32, shape [n, dim]. Texts go in batches of `batch_size`; each call gets
the smaller of `timeout_seconds` and what is left of the request's deadline, and is
retried (ModelInfer is idempotent) only while the server says UNAVAILABLE /
RESOURCE_EXHAUSTED. A server that is down fails the request with UNAVAILABLE at once
(gRPC does not wait for a connection unless asked to).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from opentelemetry import trace

from kloop.oip.v2 import grpc_predict_v2_pb2 as oip
from kloop.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from kloop_core.errors import FailedPrecondition, Unavailable, error_from_rpc
from kloop_core.resilience import Deadline, grpc_channel, is_retryable_rpc_error, retry_call
from kloop_core.tracing import get_tracer
from kloop_vectorstore.metrics import EMBEDDED_TEXTS, EMBEDDING_CALLS, EMBEDDING_DURATION

INPUT_NAME = "text"
OUTPUT_NAME = "embedding"
CONTRACT = f"BYTES `{INPUT_NAME}` [n] in, FP32 `{OUTPUT_NAME}` [n, dim] out"

tracer = get_tracer(__name__)


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [n, dim]
    model_version: str


def infer_request(model: str, texts: Sequence[str]) -> oip.ModelInferRequest:
    return oip.ModelInferRequest(
        model_name=model,
        inputs=[
            oip.ModelInferRequest.InferInputTensor(
                name=INPUT_NAME,
                datatype="BYTES",
                shape=[len(texts)],
                contents=oip.InferTensorContents(bytes_contents=[t.encode() for t in texts]),
            )
        ],
        outputs=[oip.ModelInferRequest.InferRequestedOutputTensor(name=OUTPUT_NAME)],
    )


def decode_embeddings(model: str, response: oip.ModelInferResponse, rows: int) -> np.ndarray:
    """The [rows, dim] float32 matrix of a ModelInferResponse (typed or raw contents)."""
    for index, output in enumerate(response.outputs):
        if output.name != OUTPUT_NAME:
            continue
        if output.datatype != "FP32":
            raise FailedPrecondition(
                f"embedding model {model!r} returned {output.datatype}, expected {CONTRACT}"
            )
        if index < len(response.raw_output_contents):
            flat = np.frombuffer(response.raw_output_contents[index], dtype="<f4")
        else:
            flat = np.asarray(output.contents.fp32_contents, dtype=np.float32)
        shape = tuple(output.shape)
        if len(shape) != 2 or shape[0] != rows or flat.size != shape[0] * shape[1]:
            raise FailedPrecondition(
                f"embedding model {model!r} returned shape {list(shape)} for {rows} texts;"
                f" expected {CONTRACT}"
            )
        return flat.reshape(shape).astype(np.float32, copy=False)
    raise FailedPrecondition(
        f"embedding model {model!r} has no output {OUTPUT_NAME!r} ({CONTRACT})"
    )


class InferenceEmbedder:
    def __init__(
        self,
        address: str,
        *,
        batch_size: int = 64,
        timeout_seconds: float = 10.0,
        attempts: int = 2,
    ) -> None:
        self.address = address
        self._batch_size = batch_size
        self._timeout = timeout_seconds
        self._attempts = attempts
        self._channel = grpc_channel(address)
        self._stub = oip_grpc.GRPCInferenceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def embed(
        self, model: str, texts: Sequence[str], deadline: Deadline, *, purpose: str = "document"
    ) -> Embeddings:
        """Embed `texts` in batches; raises Unavailable / FailedPrecondition."""
        with tracer.start_as_current_span(
            f"embeddings {model}", kind=trace.SpanKind.CLIENT
        ) as span:
            span.set_attribute("gen_ai.operation.name", "embeddings")
            span.set_attribute("gen_ai.request.model", model)
            span.set_attribute("gen_ai.system", "kloop.inference")
            span.set_attribute("server.address", self.address)
            span.set_attribute("kloop.embed.texts", len(texts))
            span.set_attribute("kloop.embed.purpose", purpose)
            parts: list[np.ndarray] = []
            version = ""
            for start in range(0, len(texts), self._batch_size):
                batch = texts[start : start + self._batch_size]
                matrix, version = self._call(model, batch, deadline)
                parts.append(matrix)
            vectors = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
            span.set_attribute("gen_ai.response.model", f"{model}:{version}" if version else model)
            span.set_attribute("gen_ai.embeddings.dimension.count", int(vectors.shape[1]))
            EMBEDDED_TEXTS.labels(model, purpose).inc(len(texts))
            return Embeddings(vectors, version)

    def _call(self, model: str, texts: Sequence[str], deadline: Deadline) -> tuple[np.ndarray, str]:
        request = infer_request(model, texts)
        started = time.perf_counter()
        try:
            response = retry_call(
                lambda: self._stub.ModelInfer(request, timeout=deadline.timeout(self._timeout)),
                attempts=self._attempts,
                retry_on=is_retryable_rpc_error,
                deadline=deadline,
            )
        except grpc.RpcError as exc:
            EMBEDDING_CALLS.labels(model, "error").inc()
            raise self._error(model, exc) from exc
        finally:
            EMBEDDING_DURATION.labels(model).observe(time.perf_counter() - started)
        EMBEDDING_CALLS.labels(model, "ok").inc()
        return decode_embeddings(model, response, len(texts)), response.model_version

    def _error(self, model: str, exc: grpc.RpcError) -> Exception:
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return Unavailable(f"the inference server at {self.address} is unavailable")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return Unavailable(f"the inference server at {self.address} did not answer in time")
        if code == grpc.StatusCode.NOT_FOUND:
            return FailedPrecondition(
                f"embedding model {model!r} is not served by the inference server: {details}"
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return FailedPrecondition(
                f"embedding model {model!r} rejected the request ({details});"
                f" an embedding model takes {CONTRACT}"
            )
        return error_from_rpc(exc)
