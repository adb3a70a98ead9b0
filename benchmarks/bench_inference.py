"""Inference service benchmark: prints figures, asserts nothing.

Starts `kloop-inference` as a subprocess serving the sentiment model from a local model
folder, then measures over loopback:

- single-row requests at concurrency 1, 8 and 64, over HTTP (wrk with a Lua POST script
  when `wrk` is installed, else an asyncio HTTP client) and gRPC (a grpc.aio client):
  req/s, p50, p99, and server CPU time per request (utime + stime of the server process
  from /proc/<pid>/stat over the measured window);
- 256-row requests: rows/s over HTTP (JSON) and gRPC (raw tensors);
- in the same run, for scale: a bare ASGI app on uvicorn and a grpc.aio echo server (the
  cost of the transports alone).

On a shared machine compare figures only as ratios within one run.

    uv run --no-sync python benchmarks/bench_inference.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import numpy as np

from kloop.oip.v2 import grpc_predict_v2_pb2 as pb
from kloop_inference.tensors import encode_raw
from kloop_model import SentimentClassifier
from kloop_model.dataset import builtin_dataset
from kloop_model.onnx_export import export_onnx

MODEL = "sentiment"
BATCH_ROWS = 256
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Case:
    label: str
    concurrency: int
    body: bytes  # HTTP body or serialized gRPC request
    rows: int = 1


@dataclass(frozen=True)
class Result:
    case: Case
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_seconds: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / max(self.requests, 1) * 1e6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


@contextmanager
def process(
    command: list[str], env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


# --- request bodies --------------------------------------------------------------------


def texts(n: int) -> list[str]:
    pool = builtin_dataset().texts
    return [pool[i % len(pool)] for i in range(n)]


def http_body(rows: int) -> bytes:
    tensor = {"name": "text", "datatype": "BYTES", "shape": [rows], "data": texts(rows)}
    return json.dumps({"inputs": [tensor]}).encode()


def grpc_request(rows: int) -> bytes:
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="text", datatype="BYTES", shape=[rows])
    request.raw_input_contents.append(encode_raw(np.array(texts(rows), dtype=object), "BYTES"))
    return request.SerializeToString()


# --- load generators -------------------------------------------------------------------


def _milliseconds(value: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    assert match is not None, value
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def wrk_load(url: str, case: Case, seconds: float, pid: int) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [==[{case.body.decode()}]==]\n"
        )
        script.flush()

        def wrk(duration: int) -> str:
            command = [
                "wrk", f"-t{min(case.concurrency, 2)}", f"-c{case.concurrency}",
                f"-d{duration}s", "--latency", "-s", script.name, url,
            ]  # fmt: skip
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout

        wrk(1)  # warm-up
        before = cpu_seconds(pid)
        output = wrk(max(1, round(seconds)))
        used = cpu_seconds(pid) - before
    if "Non-2xx" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    requests = re.search(r"(\d+) requests in", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    assert requests is not None and rate is not None, output
    latency = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)$", output, re.MULTILINE))
    count = int(requests.group(1))
    return Result(
        case, count, count / float(rate.group(1)),
        _milliseconds(latency["50"]), _milliseconds(latency["99"]), used,
    )  # fmt: skip


async def _closed_loop(
    call: Callable[[], Awaitable[None]], concurrency: int, seconds: float
) -> tuple[list[float], float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def _measure(
    case: Case, call: Callable[[], Awaitable[None]], seconds: float, pid: int
) -> Result:
    await _closed_loop(call, case.concurrency, 1.0)  # warm-up
    before = cpu_seconds(pid)
    latencies, elapsed = await _closed_loop(call, case.concurrency, seconds)
    used = cpu_seconds(pid) - before
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    median = statistics.median(ordered)
    return Result(case, len(ordered), elapsed, median * 1e3, p99 * 1e3, used)


def httpx_load(url: str, case: Case, seconds: float, pid: int) -> Result:
    async def run() -> Result:
        limits = httpx.Limits(max_connections=case.concurrency)
        headers = {"content-type": "application/json"}
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:

            async def call() -> None:
                (await client.post(url, content=case.body, headers=headers)).raise_for_status()

            return await _measure(case, call, seconds, pid)

    return asyncio.run(run())


def grpc_load(target: str, method: str, case: Case, seconds: float, pid: int) -> Result:
    async def run() -> Result:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = channel.unary_unary(method)

            async def call() -> None:
                await stub(case.body, timeout=30)

            return await _measure(case, call, seconds, pid)

    return asyncio.run(run())


# --- servers ---------------------------------------------------------------------------

FLOOR_SERVERS = textwrap.dedent(
    """
    import asyncio, sys, grpc, uvicorn, uvloop

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    async def echo(request, context):
        return request

    async def main(kind, port):
        if kind == "asgi":
            config = uvicorn.Config(app, port=port, http="httptools", lifespan="off",
                                    access_log=False, log_config=None, proxy_headers=False,
                                    server_header=False, date_header=False)
            await uvicorn.Server(config).serve()
        else:
            server = grpc.aio.server()
            handler = grpc.unary_unary_rpc_method_handler(echo)
            server.add_generic_rpc_handlers(
                [grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler})])
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            await server.wait_for_termination()

    uvloop.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def table(results: list[Result]) -> str:
    lines = [
        f"{'case':36s} {'conc':>4s} {'req/s':>8s} {'rows/s':>8s} "
        f"{'p50 ms':>7s} {'p99 ms':>7s} {'CPU us/req':>10s}",
        "-" * 86,
    ]
    for r in results:
        lines.append(
            f"{r.case.label:36s} {r.case.concurrency:4d} {r.rps:8.0f} {r.rps * r.case.rows:8.0f} "
            f"{r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.cpu_us_per_request:10.0f}"
        )
    return "\n".join(lines)


