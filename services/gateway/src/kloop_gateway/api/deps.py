"""Dependencies of the HTTP routes: the gateway, the authenticated caller, route key."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from kloop_gateway.service import MODEL_NAME_PATTERN, Gateway, Principal

# Dependencies are `async def` although they do not await: FastAPI runs plain `def`
# dependencies in a thread pool, two thread hops per request for nothing.


async def get_gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


def _caller(scope: str, *, rate_limited: bool) -> Callable[..., Awaitable[Principal]]:
    async def caller(
        gateway: GatewayDep,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
        api_key: Annotated[str | None, Depends(_api_key)],
    ) -> Principal:
        token = bearer.credentials if bearer is not None else api_key
        if rate_limited:
            return await gateway.admit(token, scope)
        return await gateway.authenticate(token, scope)

    return caller


PredictCaller = Annotated[Principal, Depends(_caller("predict", rate_limited=True))]
# For the predict routes: Gateway.predict checks the rate limit itself, in the round trip
# of its cache lookup.
PredictAuthenticated = Annotated[Principal, Depends(_caller("predict", rate_limited=False))]
FeedbackCaller = Annotated[Principal, Depends(_caller("feedback", rate_limited=True))]
AdminCaller = Annotated[Principal, Depends(_caller("admin", rate_limited=True))]


async def get_route_key(request: Request, gateway: GatewayDep) -> str | None:
    """The sticky-routing key (header named by the route_key_header setting)."""
    return request.headers.get(gateway.settings.route_key_header)


RouteKey = Annotated[str | None, Depends(get_route_key)]

ModelName = Annotated[
    str, Path(pattern=MODEL_NAME_PATTERN, description="Registered model name, e.g. sentiment.")
]
