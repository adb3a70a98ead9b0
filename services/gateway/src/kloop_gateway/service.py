"""What the HTTP and gRPC front ends share: admit a caller, predict, take feedback,
manage traffic policies. Pure decisions come from policy/texts/cache/prediction; the
I/O from clients."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import redis.exceptions

from kloop_core.api_keys import SCOPES, ApiKey
from kloop_core.errors import (
    AlreadyExists,
    KloopError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unprocessable,
)
from kloop_core.logging import get_logger
from kloop_core.rate_limit import Decision, RateLimit
from kloop_gateway import metrics
from kloop_gateway.aliases import AliasEvent, AliasTable
from kloop_gateway.cache import cache_key
from kloop_gateway.clients import (
    EventWriter,
    GatewayStore,
    InferenceClient,
    ModelEventsFollower,
    PendingWrite,
    create_async_redis,
    raise_if_cancelled,
)
from kloop_gateway.policy import (
    CANARY,
    CHALLENGER,
    PRODUCTION,
    TrafficPolicy,
    choose_alias,
    should_shadow,
)
from kloop_gateway.prediction import (
    Prediction,
    label_for,
    prediction_event,
    prediction_record,
)
from kloop_gateway.settings import GatewaySettings
from kloop_gateway.texts import check_texts, token_count

log = get_logger(__name__)

# Registered model names travel in URLs, Redis keys and metric labels: keep them plain.
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
_PREDICTION_ID = re.compile(r"^[0-9a-f]{32}$")
ANONYMOUS = "anonymous"
_KNOWN_KEYS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    scopes: frozenset[str]
    limit: RateLimit


@dataclass(frozen=True, slots=True)
class Scored:
    version: str
    score: float
    cached: bool


def _identity(principal: Principal) -> str:
    return f"key:{principal.key_id}"


def _enforce(decision: Decision, principal: Principal, scope: str) -> None:
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(scope).inc()
        raise ResourceExhausted(
            f"rate limit of {principal.limit.per_second:g} requests/s exceeded",
            retry_after=decision.retry_after,
        )


@contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    try:
        yield
    except (redis.exceptions.RedisError, OSError) as error:
        log.warning("redis call failed", what=what, error=repr(error))
        raise Unavailable(f"{what} is unavailable", retry_after=1.0) from None


class Gateway:
    def __init__(
        self,
        settings: GatewaySettings,
        store: GatewayStore,
        inference: InferenceClient,
        aliases: AliasTable,
        writer: EventWriter,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._store = store
        self._inference = inference
        self._aliases = aliases
        self._writer = writer
        self._rng = rng
        self._default_limit = RateLimit(settings.rate_limit_per_second, settings.rate_limit_burst)
        self.default_policy = TrafficPolicy(
            canary_percent=settings.canary_percent,
            shadow_percent=settings.shadow_percent,
            sticky=settings.sticky_routing,
        )
        self._policies: dict[str, TrafficPolicy] = {}
        self._known_keys: dict[bytes, tuple[ApiKey, float]] = {}
        self._shadows: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], object]] = []

    @classmethod
    async def create(cls, settings: GatewaySettings) -> Gateway:
        """Connect to Redis and inference and start the background tasks."""
        client = create_async_redis(settings.redis_url, timeout=settings.redis_timeout_seconds)
        # XREAD blocks for a second: its own connection, with a longer socket timeout.
        follower_client = create_async_redis(settings.redis_url, timeout=5.0)
        store = GatewayStore(
            client,
            prediction_ttl=settings.prediction_ttl_seconds,
            cache_ttl=settings.cache_ttl_seconds,
            events_stream=settings.events_stream,
            events_maxlen=settings.events_maxlen,
            feedback_stream=settings.feedback_stream,
            feedback_maxlen=settings.feedback_maxlen,
            feedback_ttl=settings.feedback_ttl_seconds,
        )
        inference = InferenceClient(
            settings.inference_addr,
            timeout=settings.inference_timeout_seconds,
            traced=bool(settings.otlp_endpoint),
        )
        aliases = AliasTable(settings.learned_alias_ttl_seconds)
        writer = EventWriter(
            store,
            queue_size=settings.event_queue_size,
            batch_size=settings.event_batch_size,
            linger=settings.event_linger_seconds,
        )
        gateway = cls(settings, store, inference, aliases, writer)
        follower = ModelEventsFollower(
            follower_client, settings.model_events_stream, aliases, gateway._on_model_event
        )
        writer.start()
        gateway._tasks = [
            asyncio.create_task(follower.run(), name="model-events"),
            asyncio.create_task(gateway._refresh_policies_forever(), name="traffic-policies"),
        ]
        gateway._closers = [inference.close, client.aclose, follower_client.aclose]
        return gateway

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._shadows:
            await asyncio.wait(self._shadows, timeout=self.settings.inference_timeout_seconds)
        await self._writer.close(within=self.settings.shutdown_grace_seconds)
        for close in self._closers:
            result = close()
            if asyncio.iscoroutine(result):
                await result

    async def ready(self) -> bool:
        return await self._store.ping() and await self._inference.ready()

    # --- callers ----------------------------------------------------------------------

    async def authenticate(self, token: str | None, scope: str) -> Principal:
        """The caller behind `token` if it has `scope`: 401 or 403 else."""
        if not self.settings.auth_enabled:
            return Principal(ANONYMOUS, frozenset(SCOPES), self._default_limit)
        if not token:
            metrics.AUTH_FAILURES.labels("missing").inc()
            raise Unauthenticated(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        key = await self._verified_key(token)
        if key is None:
            metrics.AUTH_FAILURES.labels("invalid").inc()
            raise Unauthenticated("invalid or revoked API key")
        if not key.allows(scope):
            metrics.AUTH_FAILURES.labels("scope").inc()
            raise PermissionDenied(f"this API key lacks the '{scope}' scope")
        limit = RateLimit(
            key.rate_per_second or self._default_limit.per_second,
            key.burst or self._default_limit.burst,
        )
        return Principal(key.id, key.scopes, limit)

    async def _verified_key(self, token: str) -> ApiKey | None:
        # Looked up by a digest of the token, so the lookup's timing says nothing about
        # any secret; only verified keys are kept (bounded by how many keys exist).
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        now = time.monotonic()
        known = self._known_keys.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        with _redis_errors("the API key store"):
            key = await self._store.authenticate(token)
        if key is not None and self.settings.auth_cache_seconds > 0:
            if len(self._known_keys) >= _KNOWN_KEYS_MAX:
                self._known_keys.clear()
            self._known_keys[digest] = (key, now + self.settings.auth_cache_seconds)
        return key

    async def admit(self, token: str | None, scope: str) -> Principal:
        """`authenticate`, then the caller's rate limit (429 when over it)."""
        principal = await self.authenticate(token, scope)
        with _redis_errors("the rate limiter"):
            decision = await self._store.acquire(_identity(principal), principal.limit)
        _enforce(decision, principal, scope)
        return principal

    # --- predictions ------------------------------------------------------------------

    async def predict(
        self,
        principal: Principal,
        model: str,
        texts: Sequence[str],
        route_key: str | None = None,
    ) -> list[Prediction]:
        """Predictions for an authenticated caller; its rate limit is checked here, in
        the same Redis round trip as the cache lookup."""
        started = time.perf_counter()
        if not _MODEL_NAME.match(model):
            raise Unprocessable(f"model name must match {MODEL_NAME_PATTERN}")
        settings = self.settings
        canonical = check_texts(
            texts, max_chars=settings.max_text_chars, max_count=settings.max_batch_texts
        )
        policy = self.policy(model)
        alias = choose_alias(
            policy,
            model=model,
            route_key=route_key,
            roll=self._rng(),
            canary_available=self._aliases.available(model, CANARY),
        )
        version = self._aliases.version_for_cache(model, alias) if settings.cache_enabled else None
        keys = [cache_key(model, version, text) for text in canonical] if version else []
        with _redis_errors("the rate limiter"):
            decision, cached = await self._store.acquire_and_read(
                _identity(principal), principal.limit, keys
            )
        _enforce(decision, principal, "predict")
        try:
            scored = await self._score(model, alias, canonical, version, cached)
        except NotFound:
            # The model exists but has no canary (yet, or any more): production answers.
            if alias == PRODUCTION or not self._inference.knows(model):
                raise
            self._aliases.mark_absent(model, alias, settings.absent_alias_retry_seconds)
            alias = PRODUCTION
            scored = await self._score(model, alias, canonical, None, [])

        labels, threshold = settings.labels, settings.threshold
        predictions = [
            Prediction(
                id=uuid.uuid4().hex,
                label=label_for(s.score, labels, threshold),
                score=s.score,
                model=model,
                version=s.version,
                alias=alias,
                cached=s.cached,
            )
            for s in scored
        ]
        self._record(predictions, canonical, time.perf_counter() - started)
        if should_shadow(policy, self._rng()):
            self._start_shadow(model, alias, canonical, [s.score for s in scored])
        return predictions

    async def _score(
        self,
        model: str,
        alias: str,
        texts: list[str],
        version: str | None,
        cached: list[float | None],
    ) -> list[Scored]:
        """`cached` scores (of `version`, the alias's current one) where there are any,
        else inference's (one call for all the misses)."""
        results: list[Scored | None] = [None] * len(texts)
        for index, score in enumerate(cached):
            if score is not None and version is not None:
                results[index] = Scored(version, score, True)
        misses = [index for index, result in enumerate(results) if result is None]
        if misses:
            answered, scores = await self._inference.infer(model, alias, [texts[i] for i in misses])
            self._aliases.learn(model, alias, answered)
            for index, score in zip(misses, scores, strict=True):
                results[index] = Scored(answered, score, False)
        # Labelled only now: the model is known to exist (no label from arbitrary names).
        if version is None:
            metrics.CACHE_LOOKUPS.labels(model, "bypass").inc(len(texts))
        else:
            metrics.CACHE_LOOKUPS.labels(model, "hit").inc(len(texts) - len(misses))
            metrics.CACHE_LOOKUPS.labels(model, "miss").inc(len(misses))
        return [result for result in results if result is not None]

    def _record(self, predictions: list[Prediction], texts: list[str], latency: float) -> None:
        settings = self.settings
        at = datetime.now(UTC)
        for prediction, text in zip(predictions, texts, strict=True):
            metrics.PREDICTIONS.labels(
                prediction.model, prediction.alias, prediction.version, prediction.label
            ).inc()
            event = None
            if self._rng() < settings.event_sample_rate:
                event = prediction_event(
                    prediction,
                    text=text,
                    tokens=token_count(text),
                    at=at,
                    latency_seconds=latency,
                    include_text=settings.event_include_text,
                )
            cache_entry = None
            if settings.cache_enabled and not prediction.cached:
                key = cache_key(prediction.model, prediction.version, text)
                cache_entry = (key, prediction.score)
            self._writer.submit(
                PendingWrite(prediction.id, prediction_record(prediction, at), event, cache_entry)
            )

    # --- shadow traffic ---------------------------------------------------------------

    def _start_shadow(self, model: str, alias: str, texts: list[str], scores: list[float]) -> None:
        if not self._aliases.available(model, CHALLENGER):
            metrics.SHADOW_REQUESTS.labels(model, "absent").inc()
            return
        if len(self._shadows) >= self.settings.shadow_max_concurrency:
            metrics.SHADOW_REQUESTS.labels(model, "skipped").inc()
            return
        task = asyncio.create_task(self._shadow(model, alias, texts, scores))
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadow(self, model: str, alias: str, texts: list[str], scores: list[float]) -> None:
        """The challenger's answers, compared with what was returned; never returned."""
        try:
            _, challenger = await self._inference.infer(model, CHALLENGER, texts)
        except NotFound:
            self._aliases.mark_absent(model, CHALLENGER, self.settings.absent_alias_retry_seconds)
            metrics.SHADOW_REQUESTS.labels(model, "absent").inc()
            return
        except KloopError as error:
            log.info("shadow request failed", model=model, error=error.message)
            metrics.SHADOW_REQUESTS.labels(model, "failed").inc()
            return
        labels, threshold = self.settings.labels, self.settings.threshold
        difference = metrics.SHADOW_SCORE_DIFFERENCE.labels(model, alias)
        for primary, shadow in zip(scores, challenger, strict=True):
            agree = label_for(primary, labels, threshold) == label_for(shadow, labels, threshold)
            metrics.SHADOW_COMPARISONS.labels(model, alias, "agree" if agree else "disagree").inc()
            difference.observe(abs(primary - shadow))
        metrics.SHADOW_REQUESTS.labels(model, "compared").inc()

    # --- feedback ---------------------------------------------------------------------

    async def feedback(self, prediction_id: str, label: str) -> Literal["recorded", "duplicate"]:
        """Record the true label of a prediction: "recorded" or "duplicate"."""
        if label not in self.settings.labels:
            raise Unprocessable(f"label must be one of {', '.join(self.settings.labels)}")
        if not _PREDICTION_ID.match(prediction_id):
            metrics.FEEDBACK.labels("unknown").inc()
            raise NotFound("no such prediction")
        with _redis_errors("the feedback store"):
            outcome, existing = await self._store.record_feedback(
                prediction_id, label, datetime.now(UTC)
            )
            if outcome == "unknown" and await self._writer.flush(within=1.0):
                # A prediction made a moment ago may still be on its way to Redis.
                outcome, existing = await self._store.record_feedback(
                    prediction_id, label, datetime.now(UTC)
                )
        metrics.FEEDBACK.labels(outcome).inc()
        if outcome == "unknown":
            raise NotFound(f"no prediction {prediction_id} (unknown or expired)")
        if outcome == "conflict":
            raise AlreadyExists(f"feedback for {prediction_id} is already recorded as '{existing}'")
        return "duplicate" if outcome == "duplicate" else "recorded"

    # --- traffic policy ---------------------------------------------------------------

    def policy(self, model: str) -> TrafficPolicy:
        return self._policies.get(model, self.default_policy)

    def has_runtime_policy(self, model: str) -> bool:
        return model in self._policies

    async def set_policy(self, model: str, policy: TrafficPolicy) -> None:
        with _redis_errors("the policy store"):
            await self._store.save_policy(model, policy)
        self._policies = {**self._policies, model: policy}

    async def reset_policy(self, model: str) -> None:
        with _redis_errors("the policy store"):
            await self._store.delete_policy(model)
        self._policies = {k: v for k, v in self._policies.items() if k != model}

    async def _refresh_policies_forever(self) -> None:
        """Other replicas' admin changes arrive within `policy_refresh_seconds`."""
        while True:
            try:
                self._policies = await self._store.policies()
            except (redis.exceptions.RedisError, OSError) as error:
                log.warning("cannot refresh traffic policies", error=repr(error))
            raise_if_cancelled()
            await asyncio.sleep(self.settings.policy_refresh_seconds)

    def _on_model_event(self, event: AliasEvent) -> None:
        self._inference.forget(event.name)
