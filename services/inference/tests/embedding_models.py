"""A tiny BERT-shaped text-embedding graph, built with onnx.helper (no torch).

Same contract as the exported all-MiniLM-L6-v2: input_ids, attention_mask,
token_type_ids INT64 [batch, sequence] -> `embedding` FP32 [batch, dim], pooled by the
attention mask and L2-normalized inside the graph. Token vectors come from a small
random table indexed by `input_ids mod buckets` (plus a token-type vector), so texts
that share words get similar embeddings, as with a real embedder, at ~1.5 MB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TOKENIZER_JSON = Path(__file__).parent / "data" / "all-minilm-l6-v2" / "tokenizer.json"
DIM = 384


def tiny_embedder_onnx(
    *, dim: int = DIM, buckets: int = 1000, seed: int = 0, with_token_types: bool = True
) -> bytes:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(size=(buckets, dim)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.normal(size=(2, dim)).astype(np.float32) * 0.1, "types"),
        numpy_helper.from_array(np.array(buckets, dtype=np.int64), "buckets"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "sequence_axis"),
        numpy_helper.from_array(np.array(1e-9, dtype=np.float32), "tiny"),
        numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "epsilon"),
    ]
    nodes = [
        helper.make_node("Mod", ["input_ids", "buckets"], ["bucket_ids"]),
        helper.make_node("Gather", ["table", "bucket_ids"], ["token_vectors"]),
    ]
    hidden = "token_vectors"
    if with_token_types:
        nodes += [
            helper.make_node("Gather", ["types", "token_type_ids"], ["type_vectors"]),
            helper.make_node("Add", ["token_vectors", "type_vectors"], ["hidden"]),
        ]
        hidden = "hidden"
    nodes += [
        # Mean over the real tokens (attention_mask = 1), then L2 normalization.
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask"]),
        helper.make_node("Mul", [hidden, "mask"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "sequence_axis"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask", "sequence_axis"], ["count"], keepdims=0),
        helper.make_node("Max", ["count", "tiny"], ["safe_count"]),
        helper.make_node("Div", ["summed", "safe_count"], ["mean"]),
        # Opset 17: ReduceL2 takes its axes as an attribute (ReduceSum as an input).
        helper.make_node("ReduceL2", ["mean"], ["norm"], axes=[-1], keepdims=1),
        helper.make_node("Max", ["norm", "epsilon"], ["safe_norm"]),
        helper.make_node("Div", ["mean", "safe_norm"], ["embedding"]),
    ]
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_token_types else [])
    graph = helper.make_graph(
        nodes,
        "tiny_embedder",
        [
            helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
            for name in names
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_embedder_repository(root: Path, name: str, model: bytes, version: str = "1") -> Path:
    """`<root>/<name>/<version>/{model.onnx,tokenizer.json}` for LocalRepositorySource."""
    folder = root / name / version
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model)
    (folder / "tokenizer.json").write_bytes(TOKENIZER_JSON.read_bytes())
    return root
