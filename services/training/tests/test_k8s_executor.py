"""KubernetesJobExecutor against kmock's in-memory Kubernetes API emulator: the shape of
the Jobs it creates (spec, labels, env, owner, TTL, security context), idempotent
re-submission, and what it copies from its own pod."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

kmock = pytest.importorskip("kmock")
k8s = pytest.importorskip("kubernetes")

from kloop_training.k8s_executor import (  # noqa: E402
    RUN_ID_LABEL,
    JobExecutorSettings,
    KubernetesJobExecutor,
    build_job,
    job_name,
)

NS = "kloop"
JOBS = kmock.resource("batch", "v1", "jobs")
PODS = kmock.resource("", "v1", "pods")
REPLICASETS = kmock.resource("apps", "v1", "replicasets")
POD_ENV = [
    {"name": "KLOOP_TRAINING_GRPC_HOST", "value": "0.0.0.0"},  # noqa: S104
    {"name": "KLOOP_TRAINING_GRPC_PORT", "value": "50152"},
    {"name": "KLOOP_TRAINING_K8S_POD_NAME", "value": "kloop-training-abc"},
    {
        "name": "KLOOP_REDIS_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "kloop-redis-auth", "key": "redis-password"}},
    },
    {
        "name": "KLOOP_TRAINING_REDIS_URL",
        "value": "redis://:$(KLOOP_REDIS_PASSWORD)@kloop-redis:6379/0",
    },
    {"name": "KLOOP_TRAINING_MLFLOW_TRACKING_URI", "value": "http://kloop-mlflow:5000"},
]


class Emulator:
    """kmock's asyncio emulator on a loopback port, served from a background thread so
    the synchronous kubernetes client can call it."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.emulator: Any = None
        self.url = ""

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Emulator:
        self._thread.start()
        assert self._ready.wait(10), "kmock did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def api_client(self) -> Any:
        cfg = k8s.client.Configuration()
        cfg.host = self.url
        return k8s.client.ApiClient(cfg)

    def job(self, name: str) -> dict[str, Any]:
        return dict(self.emulator.objects[JOBS, NS, name])

    def jobs(self) -> list[str]:
        return [key[2] for key in self.emulator.objects if key[0] == JOBS]


@pytest.fixture
def cluster() -> Iterator[Emulator]:
    with Emulator() as emu:
        emu.emulator.objects[PODS, NS, "kloop-training-abc"] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "kloop-training-abc",
                "namespace": NS,
                "uid": "pod-uid",
                "labels": {
                    "app.kubernetes.io/name": "kloop",
                    "app.kubernetes.io/instance": "kloop",
                    "app.kubernetes.io/component": "training",
                    "pod-template-hash": "abc",
                },
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "ReplicaSet",
                        "name": "kloop-training-7f9",
                        "uid": "rs-uid",
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "containers": [
                    {"name": "training", "image": "localhost/kloop/training:dev", "env": POD_ENV}
                ]
            },
        }
        emu.emulator.objects[REPLICASETS, NS, "kloop-training-7f9"] = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "kloop-training-7f9",
                "namespace": NS,
                "uid": "rs-uid",
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": "kloop-training",
                        "uid": "deploy-uid",
                        "controller": True,
                    }
                ],
            },
            "spec": {"selector": {"matchLabels": {"a": "b"}}},
        }
        yield emu


def settings(**overrides: Any) -> JobExecutorSettings:
    base: dict[str, Any] = {
        "namespace": NS,
        "pod_name": "kloop-training-abc",
        "service_account": "kloop-training-job",
        "ttl_seconds_after_finished": 600,
        "backoff_limit": 2,
        "active_deadline_seconds": 1800,
        "api_attempts": 2,
    }
    return JobExecutorSettings(**{**base, **overrides})


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_submit_creates_one_job_per_run_with_the_pods_image_env_and_owner(
    cluster: Emulator,
) -> None:
    executor = KubernetesJobExecutor(settings(), cluster.api_client())
    executor.submit("3a70f10d90b64c6280a3fe5c1eea4317")
    wait_for(lambda: cluster.jobs() == ["kloop-train-3a70f10d90b64c6280a3fe5c1eea4317"])
    executor.shutdown()

    job = cluster.job("kloop-train-3a70f10d90b64c6280a3fe5c1eea4317")
    meta, spec = job["metadata"], job["spec"]
    assert meta["namespace"] == NS
    assert meta["labels"] == {
        "app.kubernetes.io/name": "kloop",
        "app.kubernetes.io/instance": "kloop",
        "app.kubernetes.io/component": "training-run",
        "app.kubernetes.io/managed-by": "kloop-training",
        RUN_ID_LABEL: "3a70f10d90b64c6280a3fe5c1eea4317",
    }
    # The Deployment (not the pod, not the ReplicaSet) owns the Job: a rollout keeps
    # running Jobs, an uninstall removes them.
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "kloop-training",
            "uid": "deploy-uid",
            "controller": False,
            "blockOwnerDeletion": False,
        }
    ]
    assert spec["ttlSecondsAfterFinished"] == 600
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 1800
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == meta["labels"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "kloop-training-job"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (container,) = pod["containers"]
    assert container["image"] == "localhost/kloop/training:dev"
    assert container["command"] == [
        "python",
        "-m",
        "kloop_training.job",
        "3a70f10d90b64c6280a3fe5c1eea4317",
    ]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "2Gi"}


