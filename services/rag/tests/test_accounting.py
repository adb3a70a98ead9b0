from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kloop_rag.accounting import Usage, cost_usd
from kloop_rag.settings import DEFAULT_MODEL, DEFAULT_PRICES, ModelPrice, RagSettings


def test_cost_per_million_tokens() -> None:
    price = ModelPrice(input=3, output=15, cache_read=0.3, cache_write=3.75)
    usage = Usage(1_000_000, 100_000, 2_000_000, 10_000)
    assert cost_usd(usage, price) == pytest.approx(3 + 1.5 + 0.6 + 0.0375)
    assert cost_usd(usage, None) == 0.0


@given(st.integers(0, 10**7), st.integers(0, 10**7))
def test_cache_reads_are_cheaper_than_input(tokens: int, output: int) -> None:
    price = DEFAULT_PRICES[DEFAULT_MODEL]
    cached = cost_usd(Usage(0, output, tokens, 0), price)
    uncached = cost_usd(Usage(tokens, output, 0, 0), price)
    assert cached <= uncached


def test_settings(monkeypatch) -> None:
    monkeypatch.delenv("KLOOP_RAG_ANTHROPIC_API_KEY", raising=False)
    assert not RagSettings().generative  # no key: extractive
    assert RagSettings(anthropic_api_key="k").generative
    assert not RagSettings(anthropic_api_key="k", mode="extractive").generative
    assert not RagSettings(anthropic_api_key="  ").generative
    with pytest.raises(ValueError, match="needs KLOOP_RAG_ANTHROPIC_API_KEY"):
        RagSettings(mode="generative")
    monkeypatch.setenv(
        "KLOOP_RAG_PRICES",
        '{"my-model": {"input": 1, "output": 2, "cache_read": 0.1, "cache_write": 1.25}}',
    )
    assert RagSettings().prices["my-model"].output == 2
    assert DEFAULT_MODEL in DEFAULT_PRICES
