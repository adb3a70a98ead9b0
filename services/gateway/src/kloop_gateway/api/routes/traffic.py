"""GET/PUT/DELETE /v1/models/{name}/traffic: the model's traffic policy (admin scope)."""

from __future__ import annotations

from fastapi import APIRouter

from kloop_gateway.api.deps import AdminCaller, GatewayDep, ModelName
from kloop_gateway.api.schemas import TrafficPolicyOut, error_responses
from kloop_gateway.policy import TrafficPolicy
from kloop_gateway.service import Gateway

router = APIRouter(prefix="/v1/models", tags=["traffic"])

_ERRORS = error_responses(401, 403, 413, 422, 429, 503)


def _out(gateway: Gateway, name: str) -> TrafficPolicyOut:
    return TrafficPolicyOut(
        model=name,
        source="runtime" if gateway.has_runtime_policy(name) else "settings",
        **gateway.policy(name).model_dump(),
    )


@router.get("/{name}/traffic", responses=_ERRORS)
async def get_traffic(name: ModelName, _: AdminCaller, gateway: GatewayDep) -> TrafficPolicyOut:
    """The policy in force for the model."""
    return _out(gateway, name)


@router.put("/{name}/traffic", responses=_ERRORS)
async def put_traffic(
    name: ModelName, body: TrafficPolicy, _: AdminCaller, gateway: GatewayDep
) -> TrafficPolicyOut:
    """Set canary weight, shadow share and stickiness; every gateway replica follows
    within policy_refresh_seconds."""
    await gateway.set_policy(name, body)
    return _out(gateway, name)


@router.delete("/{name}/traffic", responses=_ERRORS)
async def delete_traffic(name: ModelName, _: AdminCaller, gateway: GatewayDep) -> TrafficPolicyOut:
    """Back to the gateway's default policy (its settings)."""
    await gateway.reset_policy(name)
    return _out(gateway, name)
