"""Gateway benchmark: prints figures, asserts nothing.

Starts redis-server, `kloop-inference` (serving the sentiment model from a local model
folder) and `kloop-gateway` as subprocesses on loopback, creates an API key, then sends
one request at a time (concurrency 1) and reports p50 / p99 latency and the gateway
process's CPU time per request (utime + stime from /proc over the measured window) for:

- inference directly (the baseline): OIP gRPC ModelInfer and OIP HTTP /v2/.../infer;
- the gateway, gRPC Predict and HTTP POST /v1/models/sentiment/predict, with a cache
  miss (every text new) and a cache hit (the same text again);

and the overhead the gateway adds at p50 (gateway p50 - inference p50, same protocol).
Every gateway request does the full job: key check, rate limit, routing, cache, record
and event write (event sample rate 1.0). With --concurrency N it also reports req/s with
N clients in threads.

    uv run --no-sync python benchmarks/bench_gateway.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc
import redis

from kloop.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from kloop.oip.v2 import grpc_predict_v2_pb2 as oip
from kloop.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from kloop_client.local import free_port, start_redis
from kloop_core.api_keys import ApiKeyStore
from kloop_model import SentimentClassifier
from kloop_model.dataset import builtin_dataset
from kloop_model.onnx_export import export_onnx

MODEL = "sentiment"
GATEWAY_PATH = f"/v1/models/{MODEL}/predict"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BIN = Path(sys.executable).parent


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def wait_http(port: int, path: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"127.0.0.1:{port}{path} not ready after {timeout} s")


@contextmanager
def process(name: str, env: dict[str, str], logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    log = (logs / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / name)], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


class HttpClient:
    """One keep-alive connection with TCP_NODELAY: as little client cost as Python allows."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self._conn.connect()
        self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._headers = {"Content-Type": "application/json", **headers}

    def post(self, path: str, body: bytes) -> bytes:
        self._conn.request("POST", path, body=body, headers=self._headers)
        response = self._conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
        return data


def measure(
    label: str, call: Callable[[int], object], requests: int, pid: int | None
) -> dict[str, float | str]:
    for i in range(50):  # warm-up (connections, caches, branch predictors)
        call(-1 - i)
    latencies = []
    cpu_before = cpu_seconds(pid) if pid else 0.0
    for i in range(requests):
        started = time.perf_counter()
        call(i)
        latencies.append(time.perf_counter() - started)
    cpu = (cpu_seconds(pid) - cpu_before) if pid else 0.0
    latencies.sort()
    return {
        "label": label,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "cpu_us": cpu / requests * 1e6 if pid else float("nan"),
    }


def per_thread_client(
    port: int, headers: dict[str, str], path: str, body: Callable[[int], bytes]
) -> Callable[[int], object]:
    """A call that uses one keep-alive connection per client thread."""
    local = threading.local()

    def call(i: int) -> object:
        if not hasattr(local, "client"):
            local.client = HttpClient(port, headers)
        return local.client.post(path, body(i))

    return call


