"""`kloop keys`: create, list and revoke the gateway's API keys.

Talks to Redis directly (kloop_core.api_keys), like an admin tool: KLOOP_REDIS_URL, else
`--redis-url`, else the local platform's Redis (`kloop up`). Mount with
`app.add_typer(keys_app, name="keys")`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import redis
import typer
from rich.console import Console
from rich.table import Table

from kloop_client.platform import Endpoints, LocalPlatformSettings
from kloop_core.api_keys import SCOPES, ApiKey, ApiKeyStore
from kloop_core.redis import create_redis, redis_ping

keys_app = typer.Typer(
    help="API keys of the gateway (stored hashed in Redis).", no_args_is_help=True
)
console = Console()
err = Console(stderr=True)

RedisUrlOption = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="KLOOP_REDIS_URL",
        help="Redis holding the keys (default: the local platform's).",
        show_default=False,
    ),
]


def _redis_url(explicit: str | None) -> str:
    if explicit:
        return explicit
    settings = LocalPlatformSettings()
    endpoints = Endpoints.load(settings.home.resolve()) or Endpoints.from_settings(settings)
    return endpoints.redis_url


@contextmanager
def _store(redis_url: str | None) -> Iterator[ApiKeyStore]:
    url = _redis_url(redis_url)
    client = create_redis(url, socket_timeout=2.0)
    try:
        if not redis_ping(client):
            err.print(f"[red]cannot reach Redis[/] at {url.split('@')[-1]}")
            err.print("is the platform up? try: kloop up (or set KLOOP_REDIS_URL)")
            raise typer.Exit(1)
        yield ApiKeyStore(client)
    except redis.RedisError as e:
        err.print(f"[red]Redis error[/]: {e}")
        raise typer.Exit(1) from None
    finally:
        client.close()


def _status(key: ApiKey) -> str:
    return "active" if key.active else f"revoked {key.revoked_at:%Y-%m-%d %H:%M}"


@keys_app.command("create")
def create(
    scope: Annotated[
        list[str],
        typer.Option("--scope", "-s", help=f"Repeat for several: {', '.join(SCOPES)}."),
    ],
    name: Annotated[str, typer.Option(help="What the key is for.")] = "",
    rate: Annotated[
        float | None, typer.Option(help="Requests per second (default: the gateway's).")
    ] = None,
    burst: Annotated[int | None, typer.Option(help="Burst size (default: the gateway's).")] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the key (for scripts).")
    ] = False,
    redis_url: RedisUrlOption = None,
) -> None:
    """Create a key and print it: it is shown only this once."""
    with _store(redis_url) as store:
        try:
            key, token = store.create(scope, name, rate_per_second=rate, burst=burst)
        except ValueError as e:
            err.print(f"[red]error[/]: {e}")
            raise typer.Exit(2) from None
    if quiet:
        print(token)
        return
    console.print(f"created key [bold]{key.id}[/] ({', '.join(sorted(key.scopes))})")
    console.print(token, highlight=False, soft_wrap=True)
    console.print("[dim]store it now: only its hash is kept, it cannot be shown again[/]")


@keys_app.command("list")
def list_keys(redis_url: RedisUrlOption = None) -> None:
    """Every key (never the secrets): id, name, scopes, limits, status."""
    with _store(redis_url) as store:
        keys = store.list()
    table = Table("id", "name", "scopes", "rate/s", "burst", "created", "status")
    for key in keys:
        table.add_row(
            key.id,
            key.name,
            ",".join(sorted(key.scopes)),
            f"{key.rate_per_second:g}" if key.rate_per_second else "default",
            str(key.burst) if key.burst else "default",
            f"{key.created_at:%Y-%m-%d %H:%M}",
            _status(key),
        )
    console.print(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see kloop keys list).")],
    redis_url: RedisUrlOption = None,
) -> None:
    """Revoke a key: the gateway refuses it from the next request on."""
    with _store(redis_url) as store:
        key = store.revoke(key_id)
    if key is None:
        err.print(f"[red]no key {key_id}[/]")
        raise typer.Exit(1)
    console.print(f"revoked {key.id} ({key.name or 'unnamed'})")
