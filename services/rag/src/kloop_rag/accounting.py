"""Token usage and cost: pure functions, plus recording them as metrics and span
attributes (OpenTelemetry GenAI semantic conventions)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from opentelemetry.trace import Span

from kloop_rag import metrics
from kloop_rag.settings import ModelPrice

_PER_MILLION = 1_000_000


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0  # uncached input (Anthropic counts cached parts separately)
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: float = 0.0

    @classmethod
    def from_sdk(cls, usage: Any, price: ModelPrice | None) -> Usage:
        """From the SDK's `Usage` (cache fields may be None)."""
        counts = cls(
            input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
            cache_read_input_tokens=int(getattr(usage, "cache_read_input_tokens", 0) or 0),
            cache_creation_input_tokens=int(getattr(usage, "cache_creation_input_tokens", 0) or 0),
        )
        return counts.priced(price)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Usage:
        return cls(**{k: raw[k] for k in cls.__slots__ if k in raw})

    def priced(self, price: ModelPrice | None) -> Usage:
        return Usage(
            self.input_tokens,
            self.output_tokens,
            self.cache_read_input_tokens,
            self.cache_creation_input_tokens,
            cost_usd(self, price),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cost_usd(usage: Usage, price: ModelPrice | None) -> float:
    """The cost of `usage` at `price` (USD per million tokens); 0 for an unknown price."""
    if price is None:
        return 0.0
    return (
        usage.input_tokens * price.input
        + usage.output_tokens * price.output
        + usage.cache_read_input_tokens * price.cache_read
        + usage.cache_creation_input_tokens * price.cache_write
    ) / _PER_MILLION


def record_usage(model: str, usage: Usage) -> None:
    metrics.TOKENS.labels(model, "input").inc(usage.input_tokens)
    metrics.TOKENS.labels(model, "output").inc(usage.output_tokens)
    metrics.TOKENS.labels(model, "cache_read").inc(usage.cache_read_input_tokens)
    metrics.TOKENS.labels(model, "cache_creation").inc(usage.cache_creation_input_tokens)
    metrics.COST.labels(model).inc(usage.cost_usd)


def set_usage_attributes(span: Span, usage: Usage) -> None:
    span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
    span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cache_read_input_tokens)
    span.set_attribute(
        "gen_ai.usage.cache_creation.input_tokens", usage.cache_creation_input_tokens
    )
    span.set_attribute("kloop.llm.cost_usd", usage.cost_usd)
