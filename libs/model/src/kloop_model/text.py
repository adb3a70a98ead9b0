"""The one text normalization + tokenization used by the NumPy model and the ONNX graph.

Definition (tokenizer `TOKENIZER_ID`):

1. Lowercase ASCII letters only: ``A``-``Z`` become ``a``-``z``; every other character,
   including non-ASCII letters (``É``, ``Ω``, ``İ``), is left exactly as it is.
2. Every character of `SEPARATORS` (space, ``\\t \\n \\v \\f \\r`` and the 32 ASCII
   punctuation characters, apostrophe included) separates tokens.
3. Tokens are the non-empty runs between separators, in order.

So ``"Don't STOP, café!!"`` gives ``["don", "t", "stop", "café"]`` and ``"  !?  "`` gives
``[]``. Characters outside the separator set (non-ASCII punctuation, emoji, other control
characters, non-breaking spaces) stay inside tokens.

Why exactly this: the ONNX graph has to reproduce it with standard ops onnxruntime ships.
``StringNormalizer(LOWER, locale="C")`` lowercases exactly ASCII (verified over every
Unicode scalar value; other locales do full Unicode lowercasing that Python cannot match
bit for bit, and ``en_US.UTF-8`` is missing on slim images, which makes the op fail to
load). There is no regex-replace op, so each separator is turned into a space in-graph by
``StringSplit`` on it and re-joining the pieces with ``StringConcat``; a final
``StringSplit`` without delimiter splits on runs of spaces (and only spaces, not tabs or
Unicode whitespace, which is why those are listed as separators explicitly).
"""

from __future__ import annotations

import string
from collections.abc import Iterable

TOKENIZER_ID = "kloop-ascii-lower-sep-split/v1"

# Order matters only to the ONNX graph's node order, not to the result.
SEPARATORS = " \t\n\v\f\r" + string.punctuation

_LOWERCASE_ASCII: dict[int, str] = {ord(upper): upper.lower() for upper in string.ascii_uppercase}
# Lowercasing and separator replacement in one pass: the two character sets are disjoint.
_TRANSLATION: dict[int, str] = {
    **_LOWERCASE_ASCII,
    **{ord(separator): " " for separator in SEPARATORS},
}


def normalize(text: str) -> str:
    """Lowercase ASCII letters only (step 1), as ``StringNormalizer(LOWER, locale="C")``."""
    return text.translate(_LOWERCASE_ASCII)


def tokenize(text: str) -> list[str]:
    """The tokens of one text (see the module docstring)."""
    return [token for token in text.translate(_TRANSLATION).split(" ") if token]


def tokenize_many(texts: Iterable[str]) -> list[list[str]]:
    """`tokenize` over many texts."""
    translation = _TRANSLATION
    return [[token for token in text.translate(translation).split(" ") if token] for text in texts]
