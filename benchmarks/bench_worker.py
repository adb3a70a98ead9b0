"""Worker benchmark: batch scoring rows/s for a 100k-text job; prints figures, asserts
nothing.

Starts its own Redis, `kloop-inference` (the sentiment model from a model folder) and
`kloop-worker` processes (threads pool), creates each job with the gateway's own job
code (as POST /v1/jobs does) and times it from creation to "succeeded" (planning,
chunking, one ModelInfer per chunk, exactly-once result writes):

- one job of 100k texts per row of the table: chunk size x worker concurrency, inline
  texts and a dataset file (.txt, read by the worker);
- for scale, inference alone: the same texts in chunk-sized ModelInfer calls, one
  caller, no Redis;
- redelivery with the default settings: a worker takes a chunk and hangs on an
  inference that never answers, a second worker waits beside it; kill -9 the first and
  time until the job is done (the chunk handed out again and scored).

On a shared machine compare figures only as ratios within one run.

    uv run --no-sync python benchmarks/bench_worker.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from pydantic import SecretStr

from kloop_client.local import free_port, http_ok, start_process, start_redis, stop_group
from kloop_gateway.api.routes.jobs import JobCreate, JobQueue, JobSettings
from kloop_gateway.settings import GatewaySettings
from kloop_model import SentimentClassifier
from kloop_model.dataset import builtin_dataset, generate_texts
from kloop_model.onnx_export import export_onnx
from kloop_worker.celery_app import create_celery
from kloop_worker.inference import InferenceClient
from kloop_worker.main import node_name
from kloop_worker.settings import WorkerSettings

MODEL = "sentiment"


def bench_texts(rows: int) -> list[str]:
    # Deterministic, realistic mix; texts that tokenize to nothing are kept (the
    # model scores them), blank ones replaced (the gateway would refuse them).
    return [t if t.strip() else "ok" for t in generate_texts(rows, seed=7)]


@contextmanager
def worker(
    redis_url: str, inference_addr: str, state: Path, name: str = "", **settings: object
) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "KLOOP_WORKER_REDIS_URL": redis_url,
        "KLOOP_WORKER_INFERENCE_ADDR": inference_addr,
        "KLOOP_WORKER_HTTP_PORT": "0",
        "KLOOP_WORKER_LOG_LEVEL": "WARNING",
        "KLOOP_WORKER_JOB_DATASET_ROOTS": json.dumps([str(state)]),
        **{f"KLOOP_WORKER_{k.upper()}": str(v) for k, v in settings.items()},
    }
    with (state / "worker.log").open("ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kloop_worker.main",
                "worker",
                f"--hostname={name or node_name()}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    control = create_celery(WorkerSettings(redis_url=SecretStr(redis_url)))
    try:
        # Started (imports, connections) before the clock runs.
        while not control.control.ping(destination=[name or node_name()], timeout=0.5):
            if process.poll() is not None:
                raise RuntimeError(f"the worker exited; see {state / 'worker.log'}")
        yield process
    finally:
        stop_group(process.pid, timeout=10)
        control.close()


def run_job(
    queue: JobQueue, loop: asyncio.AbstractEventLoop, client: redis.Redis, body: JobCreate
) -> tuple[float, dict[str, str]]:
    """Seconds from creating the job (as POST /v1/jobs) to its success, and its record."""
    started = time.perf_counter()
    job_id = loop.run_until_complete(queue.create(body, "bench"))
    while True:
        record: dict[str, str] = client.hgetall(f"kloop:jobs:{job_id}")  # type: ignore[assignment]
        if record.get("status") not in ("queued", "running"):
            return time.perf_counter() - started, record
        time.sleep(0.02)


def measure_redelivery(
    queue: JobQueue,
    loop: asyncio.AbstractEventLoop,
    client: redis.Redis,
    redis_url: str,
    inference_addr: str,
    state: Path,
) -> tuple[float, float]:
    """(seconds the dead worker held the chunk before the kill, seconds from the kill
    until the job was done)."""
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)
        hanging = f"127.0.0.1:{blackhole.getsockname()[1]}"
        with worker(redis_url, hanging, state, "hangs@bench", concurrency=1) as first:
            job_id = loop.run_until_complete(
                queue.create(JobCreate(model=MODEL, texts=["great", "awful"]), "bench")
            )
            # Planned and the chunk taken by the first worker (it hangs on inference).
            while client.hget(f"kloop:jobs:{job_id}", "status") != "running":
                time.sleep(0.01)
            taken = time.perf_counter()
            time.sleep(0.5)
            with worker(redis_url, inference_addr, state, "spare@bench", concurrency=1):
                os.killpg(first.pid, signal.SIGKILL)
                killed = time.perf_counter()
                while client.hget(f"kloop:jobs:{job_id}", "status") != "succeeded":
                    time.sleep(0.01)
                return killed - taken, time.perf_counter() - killed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    texts = bench_texts(args.rows)

    with tempfile.TemporaryDirectory(prefix="kloop-bench-worker-") as folder:
        state = Path(folder)
        data = builtin_dataset()
        onnx = export_onnx(SentimentClassifier().fit(data.texts, data.labels))
        (state / "models" / MODEL / "1").mkdir(parents=True)
        (state / "models" / MODEL / "1" / "model.onnx").write_bytes(onnx.SerializeToString())
        dataset = state / "texts.txt"
        dataset.write_text("\n".join(t.replace("\n", " ").replace("\r", " ") for t in texts))

        redis_port, grpc_port, http_port = free_port(), free_port(), free_port()
        redis_process = start_redis(redis_port, state)
        inference = start_process(
            "inference",
            [sys.executable, "-m", "kloop_inference.main"],
            state_dir=state,
            env={
                "KLOOP_INFERENCE_MODEL_REPOSITORY": str(state / "models"),
                "KLOOP_INFERENCE_MODELS": json.dumps({MODEL: ["production"]}),
                "KLOOP_INFERENCE_GRPC_PORT": str(grpc_port),
                "KLOOP_INFERENCE_HTTP_PORT": str(http_port),
                "KLOOP_INFERENCE_MAX_BATCH_SIZE": "8192",
                "KLOOP_INFERENCE_LOG_LEVEL": "WARNING",
            },
            ready=lambda: http_ok(f"http://127.0.0.1:{http_port}/v2/health/ready"),
        )
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        inference_addr = f"127.0.0.1:{grpc_port}"
        loop = asyncio.new_event_loop()
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        queue = JobQueue(
            GatewaySettings(redis_url=SecretStr(redis_url), grpc_port=0, http_port=0),
            JobSettings(),
        )
        try:
            print(f"batch scoring, {args.rows} texts per job, {os.cpu_count()} CPUs")
            print(f"{'source':<8} {'chunk':>6} {'threads':>7} {'seconds':>8} {'rows/s':>9}")
            cases = [
                ("inline", 1000, 1),
                ("inline", 1000, 2),
                ("inline", 1000, 4),
                ("inline", 250, 2),
                ("inline", 4000, 2),
                ("file", 1000, 2),
            ]
            for source, chunk, threads in cases:
                with worker(
                    redis_url, inference_addr, state, job_chunk_size=chunk, concurrency=threads
                ):
                    body = (
                        JobCreate(model=MODEL, texts=texts)
                        if source == "inline"
                        else JobCreate(model=MODEL, dataset_uri=str(dataset))
                    )
                    seconds, record = run_job(queue, loop, client, body)
                scored = int(record.get("scored") or 0)
                assert record["status"] == "succeeded", record
                print(
                    f"{source:<8} {chunk:>6} {threads:>7} {seconds:>8.2f} {scored / seconds:>9,.0f}"
                )
            scorer = InferenceClient(inference_addr, timeout=60)
            scorer.score(MODEL, "production", texts[:10])  # connect and read metadata
            started = time.perf_counter()
            for start in range(0, len(texts), 1000):
                scorer.score(MODEL, "production", texts[start : start + 1000])
            seconds = time.perf_counter() - started
            scorer.close()
            print(
                f"{'inference alone':<24} {seconds:>8.2f} {len(texts) / seconds:>9,.0f}"
                "  (chunks of 1000, one caller)"
            )
            held, after = measure_redelivery(queue, loop, client, redis_url, inference_addr, state)
            print(
                "redelivery, default settings (visibility timeout 10 s, sweep every 1 s): "
                f"chunk held {held:.1f} s by the worker killed with -9, job done {after:.1f} s "
                f"after the kill ({held + after:.1f} s after the chunk was taken)"
            )
        finally:
            loop.run_until_complete(queue.close())
            loop.close()
            client.close()
            inference.stop()
            redis_process.stop()


if __name__ == "__main__":
    main()
