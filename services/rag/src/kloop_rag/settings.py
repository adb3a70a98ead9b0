"""RAG settings, from `KLOOP_RAG_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from kloop_core.settings import Port, ServiceSettings


class ModelPrice(BaseModel):
    """USD per million tokens. `cache_write` is the 5-minute prompt-cache write price."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float = Field(ge=0)
    cache_write: float = Field(ge=0)


def _price(input_: float, output: float) -> ModelPrice:
    # Anthropic's prompt-caching multipliers: reads 0.1x, 5-minute writes 1.25x input.
    return ModelPrice(
        input=input_, output=output, cache_read=input_ * 0.1, cache_write=input_ * 1.25
    )


# Public list prices per million tokens by tier (Haiku $1/$5, Sonnet $3/$15, Opus 4.5+
# $5/$25). Override with KLOOP_RAG_PRICES='{"model": {"input": ..., ...}}' when they
# change; a model missing here is answered, and its tokens counted, at cost 0 (logged).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "claude-haiku-5-5": _price(1.0, 5.0),
    "claude-sonnet-5-5": _price(3.0, 15.0),
    "claude-opus-5-5": _price(5.0, 25.0),
    "claude-sonnet-5": _price(3.0, 15.0),
    "claude-opus-5": _price(5.0, 25.0),
    "claude-opus-4-8": _price(5.0, 25.0),
    "claude-opus-4-7": _price(5.0, 25.0),
    "claude-opus-4-6": _price(5.0, 25.0),
    "claude-sonnet-4-6": _price(3.0, 15.0),
    "claude-opus-4-5": _price(5.0, 25.0),
    "claude-sonnet-4-5": _price(3.0, 15.0),
    "claude-haiku-4-5": _price(1.0, 5.0),
}

DEFAULT_MODEL = "claude-sonnet-5-5"


class RagSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="KLOOP_RAG_")

    grpc_port: Port = 50159
    http_port: Port = 18159

    # --- answering mode -------------------------------------------------------------
    # auto: generative when an API key is set, else extractive. generative: an API key
    # is required (start-up fails without one). extractive: never calls an LLM.
    mode: Literal["auto", "generative", "extractive"] = "auto"

    # --- Claude ---------------------------------------------------------------------
    anthropic_api_key: SecretStr | None = None
    # None = the SDK's default (api.anthropic.com); tests point it at a local server.
    anthropic_base_url: str | None = None
    model: str = Field(default=DEFAULT_MODEL, min_length=1)
    max_output_tokens: int = Field(default=1024, ge=1, le=64_000)
    # Per attempt (the SDK's timeout); timeouts, 408/409/429 and 5xx (incl. 529) are
    # retried by the SDK with exponential backoff (0.5 s doubling, max 8 s, or the
    # server's retry-after) up to llm_max_retries times.
    llm_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    # Whole-answer deadline over all attempts (and a stream's full length): never a hang.
    llm_deadline_seconds: float = Field(default=90.0, gt=0, le=1800)
    # cache_control on the system prompt (it only caches when the cached prefix is
    # long enough for the model, e.g. 1024+ tokens; shorter prefixes are sent as usual).
    prompt_caching: bool = True
    prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES))

    # --- retrieval and prompt -------------------------------------------------------
    vectorstore_addr: str = "127.0.0.1:50157"
    vectorstore_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    default_k: int = Field(default=5, ge=1)
    max_k: int = Field(default=20, ge=1, le=200)
    # Tokens (estimated) of retrieved text the prompt may hold; chunks beyond it are
    # left out (the last one that partly fits is cut).
    context_token_budget: int = Field(default=6000, ge=100)
    max_question_chars: int = Field(default=2000, ge=1)
    # Extractive answers: this many best-matching sentences.
    extractive_sentences: int = Field(default=3, ge=1, le=20)

    # --- answer cache ---------------------------------------------------------------
    cache_enabled: bool = True
    cache_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    redis_timeout_seconds: float = Field(default=0.5, gt=0, le=10)

    # --- auth and rate limits (the gateway's key store and token buckets) -----------
    auth_enabled: bool = True
    auth_scope: str = Field(default="ask", min_length=1)
    auth_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # Per key; a key's own rate_per_second / burst override these. LLM answers are
    # costly, so the defaults are far below the gateway's.
    rate_limit_per_second: float = Field(default=5.0, gt=0)
    rate_limit_burst: int = Field(default=20, ge=1)

    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    @field_validator("anthropic_api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("anthropic_base_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _consistent(self) -> RagSettings:
        if self.mode == "generative" and self.anthropic_api_key is None:
            raise ValueError("mode 'generative' needs KLOOP_RAG_ANTHROPIC_API_KEY")
        if self.default_k > self.max_k:
            raise ValueError("default_k must be at most max_k")
        return self

    @property
    def generative(self) -> bool:
        """Whether answers come from Claude (else extractively)."""
        return self.mode != "extractive" and self.anthropic_api_key is not None
