"""Export the classifier as one self-contained ONNX graph: raw text in, P(positive) out.

Graph (standard ONNX ops only: ``ai.onnx`` opset 21 and ``ai.onnx.ml`` opset 3 for
LabelEncoder; built with `onnx.helper`, no converter)::

    text [N] string
      -> Concat with a sentinel " "          (so N = 0 and all-empty batches still work)
      -> StringNormalizer(LOWER, locale="C")  (ASCII-only lowercasing, see kloop_model.text)
      -> for each separator c but the space (36 of them):
           StringSplit(delimiter=c) -> Loop: pairwise StringConcat(" ") until one column
                                                  (i.e. replace c by a space)
      -> StringSplit()                        (runs of spaces; [N+1, T] tokens, "" padded)
      -> LabelEncoder(vocabulary -> index, else V) -> Gather(weights + [0])   [N+1, T]
      -> ReduceSum(axis 1) -> Add(bias) -> Sigmoid -> Slice off the sentinel
    probability [N] float32

Why LabelEncoder + Gather rather than TfIdfVectorizer + MatMul: the cost is O(tokens)
instead of a dense [N, V] count matrix (20 MB per 1,000 texts at V = 5,000; ~4x slower
measured). Output dtype is float32 (the runtime's native type); it matches the float64
NumPy model within ~1e-7. Memory is O(N x the most pieces any one text splits into), as
for any padded ``StringSplit``: the serving layer should cap text length.

`signature` describes inputs and outputs (names, OIP datatypes, shapes) for a serving
layer; `parity` runs the graph with onnxruntime against the NumPy model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from kloop_model.classifier import MODEL_FORMAT, MODEL_FORMAT_VERSION, SentimentClassifier
from kloop_model.text import SEPARATORS, TOKENIZER_ID

INPUT_NAME = "text"
OUTPUT_NAME = "probability"
ONNX_OPSET = 21
ONNX_ML_OPSET = 3
ML_DOMAIN = "ai.onnx.ml"
ONNX_IR_VERSION = 10
SIGNATURE_VERSION = 1
# StringNormalizer's locale: "C" lowercases exactly ASCII and exists everywhere.
NORMALIZER_LOCALE = "C"

# metadata_props keys embedded in the exported model.
META_MODEL_NAME = "kloop.model_name"
META_FORMAT = "kloop.model_format"
META_FORMAT_VERSION = "kloop.model_format_version"
META_TOKENIZER = "kloop.tokenizer"
META_VOCAB_SIZE = "kloop.vocab_size"
META_SIGNATURE = "kloop.signature"

# OIP V2 datatype names for ONNX element types.
_OIP_DATATYPES: dict[int, str] = {
    TensorProto.STRING: "BYTES",
    TensorProto.FLOAT: "FP32",
    TensorProto.DOUBLE: "FP64",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT8: "INT8",
    TensorProto.INT16: "INT16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.UINT8: "UINT8",
    TensorProto.UINT16: "UINT16",
    TensorProto.UINT32: "UINT32",
    TensorProto.UINT64: "UINT64",
    TensorProto.BOOL: "BOOL",
}

_DOC = (
    "kloop sentiment classifier: bag-of-words + logistic regression. Input 'text' "
    "(string [N]); output 'probability' (float32 [N]) = P(positive). Tokenizer "
    f"{TOKENIZER_ID}: lowercase ASCII letters, split on space, \\t\\n\\v\\f\\r and ASCII "
    "punctuation, drop empty tokens."
)


def _producer_version() -> str:
    try:
        return metadata.version("kloop-model")
    except metadata.PackageNotFoundError:
        return "0"


def _join_pieces_body() -> onnx.GraphProto:
    """Loop body: [R, K] strings -> [R, ceil(K/2)], joining column i with column
    ceil(K/2)+i by a space (token order does not matter to a bag of words); the odd
    middle column is kept as is. Loops while more than one column is left."""
    nodes = [
        helper.make_node("Shape", ["cols_in"], ["join_k"], start=1, end=2),
        helper.make_node("Add", ["join_k", "const_one"], ["join_k_plus_1"]),
        helper.make_node("Div", ["join_k_plus_1", "const_two"], ["join_half"]),
        helper.make_node("Sub", ["join_k", "join_half"], ["join_floor_half"]),
        helper.make_node(
            "Slice", ["cols_in", "const_zero", "join_floor_half", "const_one"], ["join_left"]
        ),
        helper.make_node("Slice", ["cols_in", "join_half", "join_k", "const_one"], ["join_right"]),
        helper.make_node(
            "Slice", ["cols_in", "join_floor_half", "join_half", "const_one"], ["join_middle"]
        ),
        helper.make_node("StringConcat", ["join_left", "const_space"], ["join_left_space"]),
        helper.make_node("StringConcat", ["join_left_space", "join_right"], ["join_pairs"]),
        helper.make_node("Concat", ["join_pairs", "join_middle"], ["cols_out"], axis=1),
        helper.make_node("Greater", ["join_half", "const_one"], ["join_more"]),
        helper.make_node("Squeeze", ["join_more"], ["cond_out"]),
    ]
    return helper.make_graph(
        nodes,
        "join_pieces",
        [
            helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("cols_in", TensorProto.STRING, ["R", None]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("cols_out", TensorProto.STRING, ["R", None]),
        ],
    )


def _replace_with_space_nodes(
    source: str, separator: str, stage: int
) -> tuple[list[onnx.NodeProto], str]:
    """Nodes turning every `separator` in the [R] strings `source` into a space."""
    prefix = f"sep_{stage:02d}_x{ord(separator):02x}"
    pieces, count, columns = f"{prefix}_pieces", f"{prefix}_count", f"{prefix}_columns"
    nodes = [
        helper.make_node(
            "StringSplit", [source], [pieces, count], name=f"{prefix}_split", delimiter=separator
        ),
        helper.make_node("Shape", [pieces], [columns], start=1, end=2),
        helper.make_node("Greater", [columns, "const_one"], [f"{prefix}_several"]),
        helper.make_node("Squeeze", [f"{prefix}_several"], [f"{prefix}_loop"]),
        helper.make_node(
            "Loop",
            ["", f"{prefix}_loop", pieces],
            [f"{prefix}_joined"],
            name=f"{prefix}_join",
            body=_join_pieces_body(),
        ),
        helper.make_node("Squeeze", [f"{prefix}_joined", "const_one"], [f"{prefix}_out"]),
    ]
    return nodes, f"{prefix}_out"


def _constant_initializers() -> list[onnx.TensorProto]:
    return [
        numpy_helper.from_array(np.array([0], np.int64), "const_zero"),
        numpy_helper.from_array(np.array([1], np.int64), "const_one"),
        numpy_helper.from_array(np.array([2], np.int64), "const_two"),
        numpy_helper.from_array(np.array([-1], np.int64), "const_minus_one"),
        numpy_helper.from_array(np.array(" ", dtype=object), "const_space"),
        numpy_helper.from_array(np.array([" "], dtype=object), "sentinel_text"),
    ]


def _tokenizer_nodes() -> list[onnx.NodeProto]:
    """`INPUT_NAME` [N] -> "tokens" [N+1, T] (the sentinel row last, "" padding)."""
    nodes = [
        helper.make_node("Concat", [INPUT_NAME, "sentinel_text"], ["texts_with_sentinel"], axis=0),
        helper.make_node(
            "StringNormalizer",
            ["texts_with_sentinel"],
            ["lowered"],
            name="lowercase_ascii",
            case_change_action="LOWER",
            is_case_sensitive=1,
            locale=NORMALIZER_LOCALE,
        ),
    ]
    current = "lowered"
    for stage, separator in enumerate(SEPARATORS):
        if separator == " ":
            continue  # the final StringSplit splits on spaces
        stage_nodes, current = _replace_with_space_nodes(current, separator, stage)
        nodes.extend(stage_nodes)
    nodes.append(
        helper.make_node("StringSplit", [current], ["tokens", "token_count"], name="split_spaces")
    )
    return nodes


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    onnx_model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", ONNX_OPSET),
            helper.make_opsetid(ML_DOMAIN, ONNX_ML_OPSET),
        ],
        producer_name="kloop_model",
        producer_version=_producer_version(),
        doc_string=graph.doc_string,
    )
    onnx_model.ir_version = ONNX_IR_VERSION
    return onnx_model


def tokenizer_onnx() -> onnx.ModelProto:
    """The graph's tokenizer alone, for tests and debugging: "text" [N] -> "tokens"
    [N, T] strings padded with "". A row holds the tokens of `kloop_model.text.tokenize`
    as a multiset: the in-graph join does not keep token order (a bag of words needs none).
    """
    nodes = [
        *_tokenizer_nodes(),
        helper.make_node("Slice", ["tokens", "const_zero", "const_minus_one"], ["text_tokens"]),
    ]
    graph = helper.make_graph(
        nodes,
        "kloop_tokenizer",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("text_tokens", TensorProto.STRING, ["N", "T"])],
        initializer=_constant_initializers(),
        doc_string=f"kloop tokenizer {TOKENIZER_ID}",
    )
    return _finish(graph)


def export_onnx(
    model: SentimentClassifier,
    *,
    model_name: str = "sentiment",
    metadata_props: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Build the graph for a fitted `model`. Deterministic: the same model and arguments
    give byte-identical output. `metadata_props` are added to the kloop ones."""
    if not model.is_fitted:
        raise ValueError("cannot export an unfitted model")
    vocab_size = model.vocab_size
    initializers = [
        *_constant_initializers(),
        numpy_helper.from_array(
            np.append(model.weights, 0.0).astype(np.float32), "weights_and_zero"
        ),
        numpy_helper.from_array(np.array(model.bias, np.float32), "bias"),
    ]
    nodes = [
        *_tokenizer_nodes(),
        # Token -> vocabulary index, V for anything else (OOV and the "" padding), whose
        # weight is 0. O(tokens): no dense [N, V] count matrix.
        helper.make_node(
            "LabelEncoder",
            ["tokens"],
            ["token_ids"],
            name="vocabulary_lookup",
            domain=ML_DOMAIN,
            keys_strings=list(model.vocab),
            values_int64s=list(range(vocab_size)),
            default_int64=vocab_size,
        ),
        helper.make_node("Gather", ["weights_and_zero", "token_ids"], ["token_weights"]),
        helper.make_node("ReduceSum", ["token_weights", "const_one"], ["weighted_sum"], keepdims=0),
        helper.make_node("Add", ["weighted_sum", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability_with_sentinel"]),
        helper.make_node(
            "Slice",
            ["probability_with_sentinel", "const_zero", "const_minus_one"],
            [OUTPUT_NAME],
            name="drop_sentinel",
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "kloop_sentiment",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N"])],
        initializer=initializers,
        doc_string=_DOC,
    )
    onnx_model = _finish(graph)
    props = {
        META_MODEL_NAME: model_name,
        META_FORMAT: MODEL_FORMAT,
        META_FORMAT_VERSION: str(MODEL_FORMAT_VERSION),
        META_TOKENIZER: TOKENIZER_ID,
        META_VOCAB_SIZE: str(vocab_size),
        META_SIGNATURE: json.dumps(sentiment_signature(), sort_keys=True),
        **dict(metadata_props or {}),
    }
    helper.set_model_props(onnx_model, props)
    return onnx_model


def check_onnx(onnx_model: onnx.ModelProto | bytes) -> None:
    """Raise unless the model passes `onnx.checker` (full check, with shape inference) and
    has the sentiment signature's input and output."""
    proto = _as_proto(onnx_model)
    onnx.checker.check_model(proto, full_check=True)
    found = signature(proto)
    expected = sentiment_signature()
    for side in ("inputs", "outputs"):
        if found[side] != expected[side]:
            raise ValueError(f"{side} are {found[side]}, expected {expected[side]}")


def sentiment_signature() -> dict[str, Any]:
    """The exported graph's signature (what `signature` reads back from it)."""
    return {
        "signature_version": SIGNATURE_VERSION,
        "inputs": [
            {"name": INPUT_NAME, "datatype": "BYTES", "onnx_type": "tensor(string)", "shape": [-1]}
        ],
        "outputs": [
            {
                "name": OUTPUT_NAME,
                "datatype": "FP32",
                "onnx_type": "tensor(float)",
                "shape": [-1],
            }
        ],
    }


def signature(onnx_model: onnx.ModelProto | bytes | None = None) -> dict[str, Any]:
    """Inputs and outputs (name, OIP datatype, ONNX type, shape with -1 for dynamic axes)
    of any ONNX model, as signature.json content; the sentiment graph's when no model is
    given. Initializers are not inputs."""
    if onnx_model is None:
        return sentiment_signature()
    graph = _as_proto(onnx_model).graph
    initializer_names = {initializer.name for initializer in graph.initializer}
    return {
        "signature_version": SIGNATURE_VERSION,
        "inputs": [
            _describe(value) for value in graph.input if value.name not in initializer_names
        ],
        "outputs": [_describe(value) for value in graph.output],
    }


def _describe(value: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor_type = value.type.tensor_type
    element_type = tensor_type.elem_type
    shape: list[int] | None = None
    if tensor_type.HasField("shape"):
        shape = [
            dim.dim_value if dim.HasField("dim_value") else -1 for dim in tensor_type.shape.dim
        ]
    return {
        "name": value.name,
        "datatype": _OIP_DATATYPES.get(element_type, "UNKNOWN"),
        "onnx_type": f"tensor({_element_type_name(element_type)})",
        "shape": shape,
    }


def _element_type_name(element_type: int) -> str:
    return helper.tensor_dtype_to_string(element_type).removeprefix("TensorProto.").lower()


def _as_proto(onnx_model: onnx.ModelProto | bytes) -> onnx.ModelProto:
    if isinstance(onnx_model, onnx.ModelProto):
        return onnx_model
    return onnx.load_model_from_string(onnx_model)


def create_session(
    onnx_model: onnx.ModelProto | bytes, *, intra_op_num_threads: int | None = None
) -> ort.InferenceSession:
    """An onnxruntime CPU session for the model (default thread count unless given)."""
    options = ort.SessionOptions()
    if intra_op_num_threads is not None:
        options.intra_op_num_threads = intra_op_num_threads
        options.inter_op_num_threads = 1
    data = onnx_model.SerializeToString() if isinstance(onnx_model, onnx.ModelProto) else onnx_model
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def predict_onnx(session: ort.InferenceSession, texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """Run the sentiment graph on `texts`: float32 P(positive), shape (len(texts),)."""
    batch = np.array(list(texts), dtype=object).reshape(-1)
    outputs = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
    return np.asarray(outputs[0], dtype=np.float32)


def parity(
    model: SentimentClassifier,
    onnx_bytes: bytes | onnx.ModelProto,
    texts: Sequence[str],
    *,
    batch_size: int = 1024,
) -> float:
    """Max |P_onnx - P_numpy| over `texts` (0.0 for no texts), run in batches of
    `batch_size` with one intra-op thread."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    session = create_session(onnx_bytes, intra_op_num_threads=1)
    worst = 0.0
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        expected = model.predict_proba(batch)
        got = predict_onnx(session, batch).astype(np.float64)
        if got.shape != expected.shape:
            raise ValueError(f"ONNX returned shape {got.shape}, expected {expected.shape}")
        difference = np.abs(got - expected)
        if not np.isfinite(difference).all():
            return float("inf")  # NaN would otherwise compare as "no difference"
        worst = max(worst, float(difference.max(initial=0.0)))
    return worst