def test_job_env_keeps_secret_references_and_drops_service_only_variables(
    cluster: Emulator,
) -> None:
    executor = KubernetesJobExecutor(settings(), cluster.api_client())
    assert executor.create_job("run-1") is True
    env = cluster.job("kloop-train-run-1")["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names == [
        "KLOOP_REDIS_PASSWORD",
        "KLOOP_TRAINING_REDIS_URL",
        "KLOOP_TRAINING_MLFLOW_TRACKING_URI",
        "KLOOP_TRAINING_RUN_ID",
    ]
    # The password stays a reference to the Secret: never a literal in the Job object.
    assert env[0] == {
        "name": "KLOOP_REDIS_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "kloop-redis-auth", "key": "redis-password"}},
    }
    assert env[1]["value"] == "redis://:$(KLOOP_REDIS_PASSWORD)@kloop-redis:6379/0"
    assert env[3] == {"name": "KLOOP_TRAINING_RUN_ID", "value": "run-1"}


def test_resubmitting_a_run_finds_its_job_instead_of_creating_another(cluster: Emulator) -> None:
    executor = KubernetesJobExecutor(settings(), cluster.api_client())
    assert executor.create_job("run-2") is True
    # What recover_runs does after a restart of the service: submit the same run again.
    assert executor.create_job("run-2") is False
    assert cluster.jobs() == ["kloop-train-run-2"]


def test_without_a_pod_the_configured_image_is_used_and_there_is_no_owner(
    cluster: Emulator,
) -> None:
    executor = KubernetesJobExecutor(
        settings(pod_name="", image="registry.example/kloop/training:1.0"), cluster.api_client()
    )
    executor.create_job("run-3")
    job = cluster.job("kloop-train-run-3")
    assert "ownerReferences" not in job["metadata"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/kloop/training:1.0"
    assert [e["name"] for e in container["env"]] == ["KLOOP_TRAINING_RUN_ID"]


def test_a_failed_creation_is_reported_so_the_run_does_not_stay_queued() -> None:
    # Nothing listens on this port: every attempt fails to connect.
    cfg = k8s.client.Configuration()
    cfg.host = "http://127.0.0.1:9"
    failures: list[tuple[str, str]] = []
    executor = KubernetesJobExecutor(
        settings(pod_name="", image="img:1", api_timeout_seconds=1),
        k8s.client.ApiClient(cfg),
        on_submit_failed=lambda run_id, error: failures.append((run_id, error)),
    )
    executor.submit("run-4")
    executor.shutdown(wait=True)
    assert [run_id for run_id, _ in failures] == ["run-4"]
    assert "could not create a Kubernetes Job" in failures[0][1]


def test_after_shutdown_runs_are_left_queued(cluster: Emulator) -> None:
    executor = KubernetesJobExecutor(settings(), cluster.api_client())
    executor.shutdown()
    executor.submit("run-5")
    assert cluster.jobs() == []


@pytest.mark.parametrize("run_id", ["", "UPPER", "has_underscore", "-leading", "x" * 60])
def test_run_ids_that_cannot_name_a_job_are_refused(run_id: str) -> None:
    with pytest.raises(ValueError):
        job_name(run_id)


def test_build_job_is_pure_and_needs_no_cluster() -> None:
    job = build_job(
        "abc",
        settings=JobExecutorSettings(namespace="ns"),
        image="i:1",
        env=[],
        labels={"app.kubernetes.io/instance": "r", "pod-template-hash": "x"},
        owner=None,
    )
    assert job["metadata"]["name"] == "kloop-train-abc"
    # Only the app.kubernetes.io labels of the pod carry over (never pod-template-hash,
    # which would make the Deployment's ReplicaSet adopt the Job's pod).
    assert "pod-template-hash" not in job["metadata"]["labels"]
    assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == "r"