def throughput(call: Callable[[int], object], concurrency: int, seconds: float) -> float:
    done = [0] * concurrency
    stop = time.monotonic() + seconds

    def worker(w: int) -> None:
        i = 0
        while time.monotonic() < stop:
            call(w * 10_000_000 + i)
            i += 1
        done[w] = i

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=0, help="also measure req/s")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    with ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-gw-")))
        data = builtin_dataset()
        folder = state / "models" / MODEL / "1"
        folder.mkdir(parents=True)
        model = SentimentClassifier().fit(data.texts, data.labels)
        (folder / "model.onnx").write_bytes(export_onnx(model).SerializeToString())

        redis_port = free_port()
        redis_proc = start_redis(redis_port, state)
        stack.callback(redis_proc.stop)
        redis_url = f"redis://127.0.0.1:{redis_port}/0"

        inf_grpc, inf_http = free_port(), free_port()
        stack.enter_context(
            process(
                "kloop-inference",
                {
                    "KLOOP_INFERENCE_GRPC_PORT": str(inf_grpc),
                    "KLOOP_INFERENCE_HTTP_PORT": str(inf_http),
                    "KLOOP_INFERENCE_MODEL_REPOSITORY": str(state / "models"),
                    "KLOOP_INFERENCE_MODELS": json.dumps({MODEL: ["production"]}),
                    "KLOOP_INFERENCE_LOG_LEVEL": "WARNING",
                },
                state,
            )
        )
        wait_http(inf_http, "/v2/health/ready")

        gw_grpc, gw_http = free_port(), free_port()
        gateway = stack.enter_context(
            process(
                "kloop-gateway",
                {
                    "KLOOP_GATEWAY_GRPC_PORT": str(gw_grpc),
                    "KLOOP_GATEWAY_HTTP_PORT": str(gw_http),
                    "KLOOP_GATEWAY_REDIS_URL": redis_url,
                    "KLOOP_GATEWAY_INFERENCE_ADDR": f"127.0.0.1:{inf_grpc}",
                    "KLOOP_GATEWAY_LOG_LEVEL": "WARNING",
                },
                state,
            )
        )
        wait_http(gw_http, "/readyz")

        _, token = ApiKeyStore(redis.Redis.from_url(redis_url)).create(
            ["predict"], name="bench", rate_per_second=1e9, burst=1_000_000_000
        )
        auth = {"Authorization": f"Bearer {token}"}

        inf_channel = grpc.insecure_channel(f"127.0.0.1:{inf_grpc}")
        inf_stub = oip_grpc.GRPCInferenceServiceStub(inf_channel)
        gw_channel = grpc.insecure_channel(f"127.0.0.1:{gw_grpc}")
        gw_stub = gateway_pb2_grpc.GatewayServiceStub(gw_channel)
        metadata = (("authorization", f"Bearer {token}"),)

        def text(i: int) -> str:
            return f"review {i}: the food was great but the service was slow"

        def inf_grpc_call(i: int) -> object:
            request = oip.ModelInferRequest(
                model_name=MODEL,
                model_version="production",
                inputs=[
                    oip.ModelInferRequest.InferInputTensor(
                        name="text",
                        datatype="BYTES",
                        shape=[1],
                        contents=oip.InferTensorContents(bytes_contents=[text(i).encode()]),
                    )
                ],
            )
            return inf_stub.ModelInfer(request, timeout=5)

        inf_http_client = HttpClient(inf_http, {})
        gw_http_client = HttpClient(gw_http, auth)

        def inf_http_body(i: int) -> bytes:
            tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [text(i)]}
            return json.dumps({"inputs": [tensor]}).encode()

        def gw_http_body(i: int) -> bytes:
            return json.dumps({"text": text(i)}).encode()

        def inf_http_call(i: int) -> object:
            return inf_http_client.post(f"/v2/models/{MODEL}/infer", inf_http_body(i))

        def gw_http_call(i: int) -> object:
            return gw_http_client.post(GATEWAY_PATH, gw_http_body(i))

        def gw_grpc_call(i: int) -> object:
            request = gateway_pb2.PredictRequest(model=MODEL, text=text(i))
            return gw_stub.Predict(request, metadata=metadata, timeout=5)

        n = args.requests
        hit = 10**12  # one text, asked again and again
        rows = [
            measure("inference gRPC (direct)", inf_grpc_call, n, None),
            measure("gateway gRPC, cache miss", lambda i: gw_grpc_call(i + 10**7), n, gateway.pid),
            measure("gateway gRPC, cache hit", lambda i: gw_grpc_call(hit), n, gateway.pid),
            measure("inference HTTP (direct)", inf_http_call, n, None),
            measure("gateway HTTP, cache miss", lambda i: gw_http_call(i + 10**8), n, gateway.pid),
            measure("gateway HTTP, cache hit", lambda i: gw_http_call(hit), n, gateway.pid),
        ]

        print(f"\ngateway benchmark: concurrency 1, {n} requests per row, loopback, 2 cores shared")
        print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'gateway CPU us/req':>19}")
        for row in rows:
            cpu = "" if row["cpu_us"] != row["cpu_us"] else f"{row['cpu_us']:.0f}"
            print(
                f"{row['label']:28} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} "
                f"{row['mean_ms']:8.3f} {cpu:>19}"
            )
        by = {str(row["label"]): float(row["p50_ms"]) for row in rows}
        print("\noverhead the gateway adds at p50 (gateway - inference, same protocol):")
        for proto in ("gRPC", "HTTP"):
            base = by[f"inference {proto} (direct)"]
            miss = by[f"gateway {proto}, cache miss"] - base
            hit_delta = by[f"gateway {proto}, cache hit"] - base
            print(f"  {proto:5} cache miss {miss:+.3f} ms   cache hit {hit_delta:+.3f} ms")

        if args.concurrency:
            c = args.concurrency
            print(f"\nthroughput at concurrency {c} ({args.seconds:g} s each, client threads):")
            for label, port, headers, body in (
                ("inference HTTP (direct)", inf_http, {}, inf_http_body),
                ("gateway HTTP, cache miss", gw_http, auth, lambda i: gw_http_body(i + 3 * 10**7)),
                ("gateway HTTP, cache hit", gw_http, auth, lambda i: gw_http_body(hit)),
            ):
                path = f"/v2/models/{MODEL}/infer" if port == inf_http else GATEWAY_PATH
                call = per_thread_client(port, headers, path, body)
                print(f"  {label:28} {throughput(call, c, args.seconds):8.0f} req/s")
        inf_channel.close()
        gw_channel.close()


if __name__ == "__main__":
    main()
