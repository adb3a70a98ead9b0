"""`KubernetesJobExecutor`: each run executes as a Kubernetes Job running
`python -m kloop_training.job RUN_ID` (which calls `execute_run`) in the training image.

The Job copies what it needs from the training pod itself (read once through the API):
the image, the training container's environment *definitions* (a Redis password stays a
`secretKeyRef`, never a literal in the Job) and the owner: the training Deployment, so
uninstalling the release garbage-collects the Jobs. Finished Jobs go away after
`ttlSecondsAfterFinished`. The pods run as the chart runs everything: non-root,
read-only root filesystem, no capabilities, RuntimeDefault seccomp, no API token.

Ownership of a run passes to Kubernetes: `submit` creates the Job (idempotently: the
Job's name is derived from the run id, so re-submitting after a restart, as
`recover_runs` does, finds the existing Job), and `shutdown` leaves running Jobs alone.

Settings come from `KLOOP_TRAINING_K8S_*` (the chart sets them when
services.training.executor=kubernetes).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kloop_core.logging import get_logger

log = get_logger(__name__)

JOB_NAME_PREFIX = "kloop-train-"
RUN_ID_LABEL = "kloop.dev/run-id"
_RUN_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,49}[a-z0-9])?$")
# Env of the service process that means nothing (or harm) in a Job's pod.
_SERVICE_ONLY_ENV = re.compile(r"^KLOOP_TRAINING_(GRPC|HTTP)_(HOST|PORT)$|^KLOOP_TRAINING_K8S_")
_RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class JobExecutorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KLOOP_TRAINING_K8S_", extra="ignore")

    namespace: str = "default"
    # This pod: source of the image, env and owner. Empty (outside a pod): `image` and
    # `env_from_pod=False` are used and the Jobs have no owner.
    pod_name: str = ""
    container_name: str = "training"
    image: str = ""
    service_account: str = ""
    ttl_seconds_after_finished: int = Field(default=3600, ge=0)
    backoff_limit: int = Field(default=1, ge=0)
    active_deadline_seconds: int = Field(default=3600, ge=1)
    resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "500m", "memory": "512Mi"},
            "limits": {"cpu": "2", "memory": "2Gi"},
        }
    )
    run_as_user: int = 10001
    # Attempts and deadline of one API call.
    api_attempts: int = Field(default=4, ge=1, le=10)
    api_timeout_seconds: float = Field(default=10.0, gt=0)


def job_name(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r} cannot name a Job (lowercase letters, digits, -)")
    return JOB_NAME_PREFIX + run_id


def _env_list(container: Any) -> list[dict[str, Any]]:
    """Env definitions of a container from the API, as plain dicts (valueFrom kept)."""
    from kubernetes import client

    sanitize = client.ApiClient().sanitize_for_serialization
    return [sanitize(e) for e in (container.env or []) if not _SERVICE_ONLY_ENV.match(e.name)]  # type: ignore[no-untyped-call]


def build_job(
    run_id: str,
    *,
    settings: JobExecutorSettings,
    image: str,
    env: list[dict[str, Any]],
    labels: Mapping[str, str],
    owner: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The Job manifest of one run (pure: tests assert on it)."""
    name = job_name(run_id)
    job_labels = {
        **{k: v for k, v in labels.items() if k.startswith("app.kubernetes.io/")},
        "app.kubernetes.io/component": "training-run",
        "app.kubernetes.io/managed-by": "kloop-training",
        RUN_ID_LABEL: run_id,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "run",
                "image": image,
                "command": ["python", "-m", "kloop_training.job", run_id],
                "env": [*env, {"name": "KLOOP_TRAINING_RUN_ID", "value": run_id}],
                "resources": settings.resources,
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],  # noqa: S108 (an emptyDir)
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": settings.namespace,
        "labels": job_labels,
        "annotations": {"kloop.dev/run-id": run_id},
    }
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": settings.backoff_limit,
            "activeDeadlineSeconds": settings.active_deadline_seconds,
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "template": {"metadata": {"labels": job_labels}, "spec": pod_spec},
        },
    }


