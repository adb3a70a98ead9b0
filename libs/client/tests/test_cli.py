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
ROOT = Path(__file__).resolve().parents[3]


def kloop(
    env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KLOOP, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        # The repository, as for `make demo`: build/embedder and the READMEs are there.
        cwd=ROOT,
        check=False,
    )


GRPC_SERVICES = (
    "registry",
    "training",
    "inference",
    "gateway",
    "drift-monitor",
    "vectorstore",
    "rag",
)
SERVICES = (*GRPC_SERVICES, "worker", "worker-beat")
PORTS = (
    "REDIS_PORT",
    "MLFLOW_PORT",
    "WORKER_HTTP_PORT",
    *(
        f"{s.upper().replace('-', '_')}_{kind}_PORT"
        for s in GRPC_SERVICES
        for kind in ("GRPC", "HTTP")
    ),
)


def platform_env(home: Path) -> dict[str, str]:
    """A platform of its own: a state directory and free ports for every process."""
    return {
        **os.environ,
        "KLOOP_LOCAL_HOME": str(home),
        "COLUMNS": "200",
        **{f"KLOOP_LOCAL_{name}": str(free_port()) for name in PORTS},
    }


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    # The embedder, as `make demo` builds it (a no-op when built): `kloop up` then
    # serves it and the demo's RAG step runs.
    built = subprocess.run(
        ["make", "-s", "embedder"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stdout + built.stderr
    home = tmp_path_factory.mktemp("kloop-home")
    env = platform_env(home)
    up = kloop(env, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        yield env
    finally:
        kloop(env, "down")


def test_up_is_ready_and_idempotent(platform: dict[str, str]) -> None:
    status = kloop(platform, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    ready = ("redis", "mlflow", "registry", "training", "drift-monitor", "worker", "worker-beat")
    for name in (*ready, "vectorstore", "rag"):
        assert re.search(rf"{name}\s.*│ ready", status.stdout), status.stdout
    for name in ("inference", "gateway"):  # nothing to serve before the first promotion
        assert re.search(rf"{name}\s.*live, no production model yet", status.stdout)
    again = kloop(platform, "up")
    assert again.returncode == 0 and "already up" in again.stdout


def test_demo_runs_the_loop_end_to_end(platform: dict[str, str]) -> None:
    demo = kloop(platform, "demo")
    out = demo.stdout
    assert demo.returncode == 0, out + demo.stderr
    # v1 approved as the first production version, the worse challenger rejected, each
    # with the numbers behind the decision.
    decisions = re.findall(r"gate → production: (APPROVED|REJECTED)", out)
    assert decisions == ["APPROVED", "REJECTED"], out
    assert re.search(r"log_loss on the same holdout \(\d+ rows", out), out
    # Served through the gateway over HTTP and gRPC, with a cache hit on a repeat.
    assert re.search(r"HTTP  'an excellent product, it works perfectly': positive", out), out
    assert re.search(r"gRPC  'the service was friendly and quick': \w+ \([0-9.]+\) by v1", out)
    assert "the same text again: first cache miss, then cache hit" in out, out
    # Shifted traffic -> drift -> the monitor asks the worker -> retrain -> gate ->
    # canary -> promoted, with no failed request on the way.
    assert re.search(r"drift detected after \d+ shifted predictions: \d+ drifted windows", out)
    for event in ("data_prepared", "trained", "gate_approved", "canary_started", "promoted"):
        assert re.search(rf"\s{event}\s", out), out
    assert re.search(r"live traffic meanwhile: \d+ requests \(v1: \d+, v3: \d+\), 0 failed", out)
    assert "production v1 → v3" in out, out
    assert "drift of the last window: the old version vs the new one" in out, out
    assert re.search(r"rollback: production v3 → v1", out), out
    assert re.search(r"roll forward: production v1 → v3", out), out
    # The alias moved twice under live traffic and no request failed.
    assert re.search(r"\d+ requests, 0 failed; versions answering, in order: v3 → v1 → v3", out)
    # RAG on the same platform: the repository's READMEs ingested through the worker,
    # embedded by the served embedder, a question answered (extractively: no API key
    # here) with citations of retrieved chunks.
    assert re.search(r"ingested \d+ documents \(\d+ chunks", out), out
    assert re.search(r"A \((extractive|generative)\): .+? \[\d\]", out, re.DOTALL), out
    assert re.search(r"\[\d\] \S+README\.md \(chunk \d+, score", out), out
    assert "audit trail" in out and "retraining pipelines of sentiment" in out, out
    assert re.search(r"drift detected \d+ events after the shift began; loop wall time", out)

    check_predict_over_http_and_grpc_with_the_local_key(platform)

    asked = kloop(platform, "ask", "What does the drift monitor compute?")
    assert asked.returncode == 0, asked.stdout + asked.stderr
    assert "extractive" in asked.stdout and "README.md" in asked.stdout, asked.stdout
    unknown = kloop(platform, "ask", "anything?", "--collection", "nope")
    assert unknown.returncode == 1 and "404" in unknown.stderr, unknown.stderr

    again = kloop(platform, "demo")
    assert again.returncode == 1 and "ALREADY_EXISTS" in again.stderr, again.stderr

    history = kloop(platform, "history", "sentiment")
    assert history.returncode == 0
    for action in ("promotion_approved", "promotion_rejected", "rollback", "canary_passed"):
        assert action in history.stdout, history.stdout

    resolved = kloop(platform, "models", "resolve", "sentiment", "--alias", "production")
    assert resolved.returncode == 0 and "→ v3" in resolved.stdout, resolved.stdout


def check_predict_over_http_and_grpc_with_the_local_key(platform: dict[str, str]) -> None:
    http = kloop(platform, "predict", "an excellent product, it works perfectly")
    assert http.returncode == 0, http.stdout + http.stderr
    assert re.search(r"positive \(score 0\.\d+\) by sentiment v\d+ \[production\]", http.stdout)
    grpc_ = kloop(platform, "predict", "--grpc", "an excellent product, it works perfectly")
    assert grpc_.returncode == 0 and "by sentiment v" in grpc_.stdout, grpc_.stderr
    home = Path(platform["KLOOP_LOCAL_HOME"])
    assert (home / "api-key").stat().st_mode & 0o777 == 0o600

    no_key = kloop({**platform, "KLOOP_API_KEY": "kloop_000000000000_wrong"}, "predict", "hi")
    assert no_key.returncode == 1 and "401" in no_key.stderr, no_key.stderr

    created = kloop(platform, "keys", "create", "--scope", "feedback", "-q")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    wrong_scope = kloop({**platform, "KLOOP_API_KEY": token}, "predict", "hi")
    assert wrong_scope.returncode == 1 and "403" in wrong_scope.stderr, wrong_scope.stderr


def test_errors_are_clear_and_nonzero(platform: dict[str, str]) -> None:
    missing = kloop(platform, "promote", "sentiment", "999")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr, missing.stderr
    bad = kloop(platform, "train", "--dataset", "/nonexistent/data.csv")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert re.search(r"INVALID_ARGUMENT|FAILED_PRECONDITION|NOT_FOUND", bad.stderr), bad.stderr


def test_down_leaves_nothing_running(tmp_path: Path) -> None:
    env = platform_env(tmp_path)
    assert kloop(env, "up").returncode == 0
    pids = [p.pid for p in recorded_processes(tmp_path)]
    assert len(pids) == 2 + len(SERVICES) and all(pid_alive(p) for p in pids)

    down = kloop(env, "down")

    assert down.returncode == 0
    assert not any(pid_alive(p) for p in pids)
    assert not port_open(int(env["KLOOP_LOCAL_REDIS_PORT"]))
    assert kloop(env, "status").returncode == 1
