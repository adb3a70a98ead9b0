"""The self-contained ONNX graph: validity, signature, metadata, parity with NumPy."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kloop_model.classifier import SentimentClassifier
from kloop_model.dataset import generate_texts
from kloop_model.onnx_export import (
    INPUT_NAME,
    META_SIGNATURE,
    META_VOCAB_SIZE,
    OUTPUT_NAME,
    check_onnx,
    create_session,
    export_onnx,
    parity,
    predict_onnx,
    sentiment_signature,
    signature,
)
from kloop_model.text import tokenize

PARITY_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def wide_onnx(wide_model: SentimentClassifier) -> bytes:
    return export_onnx(wide_model).SerializeToString()


def test_wide_model_vocabulary_has_odd_tokens(wide_model: SentimentClassifier) -> None:
    vocab = set(wide_model.vocab)
    assert any(any(ord(ch) > 127 for ch in token) for token in vocab)
    assert any(any(ord(ch) > 0xFFFF for ch in token) for token in vocab)
    assert {"great", "terrible", "s"} <= vocab


def test_parity_on_10000_generated_texts(wide_model: SentimentClassifier, wide_onnx: bytes) -> None:
    texts = generate_texts(10_000, seed=2024)
    # The set must contain what the requirement names.
    assert "" in texts and any(t and not t.strip() for t in texts)
    assert any(t.strip() and not tokenize(t) for t in texts)
    assert any(any(ord(ch) > 127 for ch in t) for t in texts)
    assert parity(wide_model, wide_onnx, texts) <= PARITY_TOLERANCE


def test_batches_of_zero_and_one(wide_model: SentimentClassifier, wide_onnx: bytes) -> None:
    session = create_session(wide_onnx)
    empty = predict_onnx(session, [])
    assert empty.shape == (0,) and empty.dtype == np.float32
    for text in ["Great!", "", "   ", "!!!", "😀"]:
        got = predict_onnx(session, [text])
        assert got.shape == (1,)
        assert abs(float(got[0]) - wide_model.predict_proba([text])[0]) <= PARITY_TOLERANCE
    raw = session.run(None, {INPUT_NAME: np.array([], dtype=object)})
    assert raw[0].shape == (0,)


def test_all_empty_batch(wide_model: SentimentClassifier, wide_onnx: bytes) -> None:
    texts = ["", " ", "\t\n", "?!"]
    assert parity(wide_model, wide_onnx, texts) <= PARITY_TOLERANCE


def test_long_runs_of_one_separator(wide_model: SentimentClassifier, wide_onnx: bytes) -> None:
    texts = ["great" + "!" * 5000 + "terrible", "," * 3001, "a.b." * 700 + "Great"]
    assert parity(wide_model, wide_onnx, texts) <= PARITY_TOLERANCE


_session_cache: dict[int, object] = {}


@settings(deadline=None, max_examples=200)
@given(
    st.lists(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=50)
        | st.sampled_from(["GREAT!", "terrible...", "great's", "Ωmega", "café", "😀"]).map(
            lambda w: w * 3
        ),
        max_size=6,
    )
)
def test_parity_on_arbitrary_unicode(builtin_model: SentimentClassifier, texts: list[str]) -> None:
    key = id(builtin_model)
    if key not in _session_cache:
        _session_cache[key] = create_session(export_onnx(builtin_model), intra_op_num_threads=1)
    got = predict_onnx(_session_cache[key], texts)
    expected = builtin_model.predict_proba(texts)
    assert np.max(np.abs(got - expected), initial=0.0) <= PARITY_TOLERANCE


def test_check_onnx_and_standard_ops_only(builtin_model: SentimentClassifier) -> None:
    model = export_onnx(builtin_model)
    check_onnx(model)
    check_onnx(model.SerializeToString())
    # Standard ONNX domains only (no com.microsoft / ai.onnx.contrib custom ops).
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 21), ("ai.onnx.ml", 3)]

    def domains(graph: onnx.GraphProto) -> set[str]:
        found = {node.domain for node in graph.node}
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    found |= domains(attribute.g)
        return found

    assert domains(model.graph) == {"", "ai.onnx.ml"}


def test_check_onnx_rejects_another_signature(builtin_model: SentimentClassifier) -> None:
    model = export_onnx(builtin_model)
    model.graph.output[0].name = "score"
    model.graph.node[-1].output[0] = "score"
    with pytest.raises(ValueError, match="outputs"):
        check_onnx(model)
    broken = export_onnx(builtin_model)
    del broken.graph.node[0]
    with pytest.raises(onnx.checker.ValidationError):
        check_onnx(broken)


def test_signature(builtin_model: SentimentClassifier) -> None:
    model = export_onnx(builtin_model)
    described = signature(model)
    assert described == sentiment_signature() == signature()
    assert described["inputs"] == [
        {"name": INPUT_NAME, "datatype": "BYTES", "onnx_type": "tensor(string)", "shape": [-1]}
    ]
    assert described["outputs"] == [
        {"name": OUTPUT_NAME, "datatype": "FP32", "onnx_type": "tensor(float)", "shape": [-1]}
    ]
    json.dumps(described)


def test_metadata_props(builtin_model: SentimentClassifier) -> None:
    model = export_onnx(builtin_model, model_name="reviews", metadata_props={"kloop.run": "r1"})
    props = {p.key: p.value for p in model.metadata_props}
    assert props["kloop.model_name"] == "reviews"
    assert props["kloop.model_format"] == "kloop-sentiment-bow-logreg"
    assert props["kloop.model_format_version"] == "1"
    assert props[META_VOCAB_SIZE] == str(builtin_model.vocab_size)
    assert props["kloop.tokenizer"] == "kloop-ascii-lower-sep-split/v1"
    assert json.loads(props[META_SIGNATURE]) == sentiment_signature()
    assert props["kloop.run"] == "r1"


def test_export_is_deterministic(builtin_model: SentimentClassifier) -> None:
    first = export_onnx(builtin_model).SerializeToString()
    assert export_onnx(builtin_model).SerializeToString() == first


def test_parity_detects_a_different_model(
    builtin_model: SentimentClassifier, wide_onnx: bytes
) -> None:
    assert parity(builtin_model, wide_onnx, ["i love it", "terrible"]) > 1e-3
    assert parity(builtin_model, export_onnx(builtin_model), []) == 0.0


def test_unfitted_model_cannot_be_exported() -> None:
    with pytest.raises(ValueError, match="unfitted"):
        export_onnx(SentimentClassifier())
