"""The worker's Prometheus series (default registry, served on the worker's http_port)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kloop_core.metrics import LATENCY_BUCKETS

TASKS = Counter(
    "kloop_worker_tasks_total",
    "Celery tasks finished, by task name and outcome (success, retry, failure).",
    ["task", "outcome"],
)
TASK_DURATION = Histogram(
    "kloop_worker_task_duration_seconds",
    "Run time of one task invocation.",
    ["task"],
    buckets=LATENCY_BUCKETS,
)
JOB_ROWS = Counter(
    "kloop_worker_job_rows_total",
    "Batch scoring rows written, by model and outcome (scored, failed).",
    ["model", "outcome"],
)
CHUNKS = Counter(
    "kloop_worker_job_chunks_total",
    "Chunk writes, by outcome: written, duplicate (a redelivered chunk, nothing "
    "written), dropped (the job was cancelled or had failed).",
    ["outcome"],
)
PIPELINE_STEPS = Counter(
    "kloop_worker_pipeline_steps_total",
    "Retraining pipeline step invocations, by step and outcome (next, retry, finished).",
    ["step", "outcome"],
)
PIPELINES_FINISHED = Counter(
    "kloop_worker_pipelines_finished_total",
    "Retraining pipelines finished, by final state.",
    ["state"],
)
DOCUMENTS = Counter(
    "kloop_worker_documents_total",
    "Document ingestion requests finished, by action (ingest, delete) and outcome "
    "(succeeded, unchanged, failed, superseded).",
    ["action", "outcome"],
)
DOCUMENT_CHUNKS = Counter(
    "kloop_worker_document_chunks_total",
    "Chunks written to the vector store by ingestion.",
)


class QueueLengthCollector(Collector):
    """`kloop_worker_queue_length{queue}`: messages waiting in each queue's Redis list,
    read at scrape time (one LLEN per queue; a scrape while Redis is down reports none
    rather than failing the scrape)."""

    def __init__(self, queues: Sequence[str], length: Callable[[str], int]) -> None:
        self._queues = tuple(queues)
        self._length = length

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "kloop_worker_queue_length",
            "Messages waiting in the queue (its Redis list), not yet taken by a worker.",
            labels=["queue"],
        )
        for queue in self._queues:
            try:
                family.add_metric([queue], self._length(queue))
            except Exception:  # noqa: S112 - Redis down: no sample, the scrape still works
                continue
        yield family
