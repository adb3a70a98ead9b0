"""`kloop-gateway` as a process: starts from the environment, stops on SIGTERM with 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from .conftest import InferenceThread, redis_db, wait_until


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serves_then_exits_zero_on_sigterm(redis_url: str, inference: InferenceThread) -> None:
    http_port = _port()
    env = {
        **os.environ,
        "KLOOP_GATEWAY_HTTP_PORT": str(http_port),
        "KLOOP_GATEWAY_GRPC_PORT": str(_port()),
        "KLOOP_GATEWAY_REDIS_URL": redis_db(redis_url, 7),
        "KLOOP_GATEWAY_INFERENCE_ADDR": inference.addr,
        "KLOOP_GATEWAY_AUTH_ENABLED": "false",
        "KLOOP_GATEWAY_LOG_LEVEL": "WARNING",
    }
    script = Path(sys.executable).parent / "kloop-gateway"
    proc = subprocess.Popen([str(script)], env=env)
    try:
        url = f"http://127.0.0.1:{http_port}"
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout=30)
        answer = httpx.post(f"{url}/v1/models/sentiment/predict", json={"text": "great"})
        assert answer.status_code == 200 and answer.json()["label"] == "positive"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_environment_exits_two(redis_url: str) -> None:
    script = Path(sys.executable).parent / "kloop-gateway"
    env = {**os.environ, "KLOOP_GATEWAY_CANARY_PERCENT": "150"}
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "KLOOP_GATEWAY_CANARY_PERCENT" in result.stderr
