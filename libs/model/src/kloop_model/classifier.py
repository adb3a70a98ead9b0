"""Bag-of-words + logistic regression sentiment classifier in NumPy.

Features are term counts over a vocabulary built from the training texts (tokens from
`kloop_model.text.tokenize`); the model is ``P(positive) = sigmoid(counts @ weights +
bias)``, trained by full-batch gradient descent on the mean log loss plus
``l2 / 2 * ||weights||^2`` (the bias is not regularised). Counts are never materialised
as a dense matrix: a batch is kept as (row, token id) pairs and products are
``np.bincount`` sums, so cost is linear in the number of tokens.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from kloop_model.text import TOKENIZER_ID, tokenize_many

MODEL_FORMAT = "kloop-sentiment-bow-logreg"
MODEL_FORMAT_VERSION = 1
MODEL_FILENAME = "model.json"

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class ModelNotFittedError(RuntimeError):
    """The classifier was used before `fit` (or `load`)."""


class ModelFormatError(ValueError):
    """A model file that is not a valid kloop sentiment model."""


@dataclass(frozen=True)
class TrainingParams:
    """Hyper-parameters. Defaults match the training service's defaults."""

    learning_rate: float = 0.5
    epochs: int = 200
    l2: float = 1e-3
    max_vocab: int = 5000
    min_count: int = 1
    seed: int = 42

    def __post_init__(self) -> None:
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not (math.isfinite(self.l2) and self.l2 >= 0):
            raise ValueError(f"l2 must be >= 0, got {self.l2}")
        if self.max_vocab < 1:
            raise ValueError(f"max_vocab must be >= 1, got {self.max_vocab}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainingParams:
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)


@dataclass(frozen=True)
class TokenCounts:
    """A batch of texts as sparse counts: one (row, token_id) pair per in-vocabulary token
    occurrence, plus every text's total token count (in- and out-of-vocabulary)."""

    n_texts: int
    rows: IntArray
    token_ids: IntArray
    lengths: IntArray

    @property
    def in_vocab_lengths(self) -> IntArray:
        return np.bincount(self.rows, minlength=self.n_texts).astype(np.int64)

    def dense(self, vocab_size: int) -> FloatArray:
        """The (n_texts, vocab_size) count matrix; for tests and small batches only."""
        matrix = np.zeros((self.n_texts, vocab_size), dtype=np.float64)
        np.add.at(matrix, (self.rows, self.token_ids), 1.0)
        return matrix


