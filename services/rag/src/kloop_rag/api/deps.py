"""Dependencies of the HTTP routes: the service and the admitted caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from kloop_rag.auth import Principal
from kloop_rag.service import Rag

# `async def` although they do not await: plain `def` dependencies run in a thread pool.


async def get_rag(request: Request) -> Rag:
    rag: Rag = request.app.state.rag
    return rag


RagDep = Annotated[Rag, Depends(get_rag)]

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


async def ask_caller(
    rag: RagDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    token = bearer.credentials if bearer is not None else api_key
    return await rag.admit(token)


AskCaller = Annotated[Principal, Depends(ask_caller)]
