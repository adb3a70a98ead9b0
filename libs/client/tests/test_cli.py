"""The README's path, for real: `kloop up`, `kloop demo`, the other commands, `kloop down`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kloop_client.local import free_port, pid_alive, port_open, recorded_processes

pytestmark = pytest.mark.slow

KLOOP = [sys.executable, "-m", "kloop_client.cli"]


def kloop(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KLOOP, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        # Wide enough that rich does not wrap the lines the assertions read.
        check=False,
    )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    home = tmp_path_factory.mktemp("kloop-home")
    ports = {
        name: str(free_port())
        for name in (
            "REDIS_PORT",
            "MLFLOW_PORT",
            "REGISTRY_GRPC_PORT",
            "REGISTRY_HTTP_PORT",
            "TRAINING_GRPC_PORT",
            "TRAINING_HTTP_PORT",
        )
    }
    env = {
        **os.environ,
        "KLOOP_LOCAL_HOME": str(home),
        "COLUMNS": "200",
        **{f"KLOOP_LOCAL_{k}": v for k, v in ports.items()},
    }
    up = kloop(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield env
    finally:
        kloop(env, "down")


def test_up_is_ready_and_idempotent(platform: dict[str, str]) -> None:
    status = kloop(platform, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    for name in ("redis", "mlflow", "registry", "training"):
        assert re.search(rf"{name}\s.*ready", status.stdout), status.stdout
    again = kloop(platform, "up")
    assert again.returncode == 0 and "already up" in again.stdout


def test_demo_runs_the_loop_end_to_end(platform: dict[str, str]) -> None:
    demo = kloop(platform, "demo", "--model", "demo-sentiment")
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr
    # v1 approved as the first production version, the worse challenger rejected and the
    # better one approved, each with the numbers behind the decision.
    decisions = re.findall(r"gate → production: (APPROVED|REJECTED)", out)
    assert decisions == ["APPROVED", "REJECTED", "APPROVED"], out
    assert re.search(r"log_loss on the same holdout \(\d+ rows", out), out
    assert re.search(r"rollback: production v3 → v1", out), out
    assert re.search(r"roll forward: production v1 → v3", out), out
    assert "audit trail" in out

    history = kloop(platform, "history", "demo-sentiment")
    assert history.returncode == 0
    for action in ("promotion_approved", "promotion_rejected", "rollback"):
        assert action in history.stdout, history.stdout

    resolved = kloop(platform, "models", "resolve", "demo-sentiment", "--alias", "production")
    assert resolved.returncode == 0 and "→ v3" in resolved.stdout, resolved.stdout


def test_errors_are_clear_and_nonzero(platform: dict[str, str]) -> None:
    missing = kloop(platform, "promote", "demo-sentiment", "999")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr, missing.stderr
    bad = kloop(platform, "train", "--dataset", "/nonexistent/data.csv")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert re.search(r"INVALID_ARGUMENT|FAILED_PRECONDITION|NOT_FOUND", bad.stderr), bad.stderr


def test_down_leaves_nothing_running(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KLOOP_LOCAL_HOME": str(tmp_path),
        "KLOOP_LOCAL_REDIS_PORT": str(free_port()),
        "KLOOP_LOCAL_MLFLOW_PORT": str(free_port()),
        "KLOOP_LOCAL_REGISTRY_GRPC_PORT": str(free_port()),
        "KLOOP_LOCAL_REGISTRY_HTTP_PORT": str(free_port()),
        "KLOOP_LOCAL_TRAINING_GRPC_PORT": str(free_port()),
        "KLOOP_LOCAL_TRAINING_HTTP_PORT": str(free_port()),
    }
    assert kloop(env, "up").returncode == 0
    pids = [p.pid for p in recorded_processes(tmp_path)]
    assert len(pids) == 4 and all(pid_alive(p) for p in pids)

    down = kloop(env, "down")

    assert down.returncode == 0
    assert not any(pid_alive(p) for p in pids)
    assert not port_open(int(env["KLOOP_LOCAL_REDIS_PORT"]))
    assert kloop(env, "status").returncode == 1
