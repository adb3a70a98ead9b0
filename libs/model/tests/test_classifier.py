"""The NumPy classifier: learning, determinism, vectorisation, persistence."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from kloop_model.classifier import (
    MODEL_FORMAT,
    ModelFormatError,
    ModelNotFittedError,
    SentimentClassifier,
    TrainingParams,
    build_vocab,
)
from kloop_model.dataset import builtin_dataset, generate_dataset, stratified_split
from kloop_model.metrics import accuracy
from kloop_model.text import tokenize_many


def test_learns_the_builtin_dataset(builtin_model: SentimentClassifier) -> None:
    dataset = builtin_dataset()
    assert accuracy(dataset.labels, builtin_model.predict(dataset.texts)) == 1.0
    wonderful, terrible = builtin_model.predict_proba(["this is wonderful", "this is terrible"])
    assert wonderful > 0.5 > terrible


def test_generalises_on_the_holdout() -> None:
    train, test = stratified_split(builtin_dataset(), 0.2, seed=42)
    model = SentimentClassifier().fit(train.texts, train.labels)
    assert accuracy(test.labels, model.predict(test.texts)) >= 0.9


def test_learns_a_rule_labelled_dataset() -> None:
    train = generate_dataset(3000, seed=1)
    test = generate_dataset(1000, seed=2)
    model = SentimentClassifier().fit(train.texts, train.labels)
    assert accuracy(test.labels, model.predict(test.texts)) > 0.95


def test_training_loss_decreases(builtin_model: SentimentClassifier) -> None:
    history = builtin_model.loss_history
    assert len(history) == builtin_model.params.epochs
    assert history[-1] < 0.5 * history[0]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(history))


def test_deterministic_given_the_seed() -> None:
    dataset = builtin_dataset()
    first = SentimentClassifier(TrainingParams(seed=5)).fit(dataset.texts, dataset.labels)
    second = SentimentClassifier(TrainingParams(seed=5)).fit(dataset.texts, dataset.labels)
    other = SentimentClassifier(TrainingParams(seed=6)).fit(dataset.texts, dataset.labels)
    assert first.vocab == second.vocab
    assert np.array_equal(first.weights, second.weights) and first.bias == second.bias
    assert not np.array_equal(first.weights, other.weights)


def test_predict_proba_equals_the_dense_formula(builtin_model: SentimentClassifier) -> None:
    texts = ["Great, GREAT product!", "", "!!!", "unknown words only", "hate it; hate it"]
    counts = builtin_model.token_counts(texts).dense(builtin_model.vocab_size)
    index = {token: i for i, token in enumerate(builtin_model.vocab)}
    assert counts[0, index["great"]] == 2 and counts[4, index["hate"]] == 2
    expected = 1 / (1 + np.exp(-(counts @ builtin_model.weights + builtin_model.bias)))
    probabilities = builtin_model.predict_proba(texts)
    assert probabilities.dtype == np.float64 and probabilities.shape == (5,)
    assert np.allclose(probabilities, expected, rtol=0, atol=1e-15)
    # Texts without known tokens get sigmoid(bias).
    assert probabilities[1] == probabilities[2] == probabilities[3]


def test_empty_batch(builtin_model: SentimentClassifier) -> None:
    assert builtin_model.predict_proba([]).shape == (0,)
    assert builtin_model.predict([]).shape == (0,)


def test_extreme_logits_do_not_overflow() -> None:
    model = SentimentClassifier(vocab=["a", "b"], weights=np.array([800.0, -800.0]), bias=0.0)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert model.predict_proba(["a", "b"]).tolist() == [1.0, 0.0]


def test_build_vocab_orders_by_count_then_token_and_applies_limits() -> None:
    tokenized = tokenize_many(["b a a c", "c a d", "b"])  # a:3, b:2, c:2, d:1
    assert build_vocab(tokenized, max_vocab=10, min_count=1) == ["a", "b", "c", "d"]
    assert build_vocab(tokenized, max_vocab=2, min_count=1) == ["a", "b"]
    assert build_vocab(tokenized, max_vocab=10, min_count=2) == ["a", "b", "c"]


def test_params_limit_the_vocabulary() -> None:
    dataset = generate_dataset(500, seed=4)
    model = SentimentClassifier(TrainingParams(max_vocab=50, epochs=5))
    model.fit(dataset.texts, dataset.labels)
    assert model.vocab_size == 50


def test_save_and_load_round_trip_exactly(
    builtin_model: SentimentClassifier, tmp_path: Path
) -> None:
    written = builtin_model.save(tmp_path / "nested" / "model.json")
    document = json.loads(written.read_text(encoding="utf-8"))
    assert document["format"] == MODEL_FORMAT and document["format_version"] == 1
    assert set(document) >= {"vocab", "weights", "bias", "params", "tokenizer"}
    loaded = SentimentClassifier.load(written)
    assert loaded.vocab == builtin_model.vocab
    assert np.array_equal(loaded.weights, builtin_model.weights)
    assert loaded.bias == builtin_model.bias
    assert loaded.params == builtin_model.params
    texts = builtin_dataset().texts
    assert np.array_equal(loaded.predict_proba(texts), builtin_model.predict_proba(texts))
    # A directory means model.json inside it.
    builtin_model.save(tmp_path)
    assert SentimentClassifier.load(tmp_path).vocab == builtin_model.vocab
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "format"),
        ({"format_version": 99}, "format_version"),
        ({"tokenizer": "whitespace"}, "tokenizer"),
        ({"weights": [1.0]}, "weights"),
        ({"vocab": ["a", "a"], "weights": [1.0, 2.0]}, "unique"),
        ({"vocab": [""], "weights": [1.0]}, "non-empty"),
        ({"bias": "x"}, "bias"),
        ({"params": {"epochs": 0}}, "epochs"),
    ],
)
def test_load_rejects_invalid_documents(
    builtin_model: SentimentClassifier, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    document = {**builtin_model.to_dict(), **change}
    path = tmp_path / "model.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(ModelFormatError, match=message):
        SentimentClassifier.load(path)


def test_load_rejects_non_json(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text("not json", encoding="utf-8")
    with pytest.raises(ModelFormatError, match="not a JSON model"):
        SentimentClassifier.load(path)
    with pytest.raises(ModelFormatError, match="finite"):
        SentimentClassifier(vocab=["a"], weights=np.array([math.nan]))


def test_unfitted_model_refuses_to_predict_or_save(tmp_path: Path) -> None:
    model = SentimentClassifier()
    with pytest.raises(ModelNotFittedError):
        model.predict_proba(["x"])
    with pytest.raises(ModelNotFittedError):
        model.save(tmp_path / "m.json")


def test_fit_validates_its_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        SentimentClassifier().fit(["a", "b"], [1])
    with pytest.raises(ValueError, match="0 or 1"):
        SentimentClassifier().fit(["a", "b"], [1, 2])
    with pytest.raises(ValueError, match="zero texts"):
        SentimentClassifier().fit([], [])
    with pytest.raises(ValueError, match="vocabulary would be empty"):
        SentimentClassifier().fit(["!!", " "], [1, 0])


@pytest.mark.parametrize(
    "params",
    [
        {"learning_rate": 0},
        {"learning_rate": math.inf},
        {"epochs": 0},
        {"l2": -1},
        {"max_vocab": 0},
        {"min_count": 0},
        {"seed": -1},
    ],
)
def test_training_params_validation(params: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TrainingParams(**params)  # type: ignore[arg-type]
    assert TrainingParams(l2=0.0, seed=0).l2 == 0.0
