from __future__ import annotations

import pytest

from kloop_core.errors import Unprocessable
from kloop_gateway.texts import canonical_text, check_texts, token_count


def test_canonical_text_trims_and_collapses_whitespace() -> None:
    assert canonical_text("  Great\t\tfood \n\n ok ") == "Great food ok"
    assert canonical_text("a\u00a0b") == "a b"  # Unicode spaces too
    assert canonical_text("Case Stays") == "Case Stays"  # nothing else changes


def test_check_texts_returns_canonical_texts() -> None:
    assert check_texts([" a  b ", "c"], max_chars=10, max_count=2) == ["a b", "c"]


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "at least one"),
        (["a", "b", "c"], "at most 2"),
        (["   "], "text is empty"),
        (["ok", ""], "text 1 is empty"),
        (["x" * 11], "limit is 10"),
        (["bad \ud800"], "not valid Unicode"),
    ],
)
def test_check_texts_refuses(texts: list[str], message: str) -> None:
    with pytest.raises(Unprocessable, match=message):
        check_texts(texts, max_chars=10, max_count=2)


def test_token_count_uses_the_model_tokenizer() -> None:
    assert token_count("Don't STOP, café!!") == 4  # don / t / stop / café
    assert token_count("!?") == 0
