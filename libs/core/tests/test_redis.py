from __future__ import annotations

import socket
import threading
import time

from pydantic import SecretStr

from kloop_core.redis import create_redis, redis_ping


def test_round_trip_with_a_secret_url(redis_url: str) -> None:
    client = create_redis(SecretStr(redis_url), decode_responses=True)
    try:
        client.set("kloop:test:key", "value", ex=30)
        assert client.get("kloop:test:key") == "value"
        assert redis_ping(client)
    finally:
        client.close()


def test_client_is_configured_to_fail_fast_and_retry(redis_url: str) -> None:
    client = create_redis(redis_url, socket_timeout=0.5)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.5 and kwargs["socket_connect_timeout"] == 0.5
    assert kwargs["health_check_interval"] == 30
    assert client.get_retry() is not None and client.get_retry().get_retries() == 3
    client.close()


def test_a_dropped_connection_is_retried_transparently(redis_url: str) -> None:
    client = create_redis(redis_url)
    admin = create_redis(redis_url)
    try:
        client.client_setname("victim")
        assert client.ping()
        killed = admin.client_kill_filter(skipme=True, _type="normal")
        assert killed >= 1
        client.set("kloop:test:after-kill", b"1", ex=30)  # reconnects on its own
        assert client.get("kloop:test:after-kill") == b"1"
    finally:
        client.close()
        admin.close()


def test_ping_never_raises_and_fails_fast_when_redis_is_down(unused_port: int) -> None:
    client = create_redis(f"redis://127.0.0.1:{unused_port}/0", socket_timeout=0.5)
    started = time.monotonic()
    assert redis_ping(client) is False
    assert time.monotonic() - started < 3


def test_ping_is_false_when_the_peer_is_not_redis() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def answer_garbage() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        threading.Thread(target=answer_garbage, daemon=True).start()
        port = listener.getsockname()[1]
        client = create_redis(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
        assert redis_ping(client) is False
