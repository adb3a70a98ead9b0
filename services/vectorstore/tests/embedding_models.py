"""A tiny "concept" embedding model, twice: in NumPy behind a stand-in OIP server, and
as a self-contained ONNX graph served by the real inference server.

Words map to concepts (synonyms share one: car/automobile/vehicle), a text's vector is
its bag of concepts plus a small constant, L2-normalised. So dense search understands
paraphrases, and is blind to words it does not know (error codes), which BM25 sees.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kloop.oip.v2 import grpc_predict_v2_pb2 as oip
from kloop.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc

DIM = 12
MODEL = "concepts"
CONCEPTS: dict[str, int] = {
    **dict.fromkeys(["car", "cars", "automobile", "vehicle"], 0),
    **dict.fromkeys(["repair", "repairing", "fixing", "fix", "maintenance", "service"], 1),
    **dict.fromkeys(["engine", "motor"], 2),
    **dict.fromkeys(["printer", "laserjet"], 3),
    **dict.fromkeys(["error", "fault", "failure"], 4),
    **dict.fromkeys(["paper", "sheet"], 5),
    **dict.fromkeys(["bread", "baking", "loaf"], 6),
    **dict.fromkeys(["wash", "cleaning"], 7),
    **dict.fromkeys(["price", "prices", "cost"], 8),
}
BIAS = 0.05  # on the last dimension: no text is the zero vector


def embed(texts: list[str]) -> np.ndarray:
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            if word in CONCEPTS:
                out[row, CONCEPTS[word]] += 1.0
        out[row, DIM - 1] += BIAS
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@dataclass
class StandInInference(oip_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """ModelInfer for `MODEL` (version "7"), recording the batch sizes it saw."""

    batches: list[int] = field(default_factory=list)
    delay_seconds: float = 0.0
    dim: int = DIM

    def ModelInfer(
        self, request: oip.ModelInferRequest, context: grpc.ServicerContext
    ) -> oip.ModelInferResponse:
        if request.model_name != MODEL:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model_name!r} not served")
        tensor = request.inputs[0]
        if tensor.name != "text" or tensor.datatype != "BYTES":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "expected BYTES input 'text'")
        if self.delay_seconds:
            threading.Event().wait(self.delay_seconds)
        texts = [b.decode() for b in tensor.contents.bytes_contents]
        self.batches.append(len(texts))
        vectors = embed(texts)
        if self.dim != DIM:
            vectors = np.zeros((len(texts), self.dim), dtype=np.float32) + 1.0
        return oip.ModelInferResponse(
            model_name=MODEL,
            model_version="7",
            outputs=[
                oip.ModelInferResponse.InferOutputTensor(
                    name="embedding",
                    datatype="FP32",
                    shape=list(vectors.shape),
                    contents=oip.InferTensorContents(fp32_contents=vectors.ravel().tolist()),
                )
            ],
        )


@contextmanager
def serve_stand_in(servicer: StandInInference) -> Iterator[str]:
    server = grpc.server(ThreadPoolExecutor(4))
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def concepts_onnx() -> bytes:
    """The same model as `embed`, as an ONNX graph: BYTES `text` [N] -> FP32
    `embedding` [N, DIM]. StringNormalizer -> StringSplit -> LabelEncoder(word ->
    concept, else a zero row) -> Gather -> ReduceSum -> + bias -> L2 normalise."""
    words = sorted(CONCEPTS)
    table = np.zeros((DIM, DIM), dtype=np.float32)  # row c: one-hot concept c
    for c in range(DIM - 1):
        table[c, c] = 1.0
    # The last row (index DIM - 1) stands for unknown words and padding: zeros.
    table[DIM - 1, :] = 0.0
    bias = np.zeros(DIM, dtype=np.float32)
    bias[DIM - 1] = BIAS
    graph = helper.make_graph(
        [
            helper.make_node(
                "StringNormalizer",
                ["text"],
                ["lowered"],
                case_change_action="LOWER",
                is_case_sensitive=1,
                locale="C",
            ),
            helper.make_node("StringSplit", ["lowered"], ["tokens", "counts"]),
            helper.make_node(
                "LabelEncoder",
                ["tokens"],
                ["ids"],
                domain="ai.onnx.ml",
                keys_strings=words,
                values_int64s=[CONCEPTS[w] for w in words],
                default_int64=DIM - 1,
            ),
            helper.make_node("Gather", ["table", "ids"], ["rows"]),
            helper.make_node("ReduceSum", ["rows", "axis1"], ["bag"], keepdims=0),
            helper.make_node("Add", ["bag", "bias"], ["biased"]),
            helper.make_node("LpNormalization", ["biased"], ["embedding"], axis=-1, p=2),
        ],
        "concepts",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", DIM])],
        initializer=[
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model.SerializeToString()
