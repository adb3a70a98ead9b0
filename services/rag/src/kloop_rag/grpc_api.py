"""kloop.rag.v1.RagService on kloop_core's gRPC server (interceptors: request id, RED
metrics, error mapping, health, reflection).

Handlers run on the server's thread pool; the service's clients live on the HTTP
server's event loop, so each call is handed to that loop (with the caller's trace
context and request id) and awaited within the caller's deadline. A stream is driven by
one task on the loop that hands its items to the handler's thread through a queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
from collections.abc import AsyncIterator, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from opentelemetry import context as otel_context

from kloop.rag.v1 import rag_pb2 as pb
from kloop.rag.v1 import rag_pb2_grpc as pb_grpc
from kloop_core.errors import DeadlineExceeded, KloopError, PayloadTooLarge
from kloop_core.grpc_server import GrpcApp
from kloop_core.logging import request_id_var
from kloop_rag.service import Answer, Rag

T = TypeVar("T")
SERVICE_NAME = "kloop.rag.v1.RagService"
_END = object()


def token_from_metadata(metadata: Sequence[tuple[str, Any]]) -> str | None:
    """The API key of `authorization: Bearer <key>`, else of `x-api-key`."""
    values = {key: value for key, value in metadata if isinstance(value, str)}
    scheme, _, credentials = values.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return values.get("x-api-key") or None


def to_pb(answer: Answer) -> pb.AskResponse:
    usage = answer.usage
    return pb.AskResponse(
        answer=answer.answer,
        citations=[
            pb.Citation(
                ref=c.ref,
                id=c.id,
                source=c.source,
                document_id=c.document_id,
                chunk=c.chunk,
                score=c.score,
                snippet=c.snippet,
            )
            for c in answer.citations
        ],
        mode=answer.mode,
        model=answer.model,
        usage=pb.Usage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cost_usd=usage.cost_usd,
        ),
        cached=answer.cached,
        retrieved=answer.retrieved,
    )


async def _in_context(ctx: otel_context.Context, request_id: str | None, work: Any) -> Any:
    token = otel_context.attach(ctx)
    rid_token = request_id_var.set(request_id)
    try:
        return await work
    finally:
        request_id_var.reset(rid_token)
        otel_context.detach(token)


class RagServicer(pb_grpc.RagServiceServicer):  # type: ignore[misc]
    def __init__(self, rag: Rag, loop: asyncio.AbstractEventLoop) -> None:
        self._rag = rag
        self._loop = loop
        self._max_bytes = rag.settings.max_body_bytes
        settings = rag.settings
        # The longest an answer can usefully take (a caller without a deadline reports
        # "remaining" as ~forever).
        self._max_timeout = (
            settings.vectorstore_timeout_seconds + settings.llm_deadline_seconds + 2.0
        )

    def _submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        wrapped = _in_context(otel_context.get_current(), request_id_var.get(), work)
        return asyncio.run_coroutine_threadsafe(wrapped, self._loop)

    def _timeout(self, context: grpc.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self._max_timeout if remaining is None else min(remaining, self._max_timeout)

    def _check_size(self, request: Any) -> None:
        size = request.ByteSize()
        if size > self._max_bytes:
            raise PayloadTooLarge(f"request is {size} bytes; the limit is {self._max_bytes}")

    def Ask(self, request: pb.AskRequest, context: grpc.ServicerContext) -> pb.AskResponse:
        self._check_size(request)
        token = token_from_metadata(context.invocation_metadata() or ())
        future = self._submit(self._ask(token, request))
        try:
            return to_pb(future.result(self._timeout(context)))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise DeadlineExceeded("the answer did not finish within the deadline") from None

    async def _ask(self, token: str | None, request: pb.AskRequest) -> Answer:
        await self._rag.admit(token)
        return await self._rag.ask(request.question, request.collection, request.k or None)

    def AskStream(
        self, request: pb.AskRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.AskStreamResponse]:
        self._check_size(request)
        token = token_from_metadata(context.invocation_metadata() or ())
        items: queue.Queue[Any] = queue.Queue(maxsize=256)
        future = self._submit(self._pump(token, request, items))
        context.add_callback(future.cancel)  # the caller went away: stop generating
        try:
            timeout = self._timeout(context)
            while True:
                try:
                    item = items.get(timeout=timeout)
                except queue.Empty:
                    raise DeadlineExceeded("the answer did not finish in time") from None
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, Answer):
                    yield pb.AskStreamResponse(final=to_pb(item))
                else:
                    yield pb.AskStreamResponse(delta=item)
        finally:
            future.cancel()

    async def _pump(
        self, token: str | None, request: pb.AskRequest, items: queue.Queue[Any]
    ) -> None:
        """Runs on the loop: the whole stream in one task, items to the handler thread."""

        async def put(item: Any) -> None:
            while True:
                try:
                    items.put_nowait(item)
                    return
                except queue.Full:  # a slow reader: wait, without blocking the loop
                    await asyncio.sleep(0.01)

        try:
            await self._rag.admit(token)
            stream: AsyncIterator[str | Answer] = await self._rag.ask_stream(
                request.question, request.collection, request.k or None
            )
            try:
                async for item in stream:
                    await put(item)
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]
            await put(_END)
        except KloopError as error:
            await put(error)
        except Exception as error:
            await put(error)


def grpc_app(rag: Rag, loop: asyncio.AbstractEventLoop) -> GrpcApp:
    servicer = RagServicer(rag, loop)

    def ready() -> bool:  # polled from a thread, about once a second
        return asyncio.run_coroutine_threadsafe(rag.ready(), loop).result(timeout=3.0)

    return GrpcApp(
        settings=rag.settings,
        service_name="rag",
        register=lambda server: pb_grpc.add_RagServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        readiness=ready,
        ops_http=False,  # the FastAPI app serves /livez /readyz /metrics
    )
