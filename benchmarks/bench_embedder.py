"""Text-embedding benchmark: prints figures, asserts nothing.

Starts `kloop-inference` as a subprocess serving the real all-MiniLM-L6-v2 export
(`make embedder` -> build/embedder) from a local model folder, then measures embedding
throughput in texts/s over loopback, HTTP (JSON) and gRPC (raw tensors), with requests
of 1, 8 and 32 texts from a few concurrent clients (dynamic batching joins them).
Skipped, with a message, when build/embedder is absent.

Texts are real-length sentences (10-30 words); throughput depends on their length.
On a shared machine compare figures only as ratios within one run.

    uv run --no-sync python benchmarks/bench_embedder.py [--seconds 4] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop_inference.tensors import encode_raw

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "embedder"
MODEL = "embedder"
BATCH_SIZES = (1, 8, 32)
PROSE = (
    "the customer asked whether the refund policy covers items bought on sale and "
    "returned after thirty days without the original receipt or packaging while the "
    "support team explained how store credit exchanges and warranty repairs are handled"
)


def sentences(n: int) -> list[str]:
    words = PROSE.split(" ")
    return [" ".join(words[i % 7 : i % 7 + 10 + (i * 7) % 21]) for i in range(n)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


@contextmanager
def server(folder: Path, http_port: int, grpc_port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "KLOOP_INFERENCE_MODEL_REPOSITORY": str(folder),
        "KLOOP_INFERENCE_MODELS": json.dumps({MODEL: ["production"]}),
        "KLOOP_INFERENCE_HTTP_PORT": str(http_port),
        "KLOOP_INFERENCE_GRPC_PORT": str(grpc_port),
        "KLOOP_INFERENCE_LOG_LEVEL": "WARNING",
        "KLOOP_INFERENCE_MAX_QUEUE_DELAY_MS": "2",
    }
    command = [sys.executable, "-m", "kloop_inference.main"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def closed_loop(
    call: Callable[[], Awaitable[None]], concurrency: int, seconds: float
) -> tuple[int, list[float]]:
    """Requests answered and their latencies, `concurrency` clients back to back."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(latencies), latencies


async def bench_http(url: str, rows: int, concurrency: int, seconds: float) -> tuple[float, float]:
    body = json.dumps(
        {
            "inputs": [
                {"name": "text", "datatype": "BYTES", "shape": [rows], "data": sentences(rows)}
            ]
        }
    )
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def call() -> None:
            answer = await http.post(f"/v2/models/{MODEL}/infer", content=body)
            answer.raise_for_status()

        await call()  # connect and warm
        started = time.perf_counter()
        count, latencies = await closed_loop(call, concurrency, seconds)
        elapsed = time.perf_counter() - started
    return count * rows / elapsed, statistics.median(latencies) * 1000


async def bench_grpc(
    target: str, rows: int, concurrency: int, seconds: float
) -> tuple[float, float]:
    import numpy as np

    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="text", datatype="BYTES", shape=[rows])
    request.raw_input_contents.append(encode_raw(np.array(sentences(rows), dtype=object), "BYTES"))
    async with grpc.aio.insecure_channel(target) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

        async def call() -> None:
            await infer(request, timeout=60)

        await call()
        started = time.perf_counter()
        count, latencies = await closed_loop(call, concurrency, seconds)
        elapsed = time.perf_counter() - started
    return count * rows / elapsed, statistics.median(latencies) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measured case")
    parser.add_argument("--concurrency", type=int, default=4, help="concurrent clients")
    args = parser.parse_args()
    if not all((BUILD / name).is_file() for name in ("model.onnx", "tokenizer.json")):
        print(f"bench_embedder: skipped, {BUILD} is absent (run `make embedder` first)")
        return 0
    http_port, grpc_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as folder:
        version = Path(folder) / MODEL / "1"
        version.mkdir(parents=True)
        for name in ("model.onnx", "tokenizer.json"):
            (version / name).symlink_to(BUILD / name)
        started = time.perf_counter()
        with server(Path(folder), http_port, grpc_port):
            wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready")
            print(
                f"all-MiniLM-L6-v2 served (load + warm-up {time.perf_counter() - started:.1f} s), "
                f"{args.concurrency} clients, {args.seconds:g} s per case, "
                f"{os.cpu_count()} cores"
            )
            print(f"{'transport':<10}{'texts/request':>14}{'texts/s':>10}{'p50 ms':>10}")
            for rows in BATCH_SIZES:
                for transport, run in (
                    (
                        "HTTP",
                        bench_http(
                            f"http://127.0.0.1:{http_port}", rows, args.concurrency, args.seconds
                        ),
                    ),
                    (
                        "gRPC",
                        bench_grpc(f"127.0.0.1:{grpc_port}", rows, args.concurrency, args.seconds),
                    ),
                ):
                    rate, p50 = asyncio.run(run)
                    print(f"{transport:<10}{rows:>14}{rate:>10.1f}{p50:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
