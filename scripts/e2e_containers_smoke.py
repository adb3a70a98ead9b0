"""Smoke test of the platform running as containers (scripts/e2e-containers.sh starts
them): train -> promote -> resolve through the SDK, then predict over the Open Inference
Protocol (HTTP and gRPC) once the inference service serves the promoted version; then
through the gateway as a user would, with an API key (created in the gateway's key store
in Redis, as `kloop keys create` does, and revoked at the end): a prediction over HTTP
and over gRPC, and a batch scoring job (POST /v1/jobs -> GET until succeeded: the
worker's job path); finally check that every service exports its series. Exits non-zero
on the first failure.

Usage: python scripts/e2e_containers_smoke.py --training HOST:PORT --registry HOST:PORT
       [--inference-http URL --inference-grpc HOST:PORT]
       [--gateway-http URL --gateway-grpc HOST:PORT --redis-url URL [--batch-job]]
       [--metrics URL ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

MODEL = "sentiment"


def _http(
    url: str, body: dict[str, Any] | None = None, timeout: float = 10.0, token: str = ""
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(  # noqa: S310 (loopback http only)
        url, data=data, headers=headers
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (loopback)
        payload = response.read()
    return json.loads(payload) if payload[:1] in (b"{", b"[") else payload.decode()


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError, ValueError, KeyError) as e:
            last = e
        time.sleep(0.5)
    raise SystemExit(f"FAIL: {what} within {timeout:.0f} s (last error: {last})")


def step(message: str) -> None:
    print(f"-- {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--training", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--inference-http")
    parser.add_argument("--inference-grpc")
    parser.add_argument("--gateway-http")
    parser.add_argument("--gateway-grpc")
    parser.add_argument("--redis-url")
    parser.add_argument("--batch-job", action="store_true")
    parser.add_argument("--metrics", action="append", default=[])
    args = parser.parse_args()

    from kloop_client.sdk import KloopClient

    with KloopClient(args.training, args.registry, timeout=60.0) as client:
        step("train (built-in dataset) through the training container")
        started = time.monotonic()
        run = client.train(MODEL, tags={"source": "e2e-containers"})
        if not run.model_version:
            raise SystemExit(f"FAIL: run ended without a version: {run.state} {run.error}")
        print(
            f"   run {run.run_id}: version {run.model_version} in "
            f"{time.monotonic() - started:.1f} s, metrics {dict(run.metrics)}"
        )
        step(f"promote version {run.model_version} to production")
        decision = client.promote(MODEL, run.model_version, reason="e2e-containers smoke test")
        print(f"   approved={decision.approved} explanation={decision.explanation!r}")
        if not decision.approved:
            raise SystemExit("FAIL: promotion was refused")
        resolved = client.resolve(MODEL, "production")
        if resolved.version != run.model_version:
            raise SystemExit(f"FAIL: production is {resolved.version}, not {run.model_version}")
        print(f"   production -> version {resolved.version}")

    if args.inference_http:
        base = args.inference_http.rstrip("/")
        step("predict over OIP HTTP once inference serves the promoted version")
        body = {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [2],
                    "data": ["a wonderful, lovely film", "awful and boring"],
                }
            ]
        }
        answer = _wait(
            "an OIP HTTP prediction from the promoted version",
            lambda: (lambda r: r if r.get("model_version") == run.model_version else None)(
                _http(f"{base}/v2/models/{MODEL}/infer", body)
            ),
            120,
        )
        probabilities = answer["outputs"][0]["data"]
        print(f"   HTTP: version {answer['model_version']} -> {probabilities}")
        if not probabilities[0] > probabilities[1]:
            raise SystemExit("FAIL: the positive text did not score above the negative one")

    if args.inference_grpc:
        import grpc

        from kloop.oip.v2 import grpc_predict_v2_pb2 as oip
        from kloop.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc

        step("predict over OIP gRPC")
        with grpc.insecure_channel(args.inference_grpc) as channel:
            stub = oip_grpc.GRPCInferenceServiceStub(channel)
            request = oip.ModelInferRequest(model_name=MODEL)
            tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
            tensor.contents.bytes_contents.append(b"what a great movie")
            response = stub.ModelInfer(request, timeout=10)
            print(
                f"   gRPC: version {response.model_version}, "
                f"{len(response.raw_output_contents) or len(response.outputs)} output(s)"
            )
            if response.model_version != run.model_version:
                raise SystemExit(f"FAIL: gRPC answered version {response.model_version}")

    if args.gateway_http:
        gateway(args, run.model_version)

    for url in args.metrics:
        text = _http(url)
        # RED of the API services; the worker (no API) exports its task series.
        series = (
            "kloop_grpc_server_requests_total",
            "kloop_http_requests_total",
            "kloop_worker_tasks_total",
        )
        if not any(name in text for name in series):
            raise SystemExit(f"FAIL: {url} exports no kloop RED series")
    if args.metrics:
        step(f"RED series exported by {len(args.metrics)} services")
    print("e2e-containers smoke test: passed")
    return 0


def gateway(args: argparse.Namespace, version: str) -> None:
    import grpc

    from kloop.gateway.v1 import gateway_pb2 as gw
    from kloop.gateway.v1 import gateway_pb2_grpc as gw_grpc
    from kloop_core.api_keys import ApiKeyStore
    from kloop_core.redis import create_redis

    base = args.gateway_http.rstrip("/")
    keys = ApiKeyStore(create_redis(args.redis_url))
    key, token = keys.create(["predict"], name="e2e-containers")
    step(f"API key {key.id} (scope predict) created in the gateway's key store")
    try:
        step("predict through the gateway over HTTP (Bearer key)")
        try:
            _http(f"{base}/v1/models/{MODEL}/predict", {"text": "no key"})
            raise SystemExit("FAIL: the gateway answered without an API key")
        except urllib.error.HTTPError as e:
            if e.code != 401:
                raise SystemExit(f"FAIL: without a key the gateway answered {e.code}") from e
        answer = _wait(
            "a gateway HTTP prediction from the promoted version",
            lambda: (lambda r: r if r["model"]["version"] == version else None)(
                _http(
                    f"{base}/v1/models/{MODEL}/predict",
                    {"text": "a wonderful, lovely film"},
                    token=token,
                )
            ),
            120,
        )
        print(f"   HTTP: {answer['label']} ({answer['score']:.3f}) from {answer['model']}")
        if answer["label"] != "positive":
            raise SystemExit("FAIL: the gateway labelled a positive text negative")

        step("predict through the gateway over gRPC (authorization metadata)")
        with grpc.insecure_channel(args.gateway_grpc) as channel:
            reply = gw_grpc.GatewayServiceStub(channel).Predict(
                gw.PredictRequest(model=MODEL, text="awful and boring"),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=10,
            )
        print(f"   gRPC: {reply.label} ({reply.score:.3f}) v{reply.model.version}")
        if reply.model.version != version or reply.label != "negative":
            raise SystemExit(f"FAIL: gRPC answered {reply.label} from v{reply.model.version}")

        if args.batch_job:
            step("batch scoring job through the gateway, run by the worker")
            texts = ["a wonderful film", "awful and boring", "great acting"] * 20
            accepted = _http(f"{base}/v1/jobs", {"model": MODEL, "texts": texts}, token=token)
            started = time.monotonic()
            job = _wait(
                f"job {accepted['id']} to finish",
                lambda: (lambda j: j if j["status"] not in ("queued", "running") else None)(
                    _http(f"{base}/v1/jobs/{accepted['id']}", token=token)
                ),
                180,
            )
            print(
                f"   job {job['id']}: {job['status']} in {time.monotonic() - started:.1f} s, "
                f"counts {job['counts']}"
            )
            if job["status"] != "succeeded" or job["counts"]["scored"] != len(texts):
                raise SystemExit(f"FAIL: batch job {job}")
            page = _http(f"{base}/v1/jobs/{job['id']}/results", token=token)
            rows = page["items"]
            print(f"   first results: {rows[:2]}")
            if len(rows) != len(texts) or rows[0]["label"] != "positive":
                raise SystemExit(f"FAIL: results page {page}")
    finally:
        keys.revoke(key.id)
        step(f"API key {key.id} revoked")


if __name__ == "__main__":
    sys.exit(main())
