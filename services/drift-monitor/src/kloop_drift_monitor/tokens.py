"""Live tokens into the reference's categories: kloop_model.text's tokenizer, with a
bytes fast path for ASCII texts (the consumer's hottest loop when events carry text).

For an ASCII text the tokenizer's steps are one `bytes.translate` (A-Z to a-z, every
separator to a space) and `bytes.split()`, which splits on ASCII whitespace only (all
of it separators, so already spaces) and keeps every other byte inside tokens: the
same tokens, as UTF-8 bytes. Other texts go through `kloop_model.text.tokenize`.
tests/test_tokens.py checks both paths against it.
"""

from __future__ import annotations

import string
from collections.abc import Iterable

from kloop_model.text import SEPARATORS, tokenize

_ASCII_TABLE = bytes.maketrans(
    (string.ascii_uppercase + SEPARATORS).encode(),
    (string.ascii_lowercase + " " * len(SEPARATORS)).encode(),
)


class TokenCategories:
    """Token -> category: each top-k token its own, other in-vocabulary tokens one,
    out-of-vocabulary tokens the last (`out_of_vocabulary`)."""

    def __init__(self, top_tokens: Iterable[str], vocab: Iterable[str]) -> None:
        top = list(top_tokens)
        other = len(top)
        self.out_of_vocabulary = len(top) + 1
        by_text = dict.fromkeys(vocab, other)
        by_text.update((token, i) for i, token in enumerate(top))
        self._by_text = by_text
        self._by_bytes = {token.encode(): category for token, category in by_text.items()}

    def categories(self, text: str) -> list[int]:
        """The category of each token of `text`, in order."""
        oov = self.out_of_vocabulary
        if text.isascii():
            by_bytes = self._by_bytes.get
            return [by_bytes(token, oov) for token in text.encode().translate(_ASCII_TABLE).split()]
        by_text = self._by_text.get
        return [by_text(token, oov) for token in tokenize(text)]
