"""Traffic policy: which alias answers a request, and which requests are shadowed.

Pure functions over a `TrafficPolicy`; the random numbers come from the caller.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field

PRODUCTION = "production"
CANARY = "canary"
CHALLENGER = "challenger"


class TrafficPolicy(BaseModel):
    """Per model; the gateway's settings are the default, an admin can change it."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    canary_percent: float = Field(
        default=0.0, ge=0, le=100, description="Share of requests answered by the canary."
    )
    shadow_percent: float = Field(
        default=0.0,
        ge=0,
        le=100,
        description="Share of requests also sent to the challenger (compared, never returned).",
    )
    sticky: bool = Field(
        default=False,
        description="Requests with the same route key always get the same alias.",
    )


def route_point(model: str, route_key: str) -> float:
    """A stable point in [0, 1) for a route key: the same key, the same alias, in every
    gateway replica (a keyed hash, not Python's per-process `hash`)."""
    digest = hashlib.blake2b(f"{model}\0{route_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose_alias(
    policy: TrafficPolicy,
    *,
    model: str,
    route_key: str | None,
    roll: float,
    canary_available: bool = True,
) -> str:
    """`canary` for `canary_percent` of requests, else `production`. `roll` is a uniform
    random number in [0, 1), used when the request is not routed by its key."""
    if policy.canary_percent <= 0 or not canary_available:
        return PRODUCTION
    point = route_point(model, route_key) if policy.sticky and route_key else roll
    return CANARY if point * 100 < policy.canary_percent else PRODUCTION


def should_shadow(policy: TrafficPolicy, roll: float) -> bool:
    return roll * 100 < policy.shadow_percent
