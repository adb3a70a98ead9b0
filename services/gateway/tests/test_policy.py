from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from kloop_gateway.policy import (
    CANARY,
    PRODUCTION,
    TrafficPolicy,
    choose_alias,
    route_point,
    should_shadow,
)


def test_no_canary_weight_means_production() -> None:
    policy = TrafficPolicy()
    assert {choose_alias(policy, model="m", route_key=None, roll=r) for r in (0, 0.5, 0.99)} == {
        PRODUCTION
    }


@pytest.mark.parametrize("percent", [1.0, 10.0, 37.5, 90.0])
def test_canary_share_matches_the_weight(percent: float) -> None:
    policy = TrafficPolicy(canary_percent=percent)
    rng = random.Random(7)
    n = 100_000
    canary = sum(
        choose_alias(policy, model="m", route_key=None, roll=rng.random()) == CANARY
        for _ in range(n)
    )
    p = percent / 100
    sd = (n * p * (1 - p)) ** 0.5
    assert abs(canary - n * p) < 5 * sd


def test_unavailable_canary_is_never_chosen() -> None:
    policy = TrafficPolicy(canary_percent=100)
    assert choose_alias(policy, model="m", route_key=None, roll=0.0) == CANARY
    assert (
        choose_alias(policy, model="m", route_key=None, roll=0.0, canary_available=False)
        == PRODUCTION
    )


def test_sticky_keys_are_stable_and_spread() -> None:
    policy = TrafficPolicy(canary_percent=25, sticky=True)
    chosen = [
        choose_alias(policy, model="m", route_key=f"user-{i}", roll=random.random())
        for i in range(4000)
    ]
    again = [
        choose_alias(policy, model="m", route_key=f"user-{i}", roll=random.random())
        for i in range(4000)
    ]
    assert chosen == again
    assert 800 <= chosen.count(CANARY) <= 1200  # 25 % of 4000, sd ~27
    # The point depends on the model too: one user is not canary for every model.
    assert route_point("a", "user-1") != route_point("b", "user-1")
    assert 0 <= route_point("m", "k") < 1


def test_keys_are_ignored_unless_sticky() -> None:
    policy = TrafficPolicy(canary_percent=50)
    assert {choose_alias(policy, model="m", route_key="k", roll=r) for r in (0.1, 0.9)} == {
        CANARY,
        PRODUCTION,
    }


def test_shadow_share() -> None:
    assert not should_shadow(TrafficPolicy(), 0.0)
    assert should_shadow(TrafficPolicy(shadow_percent=100), 0.999)
    assert should_shadow(TrafficPolicy(shadow_percent=10), 0.05)
    assert not should_shadow(TrafficPolicy(shadow_percent=10), 0.15)


@pytest.mark.parametrize("bad", [{"canary_percent": 100.5}, {"shadow_percent": -1}, {"x": 1}])
def test_policy_bounds(bad: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        TrafficPolicy.model_validate(bad)
