"""Drift-monitor throughput benchmark: prints figures, asserts nothing.

Starts a private redis-server (appendonly, like the platform's), pre-fills the
prediction-event stream with gateway-shaped events (texts drawn from the builtin and the
shifted datasets, scored by a model fitted on the builtin one), then lets one
`kloop_drift_monitor.consumer.Consumer` drain it in this process, as the service does:
XREADGROUP batches, parse, de-duplicate against Redis sets, count into windows, commit
state + seen ids + XACK in one transaction. The reference comes from memory (the
registry's part is a one-off fetch per version).

Figures per case (events with text / without text):
- events/s by wall clock;
- events per CPU-second of this process (the "per core" figure: the consumer is one
  thread; Redis runs in its own process, whose CPU seconds are shown beside it).

On a shared machine compare figures as ratios within one run; the load average at the
start is printed.

    uv run --no-sync python benchmarks/bench_drift.py [--events 200000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from kloop_client.local import free_port, start_redis
from kloop_core.redis import create_redis
from kloop_drift_monitor.consumer import Consumer
from kloop_drift_monitor.reference import ReferenceCache
from kloop_drift_monitor.settings import DriftMonitorSettings
from kloop_model.classifier import SentimentClassifier, TrainingParams
from kloop_model.dataset import builtin_dataset, shifted_dataset
from kloop_model.profile import build_reference_profile
from kloop_model.text import tokenize

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class MemoryReferences:
    def __init__(self, profile: dict[str, object], document: dict[str, object]) -> None:
        self._documents = (profile, document)

    def reference_documents(
        self, model: str, version: str
    ) -> tuple[dict[str, object], dict[str, object]]:
        return self._documents


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def fill(client, stream: str, model: SentimentClassifier, n: int, *, include_text: bool) -> None:
    rng = random.Random(7)
    texts = builtin_dataset().texts + shifted_dataset().texts
    scores = dict(zip(texts, model.predict_proba(texts).tolist(), strict=True))
    now = datetime.now(UTC).isoformat()
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        text = rng.choice(texts)
        event = {
            "schema": "1",
            "id": uuid.UUID(int=rng.getrandbits(128)).hex,
            "time": now,
            "model": "sentiment",
            "version": str(1 + i % 2),  # two versions, as during a canary
            "alias": "production",
            "label": "positive",
            "score": repr(scores[text]),
            "latency_seconds": "0.001000",
            "cached": "0",
            "tokens": str(len(tokenize(text))),
            "chars": str(len(text)),
        }
        if include_text:
            event["text"] = text
        pipe.xadd(stream, event)
        if len(pipe) >= 5000:
            pipe.execute()
    pipe.execute()


def run_case(
    redis_url: str,
    redis_pid: int,
    references: MemoryReferences,
    model: SentimentClassifier,
    *,
    events: int,
    batch: int,
    include_text: bool,
) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = DriftMonitorSettings(
        redis_url=redis_url,
        events_stream=f"bench:{tag}:predictions",
        feedback_stream=f"bench:{tag}:feedback",
        key_prefix=f"bench:{tag}:drift",
        batch_size=batch,
        block_ms=10,
        window_events=1000,
        trigger_enabled=False,
        grpc_port=0,
        http_port=0,
    )
    client = create_redis(redis_url, socket_timeout=30)
    fill(client, settings.events_stream, model, events, include_text=include_text)
    consumer = Consumer(settings, client, ReferenceCache(references, retry_seconds=60), None)
    consumer.start()
    consumer.poll()  # warm-up batch: reference load, first state
    counted = consumer.stats.predictions
    redis_cpu, cpu, wall = cpu_seconds(redis_pid), time.process_time(), time.perf_counter()
    while consumer.poll():
        pass
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    redis_cpu = cpu_seconds(redis_pid) - redis_cpu
    counted = consumer.stats.predictions - counted
    label = "with text   " if include_text else "without text"
    print(
        f"{label} batch {batch:>5}: {counted:>7} events  {counted / wall:>9,.0f} events/s wall  "
        f"{counted / cpu:>9,.0f} events/CPU-s (monitor)  redis CPU {redis_cpu:5.1f} s "
        f"({counted / max(redis_cpu, 1e-9):,.0f} events/CPU-s)"
    )
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[1000, 5000])
    args = parser.parse_args()
    os.environ.setdefault("KLOOP_LOG_LEVEL", "WARNING")
    data = builtin_dataset()
    model = SentimentClassifier(TrainingParams(epochs=200)).fit(data.texts, data.labels)
    profile = build_reference_profile(model, data.texts, model.predict_proba(data.texts))
    references = MemoryReferences(profile, model.to_dict())
    print(
        f"python {sys.version.split()[0]}, load average {os.getloadavg()}, cores {os.cpu_count()}"
    )
    with tempfile.TemporaryDirectory(prefix="kloop-bench-drift-") as tmp:
        port = free_port()
        server = start_redis(port, Path(tmp))
        try:
            for batch in args.batch:
                for include_text in (False, True):
                    run_case(
                        f"redis://127.0.0.1:{port}/0",
                        server.pid,
                        references,
                        model,
                        events=args.events,
                        batch=batch,
                        include_text=include_text,
                    )
        finally:
            server.stop()
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
