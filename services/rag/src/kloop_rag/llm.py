"""Claude through the anthropic SDK (AsyncAnthropic), behind a small interface.

Retries are the SDK's: timeouts, connection errors, 408/409/429 and 5xx (incl. 529
overloaded) are retried `max_retries` times with exponential backoff (or the server's
retry-after). What still fails becomes `Unavailable` (503 / UNAVAILABLE with a
Retry-After), never a 500 or a hang: a whole-answer deadline bounds every call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from kloop_core.errors import KloopError, Unavailable
from kloop_core.logging import get_logger
from kloop_core.tracing import get_tracer
from kloop_rag import metrics
from kloop_rag.accounting import Usage, record_usage, set_usage_attributes
from kloop_rag.prompt import Prompt
from kloop_rag.settings import RagSettings

log = get_logger(__name__)
tracer = get_tracer(__name__)


@dataclass(frozen=True, slots=True)
class Generated:
    text: str
    usage: Usage
    model: str
    stop_reason: str | None


def _text(message: Any) -> str:
    return "".join(b.text for b in message.content if getattr(b, "type", "") == "text")


def _outcome(error: BaseException) -> str:
    if isinstance(error, anthropic.APITimeoutError | TimeoutError):
        return "timeout"
    if isinstance(error, anthropic.RateLimitError):
        return "rate_limited"
    if isinstance(error, anthropic.APIStatusError) and error.status_code in (503, 529):
        return "overloaded"
    return "error"


def _retry_after(error: BaseException) -> float:
    response = getattr(error, "response", None)
    if response is not None:
        raw = response.headers.get("retry-after")
        try:
            return max(1.0, min(float(raw), 600.0))
        except (TypeError, ValueError):
            pass
    return 5.0


def unavailable(error: BaseException) -> KloopError:
    """What the caller sees once the SDK's retries are spent."""
    outcome = _outcome(error)
    message = {
        "timeout": "the language model did not answer in time",
        "rate_limited": "the language model is rate limited",
        "overloaded": "the language model is overloaded",
    }.get(outcome)
    if message is None:
        if isinstance(error, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
            message = "the language model refused the service's API key"
        elif isinstance(error, anthropic.APIConnectionError):
            message = "the language model is unreachable"
        else:
            message = "the language model failed"
    return Unavailable(f"{message}; try again later", retry_after=_retry_after(error))


class ClaudeClient:
    def __init__(self, settings: RagSettings) -> None:
        assert settings.anthropic_api_key is not None
        self.model = settings.model
        self._settings = settings
        self._price = settings.prices.get(settings.model)
        if self._price is None:
            log.warning("no price for the model: its cost is counted as 0", model=self.model)
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.anthropic_api_key.get_secret_value(),
            base_url=settings.anthropic_base_url,
            timeout=settings.llm_timeout_seconds,
            max_retries=settings.llm_max_retries,
        )

    def _request(self, prompt: Prompt) -> dict[str, Any]:
        system: dict[str, Any] = {"type": "text", "text": prompt.system}
        if self._settings.prompt_caching:
            system["cache_control"] = {"type": "ephemeral"}
        return {
            "model": self.model,
            "max_tokens": self._settings.max_output_tokens,
            "system": [system],
            "messages": [{"role": "user", "content": prompt.user}],
        }

    def _span(self) -> Any:
        span = tracer.start_as_current_span(f"chat {self.model}", kind=SpanKind.CLIENT)
        return span

    def _start(self, span: Span) -> None:
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.system", "anthropic")
        span.set_attribute("gen_ai.provider.name", "anthropic")
        span.set_attribute("gen_ai.request.model", self.model)
        span.set_attribute("gen_ai.request.max_tokens", self._settings.max_output_tokens)

    def _finish(self, span: Span, message: Any) -> Generated:
        usage = Usage.from_sdk(message.usage, self._price)
        text = _text(message)
        span.set_attribute("gen_ai.response.model", str(message.model))
        span.set_attribute("gen_ai.response.id", str(message.id))
        if message.stop_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [str(message.stop_reason)])
        set_usage_attributes(span, usage)
        record_usage(self.model, usage)
        metrics.LLM_REQUESTS.labels(self.model, "ok").inc()
        return Generated(text, usage, str(message.model), message.stop_reason)

    def _failed(self, span: Span, error: BaseException) -> KloopError:
        outcome = _outcome(error)
        metrics.LLM_REQUESTS.labels(self.model, outcome).inc()
        span.set_attribute("error.type", type(error).__name__)
        span.set_status(Status(StatusCode.ERROR, outcome))
        log.warning(
            "llm call failed", model=self.model, outcome=outcome, error=type(error).__name__
        )
        return unavailable(error)

    async def generate(self, prompt: Prompt) -> Generated:
        with self._span() as span:
            self._start(span)
            try:
                async with asyncio.timeout(self._settings.llm_deadline_seconds):
                    message = await self._client.messages.create(**self._request(prompt))
            except (anthropic.APIError, TimeoutError) as error:
                raise self._failed(span, error) from None
            return self._finish(span, message)

    async def stream(self, prompt: Prompt) -> AsyncIterator[str | Generated]:
        """Opens the stream (connection, status and the SDK's retries happen here,
        before anything is yielded) and returns an iterator of text deltas ending with
        the `Generated` whole."""
        span = tracer.start_span(f"chat {self.model}", kind=SpanKind.CLIENT)
        self._start(span)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.llm_deadline_seconds
        manager = self._client.messages.stream(**self._request(prompt))
        try:
            async with asyncio.timeout_at(deadline):
                stream = await manager.__aenter__()
        except (anthropic.APIError, TimeoutError) as error:
            failure = self._failed(span, error)
            span.end()
            raise failure from None
        return self._deltas(span, manager, stream, deadline)

    async def _deltas(
        self, span: Span, manager: Any, stream: Any, deadline: float
    ) -> AsyncIterator[str | Generated]:
        try:
            with trace.use_span(span, end_on_exit=False):
                async with asyncio.timeout_at(deadline):
                    async for text in stream.text_stream:
                        yield text
                    message = await stream.get_final_message()
                yield self._finish(span, message)
        except (anthropic.APIError, TimeoutError) as error:
            raise self._failed(span, error) from None
        finally:
            await manager.__aexit__(None, None, None)
            span.end()

    async def complete(self, system: str, user: str, max_tokens: int = 512) -> str:
        """One plain call (the evaluation's judge), with the same retries and errors."""
        try:
            async with asyncio.timeout(self._settings.llm_deadline_seconds):
                message = await self._client.messages.create(
                    model=self.model,
                    max_tokens=max_tokens,
                    system=system,
                    messages=[{"role": "user", "content": user}],
                )
        except (anthropic.APIError, TimeoutError) as error:
            raise unavailable(error) from None
        record_usage(self.model, Usage.from_sdk(message.usage, self._price))
        return _text(message)

    async def close(self) -> None:
        await self._client.close()
