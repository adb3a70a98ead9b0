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