@dataclass
class SentimentClassifier:
    """``fit`` / ``predict_proba`` / ``save`` / ``load``; deterministic given `params.seed`."""

    params: TrainingParams = field(default_factory=TrainingParams)
    vocab: list[str] = field(default_factory=list)
    weights: FloatArray = field(default_factory=lambda: np.zeros(0, dtype=np.float64))
    bias: float = 0.0
    loss_history: list[float] = field(default_factory=list, repr=False)
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _fitted: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.vocab:
            self._set_model(list(self.vocab), np.asarray(self.weights, np.float64), self.bias)

    # --- state -------------------------------------------------------------------------

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _set_model(self, vocab: list[str], weights: FloatArray, bias: float) -> None:
        if len(weights) != len(vocab) or weights.ndim != 1:
            raise ModelFormatError(f"{len(vocab)} vocabulary entries but {weights.shape} weights")
        if len(set(vocab)) != len(vocab):
            raise ModelFormatError("vocabulary entries must be unique")
        if not np.isfinite(weights).all() or not math.isfinite(bias):
            raise ModelFormatError("weights and bias must be finite")
        self.vocab = vocab
        self.weights = weights
        self.bias = float(bias)
        self._index = {token: i for i, token in enumerate(vocab)}
        self._fitted = True

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise ModelNotFittedError("the classifier is not fitted; call fit() or load()")

    # --- features ----------------------------------------------------------------------

    def token_counts(self, texts: Sequence[str]) -> TokenCounts:
        """Tokenize `texts` and map tokens to vocabulary ids (OOV tokens only counted in
        `lengths`)."""
        self._require_fitted()
        return _encode(texts, self._index)

    # --- training ----------------------------------------------------------------------

    def fit(
        self, texts: Sequence[str], labels: Sequence[int] | npt.NDArray[np.integer[Any]]
    ) -> SentimentClassifier:
        """Build the vocabulary from `texts` and train on (texts, labels 0/1)."""
        label_array = np.asarray(labels)
        if label_array.ndim != 1 or len(label_array) != len(texts):
            raise ValueError(f"{len(texts)} texts but labels of shape {label_array.shape}")
        if len(texts) == 0:
            raise ValueError("cannot fit on zero texts")
        if not np.isin(label_array, (0, 1)).all():
            raise ValueError("labels must all be 0 or 1")
        y = label_array.astype(np.float64)
        tokenized = tokenize_many(texts)
        vocab = build_vocab(tokenized, self.params.max_vocab, self.params.min_count)
        if not vocab:
            raise ValueError("no tokens in the training texts: the vocabulary would be empty")
        index = {token: i for i, token in enumerate(vocab)}
        batch = _encode_tokenized(tokenized, index)
        rng = np.random.default_rng(self.params.seed)
        # Small random start: the seed matters, and ties between tokens are broken.
        weights = rng.normal(0.0, 0.01, size=len(vocab))
        bias = 0.0
        n = float(len(texts))
        learning_rate, l2 = self.params.learning_rate, self.params.l2
        history: list[float] = []
        for _ in range(self.params.epochs):
            logits = _logits(batch, weights, bias)
            probabilities = _sigmoid(logits)
            history.append(_mean_log_loss(y, logits) + 0.5 * l2 * float(weights @ weights))
            residual = probabilities - y
            gradient = np.bincount(
                batch.token_ids, weights=residual[batch.rows], minlength=len(vocab)
            )
            weights = weights - learning_rate * (gradient / n + l2 * weights)
            bias -= learning_rate * float(residual.mean())
        self._set_model(vocab, weights, bias)
        self.loss_history = history
        return self

    # --- inference ---------------------------------------------------------------------

    def decision_function(self, texts: Sequence[str]) -> FloatArray:
        """The logits ``counts @ weights + bias`` (float64, one per text)."""
        self._require_fitted()
        return _logits(_encode(texts, self._index), self.weights, self.bias)

    def predict_proba(self, texts: Sequence[str]) -> FloatArray:
        """P(positive) per text, float64, shape (len(texts),)."""
        return _sigmoid(self.decision_function(texts))

    def predict(self, texts: Sequence[str], threshold: float = 0.5) -> IntArray:
        """Labels 0/1: 1 where P(positive) >= `threshold`."""
        return (self.predict_proba(texts) >= threshold).astype(np.int64)

    # --- persistence -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The model.json document."""
        self._require_fitted()
        return {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "tokenizer": TOKENIZER_ID,
            "vocab": list(self.vocab),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "params": self.params.to_dict(),
        }

    @classmethod
    def from_dict(cls, document: Any) -> SentimentClassifier:
        """Validate a model.json document and build the classifier."""
        if not isinstance(document, dict):
            raise ModelFormatError("a model document must be a JSON object")
        if document.get("format") != MODEL_FORMAT:
            raise ModelFormatError(
                f"format is {document.get('format')!r}, expected {MODEL_FORMAT!r}"
            )
        if document.get("format_version") != MODEL_FORMAT_VERSION:
            raise ModelFormatError(
                f"format_version {document.get('format_version')!r} is not supported "
                f"(this library reads version {MODEL_FORMAT_VERSION})"
            )
        if document.get("tokenizer") != TOKENIZER_ID:
            raise ModelFormatError(
                f"tokenizer {document.get('tokenizer')!r} is not {TOKENIZER_ID!r}"
            )
        vocab, weights, bias = document.get("vocab"), document.get("weights"), document.get("bias")
        if not isinstance(vocab, list) or not all(isinstance(t, str) and t for t in vocab):
            raise ModelFormatError("vocab must be a list of non-empty strings")
        if not isinstance(weights, list) or not all(
            isinstance(w, int | float) and not isinstance(w, bool) for w in weights
        ):
            raise ModelFormatError("weights must be a list of numbers")
        if not isinstance(bias, int | float) or isinstance(bias, bool):
            raise ModelFormatError("bias must be a number")
        params_document = document.get("params", {})
        if not isinstance(params_document, dict):
            raise ModelFormatError("params must be an object")
        try:
            params = TrainingParams.from_dict(params_document)
        except (TypeError, ValueError) as error:
            raise ModelFormatError(f"invalid params: {error}") from None
        model = cls(params=params)
        model._set_model(vocab, np.array(weights, dtype=np.float64), float(bias))
        return model

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write model.json to `path` (a file, or a directory to put model.json in),
        atomically. Floats round-trip exactly. Returns the file written."""
        target = Path(path)
        if target.is_dir():
            target = target / MODEL_FILENAME
        content = json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, indent=None)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".model-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(content)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SentimentClassifier:
        """Read a model.json written by `save` (a file, or a directory holding model.json)."""
        source = Path(path)
        if source.is_dir():
            source = source / MODEL_FILENAME
        try:
            document = json.loads(source.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelFormatError(f"{source}: not a JSON model file: {error}") from None
        return cls.from_dict(document)


def build_vocab(tokenized: Sequence[Sequence[str]], max_vocab: int, min_count: int) -> list[str]:
    """Tokens seen at least `min_count` times in all, most frequent first (ties by token),
    at most `max_vocab` of them. The order is the feature index order."""
    counts = Counter(token for tokens in tokenized for token in tokens)
    eligible = [(token, count) for token, count in counts.items() if count >= min_count]
    eligible.sort(key=lambda item: (-item[1], item[0]))
    return [token for token, _ in eligible[:max_vocab]]


def _encode(texts: Sequence[str], index: dict[str, int]) -> TokenCounts:
    return _encode_tokenized(tokenize_many(texts), index)


def _encode_tokenized(tokenized: Sequence[Sequence[str]], index: dict[str, int]) -> TokenCounts:
    lengths = np.fromiter((len(tokens) for tokens in tokenized), np.int64, len(tokenized))
    get = index.get
    ids = np.fromiter(
        (get(token, -1) for token in chain.from_iterable(tokenized)), np.int64, int(lengths.sum())
    )
    rows = np.repeat(np.arange(len(tokenized), dtype=np.int64), lengths)
    in_vocab = ids >= 0
    return TokenCounts(
        n_texts=len(tokenized), rows=rows[in_vocab], token_ids=ids[in_vocab], lengths=lengths
    )


def _logits(batch: TokenCounts, weights: FloatArray, bias: float) -> FloatArray:
    sums = np.bincount(batch.rows, weights=weights[batch.token_ids], minlength=batch.n_texts)
    return sums.astype(np.float64) + bias


def _sigmoid(logits: FloatArray) -> FloatArray:
    # exp of a non-positive number only: no overflow for large |logit|.
    exp_neg_abs = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + exp_neg_abs), exp_neg_abs / (1.0 + exp_neg_abs))


def _mean_log_loss(y: FloatArray, logits: FloatArray) -> float:
    # log(1 + e^z) - y*z, computed stably.
    return float(np.mean(np.logaddexp(0.0, logits) - y * logits))