class KubernetesJobExecutor:
    """RunExecutor that hands each run to a Kubernetes Job (see the module docstring)."""

    def __init__(
        self,
        settings: JobExecutorSettings,
        api_client: Any = None,
        *,
        on_submit_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        from kubernetes import client, config

        if api_client is None:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            api_client = client.ApiClient()
        self._settings = settings
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._on_submit_failed = on_submit_failed
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kloop-k8s-submit")
        self._lock = threading.Lock()
        self._stopping = False
        self._template: tuple[str, list[dict[str, Any]], dict[str, str], dict[str, Any] | None]
        self._template_loaded = False

    # --- RunExecutor -------------------------------------------------------------------
    def submit(self, run_id: str) -> None:
        job_name(run_id)  # a bad id fails now, on the caller's thread
        with self._lock:
            if self._stopping:
                log.info("executor stopping; run left queued", run_id=run_id)
                return
            self._pool.submit(self._create_logged, run_id)

    def shutdown(self, wait: bool = True) -> None:
        # Jobs already created run on without this process.
        with self._lock:
            self._stopping = True
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    # --- internals ---------------------------------------------------------------------
    def create_job(self, run_id: str) -> bool:
        """Create the run's Job; False if it existed already. Raises after the attempts."""
        from kubernetes.client import ApiException

        image, env, labels, owner = self._pod_template()
        body = build_job(
            run_id, settings=self._settings, image=image, env=env, labels=labels, owner=owner
        )
        try:
            self._call(self._batch.create_namespaced_job, self._settings.namespace, body)
        except ApiException as e:
            if e.status == 409:
                log.info("job exists already", run_id=run_id, job=body["metadata"]["name"])
                return False
            raise
        log.info("job created", run_id=run_id, job=body["metadata"]["name"])
        return True

    def _create_logged(self, run_id: str) -> None:
        try:
            self.create_job(run_id)
        except Exception as e:
            log.error("could not create the run's job", run_id=run_id, error=str(e))
            if self._on_submit_failed is not None:
                self._on_submit_failed(run_id, f"could not create a Kubernetes Job: {e}")

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        from kubernetes.client import ApiException

        delay = 0.2
        for attempt in range(1, self._settings.api_attempts + 1):
            try:
                return fn(*args, _request_timeout=self._settings.api_timeout_seconds)
            except ApiException as e:
                if e.status not in _RETRYABLE_STATUS or attempt == self._settings.api_attempts:
                    raise
            except OSError:
                if attempt == self._settings.api_attempts:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _pod_template(
        self,
    ) -> tuple[str, list[dict[str, Any]], dict[str, str], dict[str, Any] | None]:
        """Image, env, labels and owner of the Jobs: read once from this pod."""
        if self._template_loaded:
            return self._template
        s = self._settings
        image, env, labels, owner = s.image, [], {}, None
        if s.pod_name:
            pod = self._call(self._core.read_namespaced_pod, s.pod_name, s.namespace)
            container = next(
                (c for c in pod.spec.containers if c.name == s.container_name),
                pod.spec.containers[0],
            )
            image = image or container.image
            env = _env_list(container)
            labels = dict(pod.metadata.labels or {})
            owner = self._deployment_owner(pod)
        if not image:
            raise ValueError("KLOOP_TRAINING_K8S_IMAGE or KLOOP_TRAINING_K8S_POD_NAME is required")
        self._template = (image, env, labels, owner)
        self._template_loaded = True
        return self._template

    def _deployment_owner(self, pod: Any) -> dict[str, Any] | None:
        """The Deployment above this pod's ReplicaSet, as an ownerReference."""
        for ref in pod.metadata.owner_references or []:
            if ref.kind != "ReplicaSet":
                continue
            rs = self._call(
                self._apps.read_namespaced_replica_set, ref.name, self._settings.namespace
            )
            for rs_ref in rs.metadata.owner_references or []:
                if rs_ref.kind == "Deployment":
                    return {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "name": rs_ref.name,
                        "uid": rs_ref.uid,
                        "controller": False,
                        "blockOwnerDeletion": False,
                    }
        return None
