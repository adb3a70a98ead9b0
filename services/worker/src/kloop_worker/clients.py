"""Calls to other services: registry and training (gRPC), the drift monitor's reports
(HTTP), and reading Redis streams. Every call has a deadline; idempotent calls retry
short blips here, and longer outages surface as kloop errors (Unavailable: transient)
for the caller's step-level retry."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import grpc
import httpx
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kloop.registry.v1 import registry_pb2 as reg
from kloop.registry.v1 import registry_pb2_grpc as reg_grpc
from kloop.training.v1 import training_pb2 as tr
from kloop.training.v1 import training_pb2_grpc as tr_grpc
from kloop_core.errors import NotFound, Unavailable, error_from_rpc
from kloop_core.resilience import Deadline, grpc_channel, retry_call

T = TypeVar("T")


def _call(method: Callable[..., T], request: Any, timeout: float) -> T:
    deadline = Deadline(timeout)
    try:
        return retry_call(lambda: method(request, timeout=deadline.timeout()), deadline=deadline)
    except grpc.RpcError as error:
        raise error_from_rpc(error) from None


class RegistryClient:
    def __init__(self, target: str, *, timeout: float, actor: str) -> None:
        self._timeout = timeout
        self._actor = actor
        self._channel = grpc_channel(target)
        self._stub = reg_grpc.RegistryServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def get_version(self, name: str, version: str) -> reg.ModelVersion:
        request = reg.GetVersionRequest(name=name, version=version)
        return _call(self._stub.GetVersion, request, self._timeout)

    def resolve(self, name: str, alias: str) -> reg.ModelVersion | None:
        try:
            request = reg.ResolveAliasRequest(name=name, alias=alias)
            return _call(self._stub.ResolveAlias, request, self._timeout)
        except NotFound:
            return None

    def download(self, name: str, version: str, path: str) -> bytes | None:
        """One artifact file of a version (verified by the registry), None if absent."""
        request = reg.DownloadArtifactRequest(name=name, version=version, path=path)

        def collect(req: reg.DownloadArtifactRequest, timeout: float) -> bytes:
            return b"".join(c.data for c in self._stub.DownloadArtifact(req, timeout=timeout))

        try:
            return _call(collect, request, self._timeout)
        except NotFound:
            return None

    def promote(
        self, name: str, version: str, *, target: str, reason: str, dry_run: bool
    ) -> reg.PromotionDecision:
        request = reg.PromoteRequest(
            name=name,
            version=version,
            target_alias=target,
            baseline_alias="production",
            actor=self._actor,
            reason=reason,
            dry_run=dry_run,
        )
        return _call(self._stub.Promote, request, self._timeout)

    def set_alias(self, name: str, alias: str, version: str, reason: str) -> reg.AliasChange:
        request = reg.SetAliasRequest(
            name=name, alias=alias, version=version, reason=reason, actor=self._actor
        )
        return _call(self._stub.SetAlias, request, self._timeout)

    def delete_alias(self, name: str, alias: str, reason: str) -> reg.AliasChange | None:
        """None when the alias is already gone (a repeated step)."""
        request = reg.DeleteAliasRequest(name=name, alias=alias, reason=reason, actor=self._actor)
        try:
            return _call(self._stub.DeleteAlias, request, self._timeout)
        except NotFound:
            return None


class TrainingClient:
    def __init__(self, target: str, *, timeout: float) -> None:
        self._timeout = timeout
        self._channel = grpc_channel(target)
        self._stub = tr_grpc.TrainingServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def submit(
        self,
        model: str,
        *,
        dataset_uri: str,
        params: Mapping[str, float],
        tags: Mapping[str, str],
        idempotency_key: str,
    ) -> tr.Run:
        """Idempotent by key: a repeated submit returns the run the first one created."""
        dataset = tr.DatasetSpec(uri=dataset_uri) if dataset_uri else tr.DatasetSpec(builtin=True)
        request = tr.SubmitRunRequest(
            model_name=model,
            dataset=dataset,
            params=tr.TrainingParams(**params),
            tags=dict(tags),
            idempotency_key=idempotency_key,
        )
        return _call(self._stub.SubmitRun, request, self._timeout)

    def get_run(self, run_id: str) -> tr.Run:
        return _call(self._stub.GetRun, tr.GetRunRequest(run_id=run_id), self._timeout)

    def serving(self) -> bool:
        """Whether the training service reports itself ready (its Redis and MLflow
        reachable), by the standard gRPC health check."""
        try:
            reply = self._health.Check(health_pb2.HealthCheckRequest(), timeout=self._timeout)
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def request_drift_report(
    base_url: str, model: str, version: str, *, fmt: str, timeout: float
) -> dict[str, str]:
    """Ask the drift monitor to build (and store as an MLflow artifact) a report of the
    version; returns where it was stored."""
    url = f"{base_url.rstrip('/')}/v1/reports/{model}/{version}"
    try:
        response = httpx.get(url, params={"format": fmt}, timeout=timeout)
    except httpx.TransportError as error:
        raise Unavailable(f"drift monitor unreachable: {error!r}") from None
    if response.status_code >= 500:
        raise Unavailable(f"drift monitor answered {response.status_code}")
    if response.status_code != 200:
        raise NotFound(f"drift monitor answered {response.status_code}: {response.text[:300]}")
    return {
        "artifact_uri": response.headers.get("X-Kloop-Report-Uri", ""),
        "run_id": response.headers.get("X-Kloop-Run-Id", ""),
        "bytes": str(len(response.content)),
    }


def read_stream(
    client: redis.Redis, key: str, *, after: str = "-", limit: int, newest_first: bool = False
) -> Iterator[tuple[str, dict[str, str]]]:
    """Up to `limit` entries (id, fields) of a stream, oldest first from `after`
    (exclusive; "-" = the start) or newest first, in pages."""
    page = 1000
    seen = 0
    cursor = "+" if newest_first else after
    exclusive = cursor not in ("-", "+")
    while seen < limit:
        bound = f"({cursor}" if exclusive else cursor
        count = min(page, limit - seen)
        entries: Any = (
            client.xrevrange(key, max=bound, min="-", count=count)
            if newest_first
            else client.xrange(key, min=bound, max="+", count=count)
        )
        if not entries:
            return
        for entry_id, fields in entries:
            seen += 1
            yield _text(entry_id), {_text(k): _text(v) for k, v in fields.items()}
        cursor, exclusive = _text(entries[-1][0]), True
        if len(entries) < count:
            return


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
