"""`kloop keys` (kloop_client.keys_cli) against Redis, and its keys against the gateway."""

from __future__ import annotations

import httpx
import pytest
import typer
from typer.testing import CliRunner

from kloop_client.keys_cli import keys_app

from .conftest import GatewayThread, wait_until

kloop = typer.Typer()
kloop.add_typer(keys_app, name="keys")
runner = CliRunner()


def keys(*args: str, redis_url: str) -> tuple[int, str]:
    result = runner.invoke(
        kloop, ["keys", *args], env={"KLOOP_REDIS_URL": redis_url, "COLUMNS": "200"}
    )
    return result.exit_code, result.output


def test_create_use_list_revoke(running_gateway: GatewayThread, gateway_redis_url: str) -> None:
    code, token = keys(
        "create", "--scope", "predict", "--name", "cli-test", "-q", redis_url=gateway_redis_url
    )
    assert code == 0
    token = token.strip()
    headers = {"Authorization": f"Bearer {token}"}
    url = running_gateway.url + "/v1/models/sentiment/predict"
    assert httpx.post(url, json={"text": "nice"}, headers=headers).status_code == 200

    code, listing = keys("list", redis_url=gateway_redis_url)
    assert code == 0
    (row,) = [line for line in listing.splitlines() if "cli-test" in line]
    key_id = token[len("kloop_") : len("kloop_") + 12]
    assert key_id in row and "predict" in row and "active" in row
    assert token[20:] not in listing  # secrets are never listed

    code, out = keys("revoke", key_id, redis_url=gateway_redis_url)
    assert code == 0 and f"revoked {key_id}" in out
    # Effective within the gateway's auth_cache_seconds.
    wait_until(lambda: httpx.post(url, json={"text": "nice"}, headers=headers).status_code == 401)
    assert "revoked" in keys("list", redis_url=gateway_redis_url)[1]


def test_create_prints_the_key_once_with_a_warning(gateway_redis_url: str) -> None:
    code, out = keys(
        "create", "-s", "admin", "-s", "feedback", "--rate", "5", redis_url=gateway_redis_url
    )
    assert code == 0
    assert "kloop_" in out and "cannot be shown again" in out and "admin, feedback" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("create", "--scope", "root"), 2, "unknown scope"),
        (("create", "--scope", "predict", "--burst", "0"), 2, "burst"),
        (("revoke", "ffffffffffff"), 1, "no key"),
    ],
)
def test_errors(gateway_redis_url: str, args: tuple[str, ...], code: int, message: str) -> None:
    exit_code, out = keys(*args, redis_url=gateway_redis_url)
    assert exit_code == code and message in out


def test_unreachable_redis_is_a_clear_error() -> None:
    code, out = keys("list", redis_url="redis://127.0.0.1:1/0")
    assert code == 1 and "cannot reach Redis" in out
