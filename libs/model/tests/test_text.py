"""The tokenizer: its definition, its properties, and that the ONNX graph's matches it."""

from __future__ import annotations

import string
from functools import cache

import numpy as np
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from kloop_model.dataset import generate_texts
from kloop_model.onnx_export import NORMALIZER_LOCALE, create_session, tokenizer_onnx
from kloop_model.text import SEPARATORS, normalize, tokenize, tokenize_many

# Any text onnxruntime can take: every Unicode scalar value (no lone surrogates).
any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
# Text biased towards the interesting characters.
tricky_text = st.text(
    alphabet=st.sampled_from(
        list(SEPARATORS + "aZz09" + "\xa0\u3000\x85\u2028\x00ÉéßẞİıΣσς😀\u0301\ufeff—«»")  # noqa: RUF001
    ),
    max_size=40,
)


def test_examples() -> None:
    assert tokenize("Don't STOP, café!!") == ["don", "t", "stop", "café"]
    assert tokenize("I LOVE it.It's GREAT") == ["i", "love", "it", "it", "s", "great"]
    assert tokenize("well-made/cheap (really)") == ["well", "made", "cheap", "really"]
    assert tokenize("tab\tnew\nline\r\nend") == ["tab", "new", "line", "end"]


def test_texts_that_normalize_to_nothing() -> None:
    for text in ["", " ", "   ", "\t\n\r\v\f", "!!!", "...", "'", string.punctuation]:
        assert tokenize(text) == [], repr(text)


def test_only_ascii_is_lowercased() -> None:
    assert normalize("ÉCOLE ΩMEGA İSTANBUL STRAẞE ǅ") == "École Ωmega İstanbul straẞe ǅ"
    assert tokenize("ÉCOLE") == ["École"]


def test_non_ascii_whitespace_and_punctuation_stay_inside_tokens() -> None:
    assert tokenize("a\xa0b c\u3000d e\u2028f") == ["a\xa0b", "c\u3000d", "e\u2028f"]
    assert tokenize("«bien»—¡sí!") == ["«bien»—¡sí"]
    assert tokenize("great😀 👍") == ["great😀", "👍"]


def test_tokenize_many_matches_tokenize() -> None:
    texts = generate_texts(300, seed=1)
    assert tokenize_many(texts) == [tokenize(text) for text in texts]


@given(any_text)
def test_tokens_are_non_empty_lowercase_and_separator_free(text: str) -> None:
    for token in tokenize(text):
        assert token
        assert not set(token) & set(SEPARATORS)
        assert not set(token) & set(string.ascii_uppercase)


@given(any_text, any_text)
def test_tokenize_is_compositional(left: str, right: str) -> None:
    assert tokenize(left + " " + right) == tokenize(left) + tokenize(right)


@given(any_text)
def test_tokenize_is_idempotent_on_its_output(text: str) -> None:
    tokens = tokenize(text)
    assert tokenize(" ".join(tokens)) == tokens
    assert tokenize(normalize(text)) == tokens


@cache
def _tokenizer_session() -> ort.InferenceSession:
    return create_session(tokenizer_onnx(), intra_op_num_threads=1)


def _onnx_tokens(texts: list[str]) -> list[list[str]]:
    rows = _tokenizer_session().run(None, {"text": np.array(texts, dtype=object)})[0]
    return [sorted(token for token in row if token) for row in rows]


@settings(deadline=None, max_examples=300)
@given(st.lists(st.one_of(any_text, tricky_text), min_size=1, max_size=8))
def test_onnx_tokenizer_matches_python(texts: list[str]) -> None:
    # The graph keeps tokens as a multiset (order is irrelevant to a bag of words).
    assert _onnx_tokens(texts) == [sorted(tokenize(text)) for text in texts]


def test_onnx_tokenizer_matches_python_on_generated_texts() -> None:
    texts = generate_texts(3000, seed=2)
    assert _onnx_tokens(texts) == [sorted(tokenize(text)) for text in texts]


def test_onnx_tokenizer_handles_empty_batch() -> None:
    rows = _tokenizer_session().run(None, {"text": np.array([], dtype=object)})[0]
    assert rows.shape[0] == 0


def test_string_normalizer_locale_lowercases_exactly_ascii() -> None:
    """Guards the assumption the tokenizer rests on, over every Unicode scalar value: the
    graph's StringNormalizer (locale "C") maps A-Z to a-z and leaves all else alone."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "StringNormalizer",
                ["x"],
                ["y"],
                case_change_action="LOWER",
                is_case_sensitive=1,
                locale=NORMALIZER_LOCALE,
            )
        ],
        "lower",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    session = create_session(model)
    code_points = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    characters = np.array([chr(c) for c in code_points], dtype=object)
    lowered = session.run(None, {"x": characters})[0]
    mismatches = [
        hex(c) for c, got in zip(code_points, lowered, strict=True) if got != normalize(chr(c))
    ]
    assert mismatches == []
