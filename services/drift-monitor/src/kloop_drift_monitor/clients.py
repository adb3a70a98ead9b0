"""The monitor's remote dependencies: the registry (a version's files and run) and the
MLflow tracking server (where reports are stored)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from kloop.registry.v1 import registry_pb2 as pb
from kloop.registry.v1.registry_pb2_grpc import RegistryServiceStub
from kloop_core.errors import NotFound, Unavailable, error_from_rpc
from kloop_core.resilience import Deadline, grpc_channel, retry_call

PROFILE_FILE = "reference_profile.json"
MODEL_FILE = "model.json"
HOLDOUT_FILE = "holdout.jsonl"
REPORTS_DIR = "drift_reports"


class RegistryClient:
    """Versions' artifacts over the registry's gRPC API (verified by sha256)."""

    def __init__(self, addr: str, *, timeout_seconds: float) -> None:
        self._channel = grpc_channel(addr)
        self._stub = RegistryServiceStub(self._channel)
        self._timeout = timeout_seconds

    def close(self) -> None:
        self._channel.close()

    def download(self, model: str, version: str, path: str) -> bytes:
        deadline = Deadline(self._timeout)

        def fetch() -> bytes:
            request = pb.DownloadArtifactRequest(name=model, version=version, path=path)
            chunks = list(self._stub.DownloadArtifact(request, timeout=deadline.timeout()))
            data = b"".join(chunk.data for chunk in chunks)
            expected = chunks[0].sha256 if chunks else ""
            if expected and hashlib.sha256(data).hexdigest() != expected:
                raise Unavailable(f"{path} of {model} v{version} arrived corrupted")
            return data

        try:
            return retry_call(fetch, deadline=deadline)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e

    def _json(self, model: str, version: str, path: str) -> Any:
        try:
            return json.loads(self.download(model, version, path))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise NotFound(f"{path} of {model} v{version} is not JSON: {e}") from None

    def reference_documents(
        self, model: str, version: str
    ) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
        profile = self._json(model, version, PROFILE_FILE)
        try:
            model_document = self._json(model, version, MODEL_FILE)
        except NotFound:
            model_document = None  # not a kloop sentiment model: no vocabulary
        return profile, model_document

    def model_document(self, model: str, version: str) -> Mapping[str, Any]:
        document: Mapping[str, Any] = self._json(model, version, MODEL_FILE)
        return document

    def holdout_texts(self, model: str, version: str) -> list[str]:
        raw = self.download(model, version, HOLDOUT_FILE).decode()
        try:
            return [str(json.loads(line)["text"]) for line in raw.splitlines() if line.strip()]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise NotFound(f"{HOLDOUT_FILE} of {model} v{version} is malformed: {e!r}") from None

    def run_id(self, model: str, version: str) -> str:
        deadline = Deadline(self._timeout)
        request = pb.GetVersionRequest(name=model, version=version)
        try:
            reply = retry_call(
                lambda: self._stub.GetVersion(request, timeout=deadline.timeout()),
                deadline=deadline,
            )
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e
        if not reply.run_id:
            raise NotFound(f"{model} v{version} has no MLflow run to attach reports to")
        return str(reply.run_id)


def configure_mlflow_http(timeout_seconds: int) -> None:
    """MLflow reads these per request; its defaults (120 s x 7 retries) would turn a
    dead server into minutes of waiting."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_seconds)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"


class MlflowReports:
    """Stores reports as artifacts of a version's MLflow run, under drift_reports/."""

    def __init__(self, tracking_uri: str) -> None:
        self._client = MlflowClient(tracking_uri)

    def store(self, run_id: str, filename: str, content: bytes) -> str:
        """Upload; returns the artifact path inside the run."""
        with tempfile.TemporaryDirectory(prefix="kloop-drift-report-") as tmp:
            path = Path(tmp) / filename
            path.write_bytes(content)
            try:
                self._client.log_artifact(run_id, str(path), REPORTS_DIR)
            except MlflowException as e:
                if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                    raise NotFound(f"MLflow run {run_id} does not exist") from e
                raise Unavailable(f"MLflow could not store the report: {e.message}") from e
            except OSError as e:  # connection refused / timed out under requests
                raise Unavailable(f"MLflow is unreachable: {e}") from e
        return f"{REPORTS_DIR}/{filename}"
