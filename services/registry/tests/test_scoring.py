from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kloop_registry.scoring import ScoringError, predict_proba, signature_names

from .onnx_models import keyword_model


def test_scores_vector_and_column_outputs(tmp_path: Path) -> None:
    texts = ["good", "bad", "good"]
    flat = predict_proba(keyword_model(tmp_path / "a.onnx"), texts)
    column = predict_proba(keyword_model(tmp_path / "b.onnx", column=True), texts)
    np.testing.assert_allclose(flat, [0.75, 0.25, 0.75])
    np.testing.assert_allclose(column, flat)
    assert flat.dtype == np.float64


def test_batches_long_holdouts(tmp_path: Path) -> None:
    texts = ["good", "meh"] * 1500
    p = predict_proba(keyword_model(tmp_path / "m.onnx"), texts)
    assert p.shape == (3000,) and p[0] == 0.75 and p[-1] == 0.25


def test_signature_names_are_used_and_checked(tmp_path: Path) -> None:
    model = keyword_model(tmp_path / "m.onnx", input_name="in0", output_name="out0")
    assert predict_proba(model, ["good"], input_name="in0", output_name="out0")[0] == 0.75
    with pytest.raises(ScoringError, match="not in the graph"):
        predict_proba(model, ["good"], input_name="text")


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ({"inputs": [{"name": "text"}], "outputs": [{"name": "p"}]}, ("text", "p")),
        ({"inputs": {"text": {"dtype": "string"}}, "outputs": {"p": {}}}, ("text", "p")),
        ({"framework": "onnx"}, (None, None)),
    ],
)
def test_signature_names(doc: dict, names: tuple) -> None:
    assert signature_names(json.dumps(doc).encode()) == names


def test_signature_absent_or_broken() -> None:
    assert signature_names(None) == (None, None)
    with pytest.raises(ScoringError, match="not JSON"):
        signature_names(b"{")


def test_unloadable_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ScoringError, match="cannot load"):
        predict_proba(bad, ["x"])
