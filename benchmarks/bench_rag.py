"""RAG benchmark: prints figures, asserts nothing.

Starts redis-server, the in-memory vector store stand-in (real gRPC, kloop's own docs
as the corpus, keyword scoring) and a local Messages-API server in this process, then
`kloop-rag` as a subprocess on loopback, and sends one request at a time (concurrency
1) to POST /v1/ask, reporting p50 / p99 latency for:

- extractive mode, answer cache off: the whole path without the LLM call (auth off,
  retrieval over gRPC, extractive answer, JSON) -- the service's own overhead;
- generative mode, answer-cache hit: retrieval + Redis lookup, no LLM call.

    uv run --no-sync python benchmarks/bench_rag.py [--requests 500]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from kloop_client.local import free_port, start_redis
from kloop_rag.eval.run import chunk_markdown, find_docs, load_golden
from kloop_rag.testing.fake_anthropic import FakeAnthropic
from kloop_rag.testing.vectorstore import InMemoryVectorStore, StoredChunk, VectorStoreServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COLLECTION = "kloop-docs"
API_KEY = "sk-ant-bench"


def corpus() -> list[StoredChunk]:
    chunks = []
    for path in find_docs(ROOT):
        source = path.relative_to(ROOT).as_posix()
        for index, text in enumerate(chunk_markdown(path.read_text(encoding="utf-8"))):
            meta = {"source": source, "document_id": source, "chunk": index}
            chunks.append(StoredChunk(f"{source}#{index}", text, meta))
    return chunks


def wait_http(port: int, path: str, timeout: float = 30.0) -> None:
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
def rag_process(env: dict[str, str], logs: Path, name: str) -> Iterator[int]:
    port = free_port()
    full = {
        **os.environ,
        "KLOOP_RAG_HTTP_PORT": str(port),
        "KLOOP_RAG_GRPC_PORT": str(free_port()),
        "KLOOP_RAG_AUTH_ENABLED": "false",
        "KLOOP_RAG_LOG_LEVEL": "WARNING",
        **env,
    }
    log = (logs / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "kloop-rag")], env=full, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_http(port, "/readyz")
        yield port
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def measure(port: int, bodies: list[bytes], requests: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    for body in bodies:  # warm-up (and, for the cache scenario, the misses)
        conn.request("POST", "/v1/ask", body, headers)
        response = conn.getresponse()
        payload = response.read()
        assert response.status == 200, payload
    latencies = []
    last = b""
    for i in range(requests):
        body = bodies[i % len(bodies)]
        started = time.perf_counter()
        conn.request("POST", "/v1/ask", body, headers)
        response = conn.getresponse()
        last = response.read()
        latencies.append(time.perf_counter() - started)
        assert response.status == 200, last
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "cached": json.loads(last)["cached"],
        "mode": json.loads(last)["mode"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    questions = [item.question for item in load_golden()]
    bodies = [
        json.dumps({"question": q, "collection": COLLECTION, "k": 5}).encode() for q in questions
    ]
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        redis_port = free_port()
        redis_proc = start_redis(redis_port, logs / "redis")
        stack.callback(redis_proc.stop)
        store = VectorStoreServer(InMemoryVectorStore({COLLECTION: corpus()}))
        stack.callback(store.stop)
        fake = FakeAnthropic(api_key=API_KEY).start()
        stack.callback(fake.stop)
        common = {
            "KLOOP_RAG_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "KLOOP_RAG_VECTORSTORE_ADDR": store.addr,
        }
        print(
            f"corpus: {len(store.store.collections[COLLECTION])} chunks of kloop's docs; "
            f"{len(bodies)} questions; {args.requests} requests per scenario, concurrency 1"
        )
        with rag_process(
            {**common, "KLOOP_RAG_MODE": "extractive", "KLOOP_RAG_CACHE_ENABLED": "false"},
            logs,
            "extractive",
        ) as port:
            result = measure(port, bodies, args.requests)
        print(
            f"POST /v1/ask extractive, no cache (no LLM call): "
            f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
        )
        generative = {
            **common,
            "KLOOP_RAG_ANTHROPIC_API_KEY": API_KEY,
            "KLOOP_RAG_ANTHROPIC_BASE_URL": fake.url,
        }
        with rag_process(generative, logs, "generative") as port:
            result = measure(port, bodies, args.requests)
        assert result["cached"] and result["mode"] == "generative"
        print(
            f"POST /v1/ask generative, answer-cache hit:       "
            f"p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
        )
        print(f"LLM calls made (cache misses during warm-up): {len(fake.requests)}")


if __name__ == "__main__":
    main()
