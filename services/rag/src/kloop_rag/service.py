"""What the HTTP and gRPC front ends share: admit a caller, then answer a question.

ask: check input -> retrieve k chunks -> answer cache lookup -> grounded prompt ->
Claude (or extractive) -> citations of retrieved chunks only -> cache -> accounting.
Pure decisions live in prompt/extractive/cache/accounting; I/O in retrieval/llm.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio
import redis.exceptions
from opentelemetry.trace import SpanKind
from redis.backoff import NoBackoff
from redis.retry import Retry

from kloop_core.errors import Unprocessable
from kloop_core.logging import get_logger
from kloop_core.rate_limit import RateLimit
from kloop_core.tracing import get_tracer
from kloop_rag import metrics
from kloop_rag.accounting import Usage
from kloop_rag.auth import Authenticator, Principal
from kloop_rag.cache import AnswerCache
from kloop_rag.chunks import Chunk, Citation
from kloop_rag.extractive import NO_ANSWER, extractive_answer
from kloop_rag.llm import ClaudeClient, Generated
from kloop_rag.prompt import build_prompt, citations_for, cited_refs, fit_chunks
from kloop_rag.retrieval import Retriever, VectorStoreRetriever
from kloop_rag.settings import RagSettings

log = get_logger(__name__)
tracer = get_tracer(__name__)

COLLECTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_COLLECTION = re.compile(COLLECTION_PATTERN)
GENERATIVE = "generative"
EXTRACTIVE = "extractive"
# The "model" of extractive answers in cache keys.
EXTRACTIVE_MODEL = "extractive"


@dataclass(frozen=True, slots=True)
class Answer:
    answer: str
    citations: list[Citation]
    mode: str
    model: str
    usage: Usage
    cached: bool
    retrieved: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "citations": [c.to_dict() for c in self.citations],
            "mode": self.mode,
            "model": self.model,
            "usage": self.usage.to_dict(),
            "cached": self.cached,
            "retrieved": self.retrieved,
        }

    @classmethod
    def from_cache(cls, raw: dict[str, Any]) -> Answer:
        return cls(
            answer=str(raw["answer"]),
            citations=[Citation(**c) for c in raw["citations"]],
            mode=str(raw["mode"]),
            model=str(raw["model"]),
            usage=Usage.from_dict(raw["usage"]),
            cached=True,
            retrieved=int(raw["retrieved"]),
        )


@dataclass(slots=True)
class _Prepared:
    question: str
    chunks: list[Chunk]
    cache_key: str | None
    cached: Answer | None
    started: float


def create_async_redis(url: Any, *, timeout: float) -> redis.asyncio.Redis:
    raw = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    return redis.asyncio.Redis.from_url(
        raw,
        socket_timeout=timeout,
        socket_connect_timeout=min(0.25, timeout),
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        health_check_interval=30,
    )


class Rag:
    def __init__(
        self,
        settings: RagSettings,
        retriever: Retriever,
        *,
        redis_client: redis.asyncio.Redis | None,
        llm: ClaudeClient | None,
    ) -> None:
        self.settings = settings
        self.retriever = retriever
        self.llm = llm
        self.redis = redis_client
        self.cache = (
            AnswerCache(redis_client, ttl_seconds=settings.cache_ttl_seconds)
            if settings.cache_enabled and redis_client is not None
            else None
        )
        self.auth = Authenticator(
            redis_client,
            enabled=settings.auth_enabled,
            scope=settings.auth_scope,
            default_limit=RateLimit(settings.rate_limit_per_second, settings.rate_limit_burst),
            cache_seconds=settings.auth_cache_seconds,
        )

    @classmethod
    def create(cls, settings: RagSettings, retriever: Retriever | None = None) -> Rag:
        needs_redis = settings.cache_enabled or settings.auth_enabled
        client = (
            create_async_redis(settings.redis_url, timeout=settings.redis_timeout_seconds)
            if needs_redis
            else None
        )
        retriever = retriever or VectorStoreRetriever(
            settings.vectorstore_addr,
            timeout=settings.vectorstore_timeout_seconds,
            traced=bool(settings.otlp_endpoint),
        )
        llm = ClaudeClient(settings) if settings.generative else None
        log.info(
            "answering",
            mode=GENERATIVE if llm else EXTRACTIVE,
            model=settings.model if llm else None,
        )
        return cls(settings, retriever, redis_client=client, llm=llm)

    @property
    def mode(self) -> str:
        return GENERATIVE if self.llm is not None else EXTRACTIVE

    @property
    def model(self) -> str:
        return self.llm.model if self.llm is not None else EXTRACTIVE_MODEL

    async def close(self) -> None:
        await self.retriever.close()
        if self.llm is not None:
            await self.llm.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def ready(self) -> bool:
        if self.redis is not None:
            try:
                await self.redis.ping()
            except (redis.exceptions.RedisError, OSError):
                return False
        return await self.retriever.ready()

    async def admit(self, token: str | None) -> Principal:
        return await self.auth.admit(token)

    # --- answering --------------------------------------------------------------------

    def check(self, question: str, collection: str, k: int | None) -> tuple[str, int]:
        question = question.strip() if isinstance(question, str) else ""
        if not question:
            raise Unprocessable("question must not be empty")
        if len(question) > self.settings.max_question_chars:
            raise Unprocessable(
                f"question is longer than {self.settings.max_question_chars} characters"
            )
        try:
            question.encode("utf-8")
        except UnicodeEncodeError:
            raise Unprocessable("question is not valid Unicode (lone surrogate)") from None
        if "\x00" in question:
            raise Unprocessable("question must not contain NUL characters")
        if not _COLLECTION.match(collection or ""):
            raise Unprocessable(f"collection must match {COLLECTION_PATTERN}")
        k = k or self.settings.default_k
        if not 1 <= k <= self.settings.max_k:
            raise Unprocessable(f"k must be between 1 and {self.settings.max_k}")
        return question, k

    async def _retrieve(self, collection: str, question: str, k: int) -> list[Chunk]:
        started = time.perf_counter()
        with tracer.start_as_current_span("retrieval", kind=SpanKind.CLIENT) as span:
            span.set_attribute("gen_ai.operation.name", "retrieval")
            span.set_attribute("gen_ai.data_source.id", collection)
            span.set_attribute("gen_ai.request.top_k", k)
            chunks = await self.retriever.search(collection, question, k)
            span.set_attribute("kloop.rag.retrieved", len(chunks))
        metrics.STAGE_DURATION.labels("retrieve", self.mode).observe(time.perf_counter() - started)
        return chunks[:k]

    async def _prepare(self, question: str, collection: str, k: int | None) -> _Prepared:
        started = time.perf_counter()
        question, k = self.check(question, collection, k)
        chunks = await self._retrieve(collection, question, k)
        key = cached = None
        if self.cache is not None:
            key = self.cache.key(question, chunks, self.model)
            try:
                raw = await self.cache.get(key)
                cached = Answer.from_cache(raw) if raw is not None else None
            except (redis.exceptions.RedisError, OSError, KeyError, TypeError, ValueError) as e:
                log.warning("answer cache read failed", error=repr(e))
            metrics.CACHE_LOOKUPS.labels("hit" if cached else "miss").inc()
        return _Prepared(question, chunks, key, cached, started)

    async def ask(self, question: str, collection: str, k: int | None = None) -> Answer:
        prepared = await self._prepare(question, collection, k)
        if prepared.cached is not None:
            return self._done(prepared, prepared.cached)
        if self.llm is None or not prepared.chunks:
            return await self._done_and_cache(prepared, self._extractive(prepared))
        prompt = build_prompt(
            prepared.question, prepared.chunks, self.settings.context_token_budget
        )
        started = time.perf_counter()
        try:
            generated = await self.llm.generate(prompt)
        finally:
            metrics.STAGE_DURATION.labels("generate", GENERATIVE).observe(
                time.perf_counter() - started
            )
        return await self._done_and_cache(prepared, self._generative(prepared, prompt, generated))

    async def ask_stream(
        self, question: str, collection: str, k: int | None = None
    ) -> AsyncIterator[str | Answer]:
        """Retrieval, the cache lookup and opening the LLM stream happen here (their
        errors raise before any event); the iterator yields text deltas, then the
        Answer."""
        prepared = await self._prepare(question, collection, k)
        if prepared.cached is not None:
            return _whole(self._done(prepared, prepared.cached))
        if self.llm is None or not prepared.chunks:
            return _whole(await self._done_and_cache(prepared, self._extractive(prepared)))
        prompt = build_prompt(
            prepared.question, prepared.chunks, self.settings.context_token_budget
        )
        started = time.perf_counter()
        try:
            deltas = await self.llm.stream(prompt)
        except BaseException:
            metrics.STAGE_DURATION.labels("generate", GENERATIVE).observe(
                time.perf_counter() - started
            )
            raise
        return self._streamed(prepared, prompt, deltas, started)

    async def _streamed(
        self,
        prepared: _Prepared,
        prompt: Any,
        deltas: AsyncIterator[str | Generated],
        started: float,
    ) -> AsyncIterator[str | Answer]:
        generated: Generated | None = None
        try:
            async for item in deltas:
                if isinstance(item, Generated):
                    generated = item
                else:
                    yield item
        finally:
            metrics.STAGE_DURATION.labels("generate", GENERATIVE).observe(
                time.perf_counter() - started
            )
        assert generated is not None
        yield await self._done_and_cache(prepared, self._generative(prepared, prompt, generated))

    # --- building answers ---------------------------------------------------------------

    def _extractive(self, prepared: _Prepared) -> Answer:
        started = time.perf_counter()
        chunks = fit_chunks(prepared.chunks, self.settings.context_token_budget)
        if self.llm is not None and not chunks:
            mode = GENERATIVE  # nothing retrieved: no LLM call needed to say so
            text = NO_ANSWER
        else:
            mode = EXTRACTIVE
            text = extractive_answer(prepared.question, chunks, self.settings.extractive_sentences)
            metrics.EXTRACTIVE_ANSWERS.inc()
        metrics.STAGE_DURATION.labels("generate", mode).observe(time.perf_counter() - started)
        return Answer(
            answer=text,
            citations=citations_for(text, chunks),
            mode=mode,
            model=self.llm.model if mode == GENERATIVE and self.llm else "",
            usage=Usage(),
            cached=False,
            retrieved=len(prepared.chunks),
        )

    def _generative(self, prepared: _Prepared, prompt: Any, generated: Generated) -> Answer:
        citations = citations_for(generated.text, prompt.chunks)
        dropped = len(cited_refs(generated.text)) - len(citations)
        if dropped:
            metrics.CITATIONS_DROPPED.inc(dropped)
            log.info("dropped citations of chunks that were not retrieved", dropped=dropped)
        return Answer(
            answer=generated.text,
            citations=citations,
            mode=GENERATIVE,
            model=generated.model,
            usage=generated.usage,
            cached=False,
            retrieved=len(prepared.chunks),
        )

    async def _done_and_cache(self, prepared: _Prepared, answer: Answer) -> Answer:
        if self.cache is not None and prepared.cache_key is not None:
            record = answer.to_dict()
            record.pop("cached")
            try:
                await self.cache.put(
                    prepared.cache_key, record, (c.document_id for c in prepared.chunks)
                )
            except (redis.exceptions.RedisError, OSError) as error:
                log.warning("answer cache write failed", error=repr(error))
        return self._done(prepared, answer)

    def _done(self, prepared: _Prepared, answer: Answer) -> Answer:
        metrics.ANSWERS.labels(answer.mode, str(answer.cached).lower()).inc()
        metrics.STAGE_DURATION.labels("total", answer.mode).observe(
            time.perf_counter() - prepared.started
        )
        return answer


async def _whole(answer: Answer) -> AsyncIterator[str | Answer]:
    yield answer.answer
    yield answer
