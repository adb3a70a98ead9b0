"""The ASCII fast path gives exactly kloop_model.text's tokens and categories."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from kloop_drift_monitor.tokens import TokenCategories
from kloop_model.dataset import builtin_dataset, generate_texts, shifted_dataset
from kloop_model.text import tokenize

TOP = ("love", "great", "é")
VOCAB = ("love", "great", "it", "café", "é", "x\x1cy")
CATEGORIES = TokenCategories(TOP, VOCAB)


def expected(text: str) -> list[int]:
    slow = {token: 3 for token in VOCAB} | {token: i for i, token in enumerate(TOP)}
    return [slow.get(token, 4) for token in tokenize(text)]


def test_datasets_and_generated_texts() -> None:
    texts = builtin_dataset().texts + shifted_dataset().texts + generate_texts(3000, seed=5)
    assert any(not t.isascii() for t in texts) and any(t.isascii() for t in texts)
    for text in texts:
        assert CATEGORIES.categories(text) == expected(text)


@given(st.text(alphabet=string.printable + "\x1c\x1d\x1f\x00é\u00a0\u2003ΩİK", max_size=60))
def test_any_text(text: str) -> None:
    assert CATEGORIES.categories(text) == expected(text)
    assert CATEGORIES.categories("LOVE it, X\x1cY!") == [0, 3, 3]
