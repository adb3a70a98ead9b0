"""The gateway's I/O: inference over gRPC (grpc.aio), Redis (auth, rate limits, cache,
records, feedback, traffic policies), the model-event follower and the background
writer of prediction records and events."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
import orjson
import redis.asyncio
import redis.exceptions
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from pydantic import SecretStr, ValidationError
from redis.backoff import NoBackoff
from redis.retry import Retry

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop.oip.v2 import grpc_predict_v2_pb2_grpc as pb_grpc
from kloop_core.api_keys import ApiKey, authenticate_async
from kloop_core.errors import DeadlineExceeded, KloopError, Unavailable, error_from_rpc
from kloop_core.logging import get_logger, request_id_var
from kloop_core.rate_limit import AsyncRateLimiter, Decision, RateLimit
from kloop_core.resilience import CHANNEL_OPTIONS
from kloop_core.tracing import REQUEST_ID_METADATA_KEY
from kloop_gateway import metrics
from kloop_gateway.aliases import AliasEvent, AliasTable, parse_model_event
from kloop_gateway.cache import decode_score, encode_score
from kloop_gateway.oip import (
    Signature,
    infer_request,
    scores_from_response,
    signature_from_metadata,
)
from kloop_gateway.policy import TrafficPolicy
from kloop_gateway.prediction import feedback_key, prediction_key

log = get_logger(__name__)

# Reconnect to a restarted inference server within a second, not grpc's default of up
# to two minutes of backoff (during which every call fails fast with UNAVAILABLE).
_RECONNECT_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)


def create_async_redis(url: SecretStr | str, *, timeout: float) -> redis.asyncio.Redis:
    """An asyncio client that fails fast: one immediate retry (a pooled connection that
    died since its last use), then the error, which callers turn into 503."""
    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    return redis.asyncio.Redis.from_url(
        raw,
        socket_timeout=timeout,
        socket_connect_timeout=min(0.25, timeout),
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        health_check_interval=30,
    )


# --- inference ----------------------------------------------------------------------


class InferenceClient:
    """ModelInfer for text scorers, with each model's signature read once from
    ModelMetadata. Fails fast (Unavailable) while the channel cannot connect."""

    def __init__(self, target: str, *, timeout: float, traced: bool) -> None:
        self._timeout = timeout
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[*CHANNEL_OPTIONS, *_RECONNECT_OPTIONS],
            # Spans cost tens of microseconds per call: only when they are exported.
            interceptors=aio_client_interceptors() if traced else None,  # type: ignore[no-untyped-call]
        )
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._signatures: dict[str, Signature] = {}

    async def close(self) -> None:
        await self._channel.close()

    def knows(self, model: str) -> bool:
        """Whether `model` was found by inference (its signature is known)."""
        return model in self._signatures

    def forget(self, model: str) -> None:
        """Re-read the signature on next use (a new version may have another one)."""
        self._signatures.pop(model, None)

    def _check_channel(self) -> None:
        state = self._channel.get_state(try_to_connect=False)
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise Unavailable("inference is unavailable", retry_after=1.0)

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        request_id = request_id_var.get()
        return ((REQUEST_ID_METADATA_KEY, request_id),) if request_id else None

    def _error(self, error: grpc.aio.AioRpcError) -> KloopError:
        code = error.code()
        if code is grpc.StatusCode.UNAVAILABLE:
            return Unavailable("inference is unavailable", retry_after=1.0)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            # No connection at all is "down" (503, retry later), not "slow" (504).
            if self._channel.get_state() is not grpc.ChannelConnectivity.READY:
                return Unavailable("inference is unavailable", retry_after=1.0)
            return DeadlineExceeded(f"inference did not answer within {self._timeout:g} s")
        return error_from_rpc(error)

    async def signature(self, model: str) -> Signature:
        known = self._signatures.get(model)
        if known is not None:
            return known
        self._check_channel()
        try:
            metadata = await self._stub.ModelMetadata(
                pb.ModelMetadataRequest(name=model),
                timeout=self._timeout,
                metadata=self._metadata(),
            )
        except grpc.aio.AioRpcError as error:
            raise self._error(error) from None
        signature = signature_from_metadata(metadata)
        self._signatures[model] = signature
        return signature

    async def infer(self, model: str, alias: str, texts: Sequence[str]) -> tuple[str, list[float]]:
        """(version that answered, one score per text) from `model` under `alias`."""
        signature = await self.signature(model)
        self._check_channel()
        request = infer_request(model, alias, signature, texts)
        code = "OK"
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            response = await self._stub.ModelInfer(
                request, timeout=self._timeout, metadata=self._metadata()
            )
        except grpc.aio.AioRpcError as error:
            code = error.code().name
            if error.code() is grpc.StatusCode.INVALID_ARGUMENT:
                self.forget(model)  # perhaps a new version with another signature
            raise self._error(error) from None
        except asyncio.CancelledError:
            code = "CANCELLED"  # the caller went away
            raise
        finally:
            metrics.UPSTREAM_DURATION.labels(model, alias, code).observe(loop.time() - started)
        return response.model_version, scores_from_response(response, signature, len(texts))

    async def ready(self) -> bool:
        try:
            reply = await self._stub.ServerReady(pb.ServerReadyRequest(), timeout=1.0)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.ready)


# --- Redis --------------------------------------------------------------------------

POLICIES_KEY = "kloop:gw:traffic-policies"

# KEYS: prediction record, feedback key, feedback stream.
# ARGV: true label, feedback ttl (s), stream maxlen, time, prediction id.
# Atomic: a label is stored and streamed exactly once, or not at all.
_FEEDBACK_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return {'unknown', ''} end
local existing = redis.call('GET', KEYS[2])
if existing then
  if existing == ARGV[1] then return {'duplicate', existing} end
  return {'conflict', existing}
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
local fields = {'prediction_id', ARGV[5], 'label', ARGV[1], 'time', ARGV[4]}
for name, value in pairs(cjson.decode(raw)) do
  fields[#fields + 1] = name
  fields[#fields + 1] = value
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
return {'recorded', ARGV[1]}
"""


