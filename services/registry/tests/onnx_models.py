"""Tiny hand-built ONNX graphs honouring the model contract (string [N] -> P [N] or [N,1]).

`P = low + (high - low) * (text == match)`: enough to steer a metric up or down.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def keyword_model(
    path: Path,
    *,
    match: str = "good",
    low: float = 0.25,
    high: float = 0.75,
    column: bool = False,
    input_name: str = "text",
    output_name: str = "probability",
) -> Path:
    inits = [
        numpy_helper.from_array(np.array([match], dtype=object), "match"),
        numpy_helper.from_array(np.array(low, dtype=np.float32), "low"),
        numpy_helper.from_array(np.array(high - low, dtype=np.float32), "span"),
    ]
    nodes = [
        helper.make_node("Equal", [input_name, "match"], ["eq"]),
        helper.make_node("Cast", ["eq"], ["eqf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["eqf", "span"], ["scaled"]),
        helper.make_node("Add", ["scaled", "low"], ["p" if column else output_name]),
    ]
    out_shape: list[int | str] = ["N"]
    if column:
        inits.append(numpy_helper.from_array(np.array([-1, 1], dtype=np.int64), "col"))
        nodes.append(helper.make_node("Reshape", ["p", "col"], [output_name]))
        out_shape = ["N", 1]
    graph = helper.make_graph(
        nodes,
        "keyword",
        [helper.make_tensor_value_info(input_name, TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def token_embedding_model(
    path: Path, *, input_names: tuple[str, ...] = ("input_ids", "attention_mask"), seed: int = 0
) -> Path:
    """BERT-shaped: int64 token tensors [batch, sequence] -> `embedding` FP32 [batch, 8]
    (mean of looked-up token vectors; the attention mask is accepted and unused here)."""
    table = np.random.default_rng(seed).normal(size=(100, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", input_names[0]], ["vectors"]),
            helper.make_node("ReduceMean", ["vectors"], ["embedding"], axes=[1], keepdims=0),
        ],
        "token_embedding",
        [
            helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
            for name in input_names
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 8])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


# The smallest file the `tokenizers` package loads (a word-level vocabulary).
TOKENIZER_JSON = (
    b'{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],'
    b'"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,'
    b'"decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"[PAD]":1,"hello":2},'
    b'"unk_token":"[UNK]"}}'
)
