"""The `kloop-training` process: starts from environment variables, trains, logs only
JSON lines, stops cleanly on SIGTERM, and refuses bad configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc

from kloop.training.v1 import training_pb2 as pb
from kloop.training.v1 import training_pb2_grpc
from kloop_client.local import free_port, http_ok


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def test_the_process_trains_and_stops_on_sigterm(
    redis_url: str, mlflow_uri: str, registry_addr: str, tmp_path: Path
) -> None:
    grpc_port, http_port = free_port(), free_port()
    env = _env(
        KLOOP_TRAINING_REDIS_URL=redis_url,
        KLOOP_TRAINING_MLFLOW_TRACKING_URI=mlflow_uri,
        KLOOP_TRAINING_REGISTRY_ADDR=registry_addr,
        KLOOP_TRAINING_REDIS_NAMESPACE=f"kloop:test-training:{uuid.uuid4().hex[:8]}",
        KLOOP_TRAINING_GRPC_PORT=str(grpc_port),
        KLOOP_TRAINING_HTTP_PORT=str(http_port),
    )
    log_path = tmp_path / "training.log"
    # A file, not a pipe: nothing reads a pipe while the test waits, and a full one blocks.
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kloop_training.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not http_ok(f"http://127.0.0.1:{http_port}/readyz"):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "not ready within 60 s"
            time.sleep(0.2)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = training_pb2_grpc.TrainingServiceStub(channel)
            request = pb.SubmitRunRequest(model_name=f"m-{uuid.uuid4().hex[:8]}")
            run = stub.SubmitRun(request, timeout=30)
            events = list(stub.WatchRun(pb.WatchRunRequest(run_id=run.run_id), timeout=120))
        assert events[-1].state == pb.RUN_STATE_SUCCEEDED, events[-1].message
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        output = log_path.read_text()
        lines = [json.loads(line) for line in output.splitlines() if line.strip()]
        assert any(line.get("event") == "run succeeded" for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_configuration_exits_with_status_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kloop_training.main"],
        env=_env(KLOOP_TRAINING_MAX_CONCURRENT_RUNS="0", KLOOP_TRAINING_EXECUTOR="k8s"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "KLOOP_TRAINING_MAX_CONCURRENT_RUNS" in result.stderr
    assert "KLOOP_TRAINING_EXECUTOR" in result.stderr
