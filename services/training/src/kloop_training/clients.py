"""The registry's gRPC client, as the pipeline's `Registrar`."""

from __future__ import annotations

import grpc

from kloop.registry.v1 import registry_pb2, registry_pb2_grpc
from kloop_core.errors import (
    DeadlineExceeded,
    KloopError,
    Unavailable,
    error_from_rpc,
    is_retryable_rpc_error,
)
from kloop_core.resilience import Deadline, grpc_channel, retry_call
from kloop_training.pipeline import VersionRequest


def _retryable(e: BaseException) -> bool:
    # RegisterVersion is idempotent per (name, run_id), so a call that timed out may be
    # repeated too: at worst it returns the version the first attempt created.
    if isinstance(e, grpc.RpcError) and e.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return True
    return bool(is_retryable_rpc_error(e))


class RegistryClient:
    def __init__(self, addr: str, *, timeout_seconds: float = 30.0, attempts: int = 4) -> None:
        self._addr = addr
        self._timeout = timeout_seconds
        self._attempts = attempts
        self._channel = grpc_channel(addr)
        self._stub = registry_pb2_grpc.RegistryServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def register_version(self, request: VersionRequest) -> str:
        message = registry_pb2.RegisterVersionRequest(
            name=request.name,
            run_id=request.mlflow_run_id,
            artifact_path=request.artifact_path,
            sha256=request.sha256,
            size_bytes=request.size_bytes,
            dataset_digest=request.dataset_digest,
            tags=dict(request.tags),
        )
        # One budget for all attempts; each attempt gets what is left, at most its own cap.
        deadline = Deadline(self._timeout * self._attempts)
        try:
            version = retry_call(
                lambda: self._stub.RegisterVersion(
                    message, timeout=deadline.timeout(cap=self._timeout)
                ),
                attempts=self._attempts,
                initial_delay=0.2,
                max_delay=5.0,
                retry_on=_retryable,
                deadline=deadline,
            )
        except grpc.RpcError as e:
            raise self._error(e) from e
        return str(version.version)

    def _error(self, e: grpc.RpcError) -> KloopError:
        error = error_from_rpc(e)
        if isinstance(error, Unavailable):
            return Unavailable(f"registry at {self._addr} is unavailable: {error.message}")
        if isinstance(error, DeadlineExceeded):
            return DeadlineExceeded(f"registry at {self._addr} did not answer in time")
        return type(error)(f"registry refused RegisterVersion: {error.message}")
