"""Shared fixtures: fitted models are built once per session (fitting is the slow part)."""

from __future__ import annotations

import numpy as np
import pytest

from kloop_model.classifier import SentimentClassifier, TrainingParams
from kloop_model.dataset import builtin_dataset, generate_dataset, generate_texts


@pytest.fixture(scope="session")
def builtin_model() -> SentimentClassifier:
    dataset = builtin_dataset()
    return SentimentClassifier().fit(dataset.texts, dataset.labels)


@pytest.fixture(scope="session")
def wide_model() -> SentimentClassifier:
    """A model whose vocabulary holds odd tokens (non-ASCII, emoji, digits) as well as
    sentiment words, so parity tests exercise every kind of token."""
    labeled = generate_dataset(3000, seed=11)
    noise = generate_texts(3000, seed=12)
    texts = labeled.texts + noise
    labels = np.concatenate([labeled.labels, np.arange(len(noise)) % 2])
    params = TrainingParams(epochs=60, max_vocab=4000, seed=3)
    return SentimentClassifier(params).fit(texts, labels)