def write_model_folder(root: Path) -> None:
    data = builtin_dataset()
    model = SentimentClassifier().fit(data.texts, data.labels)
    folder = root / MODEL / "1"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(export_onnx(model).SerializeToString())


def bench_kloop(
    seconds: float, http_load: Callable[..., Result], tool: str
) -> tuple[list[Result], str]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as folder:
        write_model_folder(Path(folder))
        http_port, grpc_port = free_port(), free_port()
        env = {
            "KLOOP_INFERENCE_MODEL_REPOSITORY": folder,
            "KLOOP_INFERENCE_MODELS": json.dumps({MODEL: ["production"]}),
            "KLOOP_INFERENCE_HTTP_PORT": str(http_port),
            "KLOOP_INFERENCE_GRPC_PORT": str(grpc_port),
            "KLOOP_INFERENCE_LOG_LEVEL": "WARNING",
        }
        with process([sys.executable, "-m", "kloop_inference.main"], env) as server:
            wait_http(f"http://127.0.0.1:{http_port}/v2/health/ready")
            url = f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/infer"
            target, method = f"127.0.0.1:{grpc_port}", "/inference.GRPCInferenceService/ModelInfer"
            for concurrency in (1, 8, 64):
                case = Case(f"kloop HTTP 1 row ({tool})", concurrency, http_body(1))
                results.append(http_load(url, case, seconds, server.pid))
            for concurrency in (1, 8, 64):
                case = Case("kloop gRPC 1 row (grpc.aio client)", concurrency, grpc_request(1))
                results.append(grpc_load(target, method, case, seconds, server.pid))
            case = Case(
                f"kloop HTTP {BATCH_ROWS} rows JSON ({tool})", 8, http_body(BATCH_ROWS), BATCH_ROWS
            )
            results.append(http_load(url, case, seconds, server.pid))
            case = Case(
                f"kloop gRPC {BATCH_ROWS} rows raw", 8, grpc_request(BATCH_ROWS), BATCH_ROWS
            )
            results.append(grpc_load(target, method, case, seconds, server.pid))
            metrics = httpx.get(f"http://127.0.0.1:{http_port}/metrics").text
    return results, metrics


def bench_floors(seconds: float, http_load: Callable[..., Result], tool: str) -> list[Result]:
    results: list[Result] = []
    with tempfile.NamedTemporaryFile("w", suffix=".py") as script:
        script.write(FLOOR_SERVERS)
        script.flush()
        port = free_port()
        with process([sys.executable, script.name, "asgi", str(port)]) as floor:
            wait_http(f"http://127.0.0.1:{port}/")
            case = Case(f"floor: bare ASGI app, uvicorn ({tool})", 8, http_body(1))
            results.append(http_load(f"http://127.0.0.1:{port}/", case, seconds, floor.pid))
        port = free_port()
        with process([sys.executable, script.name, "grpc", str(port)]) as floor:
            time.sleep(2)
            case = Case("floor: grpc.aio echo server", 8, grpc_request(1))
            results.append(
                grpc_load(f"127.0.0.1:{port}", "/bench.Echo/Echo", case, seconds, floor.pid)
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per case")
    parser.add_argument("--no-floors", action="store_true", help="skip the bare transport servers")
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None
    http_load = wrk_load if use_wrk else httpx_load
    tool = "wrk" if use_wrk else "httpx"

    results, metrics = bench_kloop(args.seconds, http_load, tool)
    if not args.no_floors:
        results += bench_floors(args.seconds, http_load, tool)

    print(f"\nInference benchmark: {os.cpu_count()} CPUs, {args.seconds:g} s per case, loopback\n")
    print(table(results))
    totals = dict(re.findall(r"kloop_inference_batch_size_(sum|count)\{[^}]*\} (\S+)", metrics))
    if float(totals.get("count", 0)):
        mean = float(totals["sum"]) / float(totals["count"])
        print(f"\nmean rows per model execution over the kloop cases: {mean:.1f}")


if __name__ == "__main__":
    main()
