"""Input texts: validation, the canonical form the model and the cache see, features.

Canonical form: surrounding whitespace removed and every run of whitespace inside
replaced by one space. The model is sent the canonical text, so a cached answer
(keyed by it) is by construction exactly what the model would have answered.
"""

from __future__ import annotations

from collections.abc import Sequence

from kloop_core.errors import Unprocessable
from kloop_model.text import tokenize


def canonical_text(text: str) -> str:
    return " ".join(text.split())


def check_texts(texts: Sequence[str], *, max_chars: int, max_count: int) -> list[str]:
    """The canonical texts, or Unprocessable (422) saying which one is wrong and why."""
    if not texts:
        raise Unprocessable("at least one text is required")
    if len(texts) > max_count:
        raise Unprocessable(f"at most {max_count} texts per request, got {len(texts)}")
    canonical: list[str] = []
    for index, text in enumerate(texts):
        where = f"text {index}" if len(texts) > 1 else "text"
        if len(text) > max_chars:
            raise Unprocessable(f"{where} has {len(text)} characters; the limit is {max_chars}")
        clean = canonical_text(text)
        if not clean:
            raise Unprocessable(f"{where} is empty")
        try:
            clean.encode()
        except UnicodeEncodeError:  # lone surrogates ("\ud800") survive JSON decoding
            raise Unprocessable(f"{where} is not valid Unicode") from None
        canonical.append(clean)
    return canonical


def token_count(text: str) -> int:
    """Tokens of a canonical text by the models' own tokenizer, so that the drift
    monitor can compare them with the training reference profile."""
    return len(tokenize(text))
