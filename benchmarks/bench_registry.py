"""Benchmark the registry over gRPC: ResolveAlias latency (the hot read), against the
MLflow call it wraps, plus SetAlias and Promote (locked, audited writes).

Run: ``uv run --no-sync python benchmarks/bench_registry.py [--calls N]``. Starts its own
MLflow server and Redis on free loopback ports and a registry in-process; prints figures
only, no assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from mlflow import MlflowClient

from kloop.registry.v1 import registry_pb2 as pb
from kloop.registry.v1.registry_pb2_grpc import RegistryServiceStub
from kloop_client.local import free_port, start_mlflow, start_redis
from kloop_core.grpc_server import start_service
from kloop_core.logging import configure_logging
from kloop_model.classifier import SentimentClassifier, TrainingParams
from kloop_model.dataset import builtin_dataset
from kloop_model.onnx_export import export_onnx, sentiment_signature
from kloop_registry.main import build_app
from kloop_registry.settings import RegistrySettings


def percentiles(action: Callable[[], object], calls: int, warmup: int = 20) -> str:
    for _ in range(warmup):
        action()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return (
        f"n={calls:<4d} p50={p50:7.2f} ms  p99={p99:7.2f} ms  "
        f"mean={statistics.fmean(samples):7.2f} ms  max={samples[-1]:7.2f} ms"
    )


def log_run(mlflow_uri: str, epochs: int) -> tuple[str, str, int]:
    """A finished run with model/ artifacts as training writes them."""
    data = builtin_dataset()
    model = SentimentClassifier(TrainingParams(epochs=epochs)).fit(data.texts, data.labels)
    onnx_bytes = export_onnx(model).SerializeToString()
    client = MlflowClient(mlflow_uri)
    run = client.create_run("0")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        (out / "model.onnx").write_bytes(onnx_bytes)
        (out / "model.json").write_text(json.dumps(model.to_dict()))
        (out / "signature.json").write_text(json.dumps(sentiment_signature()))
        (out / "reference_profile.json").write_text("{}")
        rows = zip(data.texts, data.labels.tolist(), strict=True)
        (out / "holdout.jsonl").write_text(
            "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows)
        )
        client.log_artifacts(run.info.run_id, d, "model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id, hashlib.sha256(onnx_bytes).hexdigest(), len(onnx_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    configure_logging("registry", "WARNING", "console")
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus")

    with tempfile.TemporaryDirectory() as state_dir:
        state = Path(state_dir)
        mlflow_port, redis_port = free_port(), free_port()
        started = time.perf_counter()
        mlflow_proc = start_mlflow(mlflow_port, state)
        redis_proc = start_redis(redis_port, state)
        print(f"mlflow + redis started in {time.perf_counter() - started:.1f} s")
        mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
        try:
            settings = RegistrySettings(
                mlflow_tracking_uri=mlflow_uri,
                redis_url=f"redis://127.0.0.1:{redis_port}/0",
                artifact_cache_dir=state / "cache",
                grpc_port=0,
                http_port=0,
            )
            with (
                start_service(build_app(settings)) as running,
                grpc.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel,
            ):
                stub = RegistryServiceStub(channel)
                name = "bench-sentiment"
                versions = []
                for epochs in (20, 200):
                    run_id, sha, size = log_run(mlflow_uri, epochs)
                    t0 = time.perf_counter()
                    version = stub.RegisterVersion(
                        pb.RegisterVersionRequest(
                            name=name, run_id=run_id, sha256=sha, size_bytes=size
                        ),
                        timeout=60,
                    ).version
                    print(f"RegisterVersion v{version}: {(time.perf_counter() - t0) * 1000:.0f} ms")
                    versions.append(version)
                stub.SetAlias(pb.SetAliasRequest(name=name, alias="production", version="1"))

                resolve = pb.ResolveAliasRequest(name=name, alias="production")
                print("ResolveAlias via registry gRPC     ", percentiles(
                    lambda: stub.ResolveAlias(resolve, timeout=10), args.calls
                ))  # fmt: skip
                direct = MlflowClient(mlflow_uri)
                print("get_model_version_by_alias (MLflow)", percentiles(
                    lambda: direct.get_model_version_by_alias(name, "production"), args.calls
                ))  # fmt: skip

                flip = iter(versions * 1000)
                print("SetAlias (lock + move + audit + event)", percentiles(
                    lambda: stub.SetAlias(pb.SetAliasRequest(
                        name=name, alias="canary", version=next(flip)
                    ), timeout=10),
                    50, warmup=2,
                ))  # fmt: skip
                promote = pb.PromoteRequest(name=name, version="2", dry_run=True)
                print("Promote dry run (score both, cached)", percentiles(
                    lambda: stub.Promote(promote, timeout=60), 10, warmup=1
                ))  # fmt: skip
                decision = stub.Promote(promote, timeout=60)
                print(
                    f"  decision: approved={decision.approved} holdout={decision.holdout_size} "
                    f"log_loss v2={decision.candidate_value:.4f} v1={decision.baseline_value:.4f}"
                )
        finally:
            redis_proc.stop()
            mlflow_proc.stop()


if __name__ == "__main__":
    main()