@dataclass(frozen=True, slots=True)
class PendingWrite:
    """One prediction's record (always) and stream event (when sampled)."""

    prediction_id: str
    record: dict[str, str]
    event: dict[str, str] | None
    # (key, score) when the answer came from the model and should be cached.
    cache_entry: tuple[str, float] | None = None


class GatewayStore:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prediction_ttl: int,
        cache_ttl: int,
        events_stream: str,
        events_maxlen: int,
        feedback_stream: str,
        feedback_maxlen: int,
        feedback_ttl: int,
    ) -> None:
        self._redis = client
        self._limiter = AsyncRateLimiter(client)
        self._feedback = client.register_script(_FEEDBACK_LUA)
        self._prediction_ttl = prediction_ttl
        self._cache_ttl = cache_ttl
        self._events_stream = events_stream
        self._events_maxlen = events_maxlen
        self._feedback_stream = feedback_stream
        self._feedback_maxlen = feedback_maxlen
        self._feedback_ttl = feedback_ttl

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    async def authenticate(self, token: str) -> ApiKey | None:
        return await authenticate_async(self._redis, token)

    async def acquire(self, identity: str, limit: RateLimit) -> Decision:
        return await self._limiter.acquire(identity, limit)

    async def acquire_and_read(
        self, identity: str, limit: RateLimit, cache_keys: Sequence[str]
    ) -> tuple[Decision, list[float | None]]:
        """The rate-limit decision and the cached scores of `cache_keys`, in one round
        trip (the scores are read even when the decision is no; they are then unused)."""
        pipe = self._redis.pipeline(transaction=False)
        self._limiter.queue(pipe, identity, limit)
        if cache_keys:
            pipe.mget(cache_keys)
        replies = await pipe.execute()
        scores = [decode_score(raw) for raw in replies[1]] if cache_keys else []
        return Decision.from_reply(replies[0]), scores

    async def write_predictions(self, batch: Sequence[PendingWrite]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for item in batch:
            # One JSON string, not a hash: one command instead of HSET + EXPIRE, and
            # far fewer arguments to encode per prediction.
            pipe.set(
                prediction_key(item.prediction_id),
                orjson.dumps(item.record),
                ex=self._prediction_ttl,
            )
            if item.event is not None:
                pipe.xadd(
                    self._events_stream,
                    item.event,  # type: ignore[arg-type]
                    maxlen=self._events_maxlen,
                    approximate=True,
                )
            if item.cache_entry is not None:
                cache_key, score = item.cache_entry
                pipe.set(cache_key, encode_score(score), ex=self._cache_ttl)
        await pipe.execute()

    async def record_feedback(
        self, prediction_id: str, label: str, at: datetime
    ) -> tuple[str, str]:
        """(outcome, label on record): recorded, duplicate, conflict or unknown."""
        keys = [prediction_key(prediction_id), feedback_key(prediction_id), self._feedback_stream]
        outcome, existing = await self._feedback(
            keys=keys,
            args=[label, self._feedback_ttl, self._feedback_maxlen, at.isoformat(), prediction_id],
        )
        return _str(outcome), _str(existing)

    async def policies(self) -> dict[str, TrafficPolicy]:
        """Runtime traffic policies per model (entries that do not parse are skipped)."""
        found: dict[str, TrafficPolicy] = {}
        for model, raw in (await self._redis.hgetall(POLICIES_KEY)).items():
            try:
                found[_str(model)] = TrafficPolicy.model_validate_json(raw)
            except ValidationError:
                log.warning("ignoring an invalid traffic policy", model=_str(model))
        return found

    async def save_policy(self, model: str, policy: TrafficPolicy) -> None:
        await self._redis.hset(POLICIES_KEY, model, policy.model_dump_json())

    async def delete_policy(self, model: str) -> None:
        await self._redis.hdel(POLICIES_KEY, model)


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- background tasks ---------------------------------------------------------------


def raise_if_cancelled() -> None:
    """redis-py can swallow a cancellation that lands while it reads a reply, and the
    loop would then run on forever: background loops check after each Redis call."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ModelEventsFollower:
    """Feeds the registry's model events into the alias table, forever.

    On (re)connect it replays the whole (trimmed) stream into a fresh table, then
    follows new entries with a blocking XREAD; the table is marked disconnected (no
    cache reads) whenever the stream cannot be read.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        stream: str,
        table: AliasTable,
        on_event: Callable[[AliasEvent], None],
        *,
        block_seconds: float = 1.0,
        retry_max_delay: float = 2.0,
    ) -> None:
        self._redis = client
        self._stream = stream
        self._table = table
        self._on_event = on_event
        self._block_ms = max(1, int(block_seconds * 1000))
        self._retry_max_delay = retry_max_delay

    async def run(self) -> None:
        delay = 0.05
        while True:
            try:
                cursor = await self._replay()
                delay = 0.05
                while True:
                    reply: Any = await self._redis.xread(
                        {self._stream: cursor}, count=500, block=self._block_ms
                    )
                    raise_if_cancelled()
                    for _, entries in reply or []:
                        cursor = self._apply(entries, cursor)
            except asyncio.CancelledError:
                self._table.connected = False
                raise
            except Exception as error:
                if self._table.connected:
                    log.warning("model event stream lost; cache reads paused", error=repr(error))
                self._table.connected = False
                await asyncio.sleep(delay)
                delay = min(self._retry_max_delay, delay * 2)

    async def _replay(self) -> str:
        self._table.reset()
        cursor, start = "0-0", "-"
        while True:
            entries: Any = await self._redis.xrange(self._stream, min=start, count=1000)
            if not entries:
                break
            cursor = self._apply(entries, cursor)
            start = f"({cursor}"
        self._table.connected = True
        return cursor

    def _apply(self, entries: Sequence[tuple[Any, Mapping[Any, Any]]], cursor: str) -> str:
        for raw_id, fields in entries:
            cursor = _str(raw_id)
            event = parse_model_event(fields)
            if event is not None:
                self._table.apply(event)
                self._on_event(event)
        return cursor


