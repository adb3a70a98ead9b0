"""/v1/models/{name}/traffic: the runtime traffic policy, admin only."""

from __future__ import annotations

import httpx
import pytest

from ...conftest import GatewayThread, wait_until


def test_default_policy_comes_from_settings(client: httpx.Client) -> None:
    body = client.get("/v1/models/tm-default/traffic").json()
    assert body == {
        "model": "tm-default",
        "canary_percent": 0.0,
        "shadow_percent": 0.0,
        "sticky": False,
        "source": "settings",
    }


def test_put_then_delete(client: httpx.Client) -> None:
    policy = {"canary_percent": 12.5, "shadow_percent": 5, "sticky": True}
    put = client.put("/v1/models/tm-put/traffic", json=policy)
    assert put.status_code == 200
    assert put.json() == {**policy, "model": "tm-put", "source": "runtime"}
    assert client.get("/v1/models/tm-put/traffic").json()["source"] == "runtime"
    deleted = client.delete("/v1/models/tm-put/traffic").json()
    assert deleted["source"] == "settings" and deleted["canary_percent"] == 0


def test_other_replicas_pick_the_policy_up_from_redis(
    client: httpx.Client, running_gateway: GatewayThread
) -> None:
    async def save() -> None:
        from kloop_gateway.policy import TrafficPolicy

        await running_gateway.gateway._store.save_policy(
            "tm-replica", TrafficPolicy(canary_percent=42)
        )

    running_gateway.call(save)  # as another replica's PUT would
    try:
        wait_until(
            lambda: client.get("/v1/models/tm-replica/traffic").json()["canary_percent"] == 42,
            timeout=5,
        )
    finally:
        client.delete("/v1/models/tm-replica/traffic")


@pytest.mark.parametrize(
    "policy",
    [{"canary_percent": 101}, {"canary_percent": -1}, {"shadow_percent": "x"}, {"weight": 5}],
)
def test_invalid_policies_are_422(client: httpx.Client, policy: dict[str, object]) -> None:
    assert client.put("/v1/models/tm-bad/traffic", json=policy).status_code == 422


def test_admin_scope_is_required(running_gateway: GatewayThread, predict_token: str) -> None:
    headers = {"Authorization": f"Bearer {predict_token}"}
    url = running_gateway.url + "/v1/models/sentiment/traffic"
    assert httpx.get(url, headers=headers).status_code == 403
    assert httpx.put(url, json={"canary_percent": 100}, headers=headers).status_code == 403
    assert httpx.get(url).status_code == 401
