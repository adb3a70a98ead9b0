"""Benchmark the vector store's backends: search p50/p99 (dense, and hybrid = dense +
BM25 fused with RRF) and upsert rate, at 10k and 100k chunks x 384 dims.

Run: ``uv run --no-sync python benchmarks/bench_vectorstore.py [--sizes 10000,100000]``.
Drives the service layer in-process (validation, BM25 encoding, fusion included; no
gRPC, no embedding: vectors are given). Backends: the embedded default (qdrant-edge,
measured exact before its HNSW index is built and again after) and qdrant-client's
local mode (the in-process stand-in for a Qdrant server; few queries at 100k, it is
slow). Prints figures only, no assertions.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kloop_core.logging import configure_logging
from kloop_core.resilience import Deadline
from kloop_vectorstore.backends.embedded import EmbeddedBackend
from kloop_vectorstore.backends.qdrant_server import QdrantServerBackend
from kloop_vectorstore.service import DocumentIn, VectorStore
from kloop_vectorstore.settings import VectorStoreSettings
from kloop_vectorstore.types import DenseQuery, Distance

DIM = 384
BATCH = 500
K = 10


class NoEmbedder:
    def embed(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the benchmark gives vectors")


def corpus(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vocabulary = np.array([f"w{i}" for i in range(20_000)])
    ranks = np.minimum(rng.zipf(1.3, size=(n, 40)) - 1, len(vocabulary) - 1)
    texts = [" ".join(vocabulary[row]) for row in ranks]
    return vectors, texts


def timed(action: Callable[[], object], calls: int) -> str:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    p50, p99 = np.percentile(samples, [50, 99]) * 1000
    return f"p50 {p50:8.2f} ms  p99 {p99:8.2f} ms  ({calls} queries)"


def run(kind: str, n: int, queries: int, root: Path) -> None:
    rng = np.random.default_rng(n)
    vectors, texts = corpus(n, rng)
    settings = VectorStoreSettings(grpc_port=0, http_port=0, log_level="WARNING")
    if kind == "embedded":
        backend: Any = EmbeddedBackend(root / f"edge-{n}", index_threshold=0)
    else:
        backend = QdrantServerBackend(location=str(root / f"local-{n}"))
    store = VectorStore(settings, backend, NoEmbedder())
    store.create_collection("bench", DIM, Distance.COSINE, "")
    started = time.perf_counter()
    for start in range(0, n, BATCH):
        docs = [
            DocumentIn(id=f"doc-{i}", text=texts[i], metadata={"i": i}, vector=vectors[i].tolist())
            for i in range(start, min(n, start + BATCH))
        ]
        store.upsert("bench", docs, Deadline(600))
    rate = n / (time.perf_counter() - started)
    print(
        f"{kind:9s} {n:>7,} x {DIM}: upsert {rate:8.0f} docs/s (batches of {BATCH}, vectors given)"
    )

    qv = rng.standard_normal((queries, DIM)).astype(np.float32)
    qt = [" ".join(texts[int(rng.integers(n))].split()[:4]) for _ in range(queries)]
    state = {"i": 0}

    def dense() -> None:
        i = state["i"] = (state["i"] + 1) % queries
        store.search(
            "bench",
            text=None,
            vector=qv[i].tolist(),
            k=K,
            flt=None,
            mode=None,
            deadline=Deadline(60),
        )

    def hybrid() -> None:
        i = state["i"] = (state["i"] + 1) % queries
        store._hybrid("bench", DenseQuery(qv[i].tolist()), qt[i], K, None)

    label = "exact" if kind == "embedded" else "local"
    print(f"{'':9s} dense  k={K} {label:8s} {timed(dense, queries)}")
    print(f"{'':9s} hybrid k={K} {label:8s} {timed(hybrid, queries)}")
    if kind == "embedded":
        started = time.perf_counter()
        backend.build_index("bench")
        built = time.perf_counter() - started
        print(f"{'':9s} HNSW index built out of process in {built:.1f} s")
        print(f"{'':9s} dense  k={K} indexed  {timed(dense, queries)}")
        print(f"{'':9s} hybrid k={K} indexed  {timed(hybrid, queries)}")
    backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--slow-queries", type=int, default=10, help="qdrant-client at 100k")
    args = parser.parse_args()
    configure_logging("bench", "WARNING", "console")
    print(f"python {platform.python_version()}, {os.cpu_count()} cpus, {platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            run("embedded", n, args.queries, Path(tmp))
            run("qdrant", n, args.slow_queries if n > 20_000 else args.queries // 3, Path(tmp))


if __name__ == "__main__":
    main()
