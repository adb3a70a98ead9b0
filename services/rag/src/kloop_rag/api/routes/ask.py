"""POST /v1/ask: a grounded answer with citations, whole or as Server-Sent Events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse

from kloop_core.errors import KloopError, error_for_unexpected
from kloop_core.logging import get_logger, request_id_var
from kloop_rag.api.deps import AskCaller, RagDep
from kloop_rag.api.schemas import AskRequest, AskResponse, error_responses
from kloop_rag.service import Answer

log = get_logger(__name__)
router = APIRouter(prefix="/v1", tags=["ask"])

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _events(items: AsyncIterator[str | Answer]) -> AsyncIterator[bytes]:
    try:
        async for item in items:
            if isinstance(item, Answer):
                yield sse("done", item.to_dict())
            else:
                yield sse("delta", {"text": item})
    except Exception as exc:
        # Headers are sent: the failure travels as the stream's last event.
        error = exc if isinstance(exc, KloopError) else error_for_unexpected(exc, None)
        if not isinstance(exc, KloopError):
            log.error("stream failed", exc_info=exc)
        body = {"error": error.to_dict()}
        if error.retry_after is not None:
            body["error"]["retry_after"] = error.retry_after
        yield sse("error", body)


@router.post(
    "/ask",
    responses={
        **error_responses(401, 403, 404, 413, 422, 429, 503),
        200: {
            "description": "The answer; with `stream: true` a `text/event-stream` of "
            "`delta` events ({text}) and one `done` event (this body), or `error`.",
            "content": {"text/event-stream": {}},
        },
    },
    response_model=AskResponse,
)
async def ask(body: AskRequest, _: AskCaller, rag: RagDep) -> Response:
    """Retrieve `k` chunks of `collection`, answer from them only (Claude, or
    extractively without an API key) and cite the chunks the answer used."""
    if not body.stream:
        answer = await rag.ask(body.question, body.collection, body.k)
        return Response(orjson.dumps(answer.to_dict()), media_type="application/json")
    items = await rag.ask_stream(body.question, body.collection, body.k)
    request_id = request_id_var.get()
    headers = {**_SSE_HEADERS, **({"X-Request-ID": request_id} if request_id else {})}
    return StreamingResponse(_events(items), media_type="text/event-stream", headers=headers)
