"""Real processes for the end-to-end tests: a registry (`kloop-registry`) over the root
conftest's MLflow and Redis, a model version logged like training logs it, and the
drift monitor itself (`kloop-drift-monitor`)."""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
from mlflow import MlflowClient

from kloop.registry.v1 import registry_pb2 as rpb
from kloop.registry.v1.registry_pb2_grpc import RegistryServiceStub
from kloop_client.local import ManagedProcess, free_port, http_ok, port_open, start_process
from kloop_model.classifier import SentimentClassifier
from kloop_model.onnx_export import export_onnx, sentiment_signature

from .helpers import reference_documents


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    run_id: str


def start_registry(state: Path, mlflow_uri: str, redis_url: str) -> tuple[ManagedProcess, str]:
    grpc_port, http_port = free_port(), free_port()
    prefix = "KLOOP_REGISTRY_"
    env = {
        f"{prefix}MLFLOW_TRACKING_URI": mlflow_uri,
        f"{prefix}REDIS_URL": redis_url,
        f"{prefix}GRPC_PORT": str(grpc_port),
        f"{prefix}HTTP_PORT": str(http_port),
        f"{prefix}ARTIFACT_CACHE_DIR": str(state / "registry-cache"),
        f"{prefix}EVENTS_STREAM": f"test:{uuid.uuid4().hex[:8]}:model-events",
    }
    process = start_process(
        "registry",
        [sys.executable, "-m", "kloop_registry.main"],
        state_dir=state,
        env=env,
        ready=lambda: port_open(grpc_port),
        timeout=60,
    )
    return process, f"127.0.0.1:{grpc_port}"


def register_version(
    registry_addr: str, mlflow_uri: str, name: str, model: SentimentClassifier, holdout: list[str]
) -> Version:
    """Log a finished run with training's artifacts (real reference profile) and
    register it."""
    client = MlflowClient(mlflow_uri)
    run = client.create_run("0")
    onnx_bytes = export_onnx(model).SerializeToString()
    profile, document = reference_documents(model, holdout)
    labels = model.predict(holdout).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "model.onnx").write_bytes(onnx_bytes)
        (out / "model.json").write_text(json.dumps(document))
        (out / "reference_profile.json").write_text(json.dumps(profile))
        (out / "signature.json").write_text(json.dumps(sentiment_signature()))
        (out / "holdout.jsonl").write_text(
            "".join(
                json.dumps({"text": t, "label": y}) + "\n"
                for t, y in zip(holdout, labels, strict=True)
            )
        )
        client.log_artifacts(run.info.run_id, str(out), "model")
    client.set_terminated(run.info.run_id)
    with grpc.insecure_channel(registry_addr) as channel:
        reply = RegistryServiceStub(channel).RegisterVersion(
            rpb.RegisterVersionRequest(
                name=name,
                run_id=run.info.run_id,
                sha256=hashlib.sha256(onnx_bytes).hexdigest(),
                size_bytes=len(onnx_bytes),
                dataset_digest="d" * 64,
            ),
            timeout=60,
        )
    return Version(name, reply.version, run.info.run_id)


@dataclass(frozen=True)
class Monitor:
    process: ManagedProcess
    http: str
    grpc_addr: str
    env: dict[str, str]


def start_monitor(state: Path, env: dict[str, str], *, name: str = "drift-monitor") -> Monitor:
    grpc_port, http_port = free_port(), free_port()
    full = {
        **env,
        "KLOOP_DRIFT_MONITOR_GRPC_PORT": str(grpc_port),
        "KLOOP_DRIFT_MONITOR_HTTP_PORT": str(http_port),
        "KLOOP_DRIFT_MONITOR_LOG_LEVEL": "WARNING",
    }
    http = f"http://127.0.0.1:{http_port}"
    process = start_process(
        name,
        [sys.executable, "-m", "kloop_drift_monitor.main"],
        state_dir=state,
        env=full,
        ready=lambda: http_ok(f"{http}/readyz"),
        timeout=90,
    )
    return Monitor(process, http, f"127.0.0.1:{grpc_port}", full)