class EventWriter:
    """Writes prediction records, sampled events and new cache entries to Redis off the
    request path.

    Accepted predictions wait in a bounded in-memory queue and are written in pipelined
    batches; a failed batch is retried (with backoff) until Redis takes it, so nothing
    accepted is lost while the process lives. A full queue (Redis down for long) drops
    new predictions, counted and logged; shutdown flushes first. Only a crash loses the
    queue (at most `queue_size` predictions).
    """

    def __init__(
        self,
        store: GatewayStore,
        *,
        queue_size: int,
        batch_size: int,
        linger: float = 0.0,
        retry_max_delay: float = 1.0,
    ) -> None:
        self._store = store
        self._queue: asyncio.Queue[PendingWrite] = asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._linger = linger
        self._retry_max_delay = retry_max_delay
        self._task: asyncio.Task[None] | None = None
        self._dropping = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="prediction-writer")

    def submit(self, item: PendingWrite) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            metrics.EVENTS.labels("dropped").inc()
            if not self._dropping:
                log.error("prediction queue full: dropping predictions (is Redis down?)")
            self._dropping = True
            return
        self._dropping = False
        metrics.EVENT_QUEUE.inc()

    async def flush(self, within: float) -> bool:
        """Wait until every accepted prediction is written; False if that takes longer
        than `within` seconds."""
        try:
            await asyncio.wait_for(self._queue.join(), within)
        except TimeoutError:
            return False
        return True

    async def close(self, within: float) -> None:
        flushed = await self.flush(within)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if not flushed:
            lost = self._queue.qsize()
            metrics.EVENTS.labels("dropped").inc(lost)
            log.error("predictions not written at shutdown", count=lost)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._linger and self._queue.qsize() < self._batch_size - 1:
                await asyncio.sleep(self._linger)
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write(batch)
            raise_if_cancelled()
            for _ in batch:
                self._queue.task_done()
            metrics.EVENT_QUEUE.dec(len(batch))

    async def _write(self, batch: list[PendingWrite]) -> None:
        delay = 0.05
        while True:
            try:
                await self._store.write_predictions(batch)
            except (redis.exceptions.RedisError, OSError) as error:
                log.warning("writing predictions failed; retrying", error=repr(error))
                await asyncio.sleep(delay)
                delay = min(self._retry_max_delay, delay * 2)
                continue
            sampled = sum(item.event is not None for item in batch)
            metrics.EVENTS.labels("written").inc(sampled)
            if sampled < len(batch):
                metrics.EVENTS.labels("sampled_out").inc(len(batch) - sampled)
            return
