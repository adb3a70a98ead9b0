"""What tasks need at run time (settings, Redis stores, service clients), created once
per worker process on first use: after the fork, so prefork children never share a
gRPC channel or Redis connection with their parent."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from celery import Celery

from kloop_core.redis import create_redis
from kloop_worker.celery_app import settings_of
from kloop_worker.clients import RegistryClient, TrainingClient
from kloop_worker.inference import InferenceClient
from kloop_worker.jobs import JobStore
from kloop_worker.pipelines import PipelineStore
from kloop_worker.retrain import PipelineEnv
from kloop_worker.settings import WorkerSettings

_runtimes: dict[tuple[int, int], Runtime] = {}
_lock = threading.Lock()


@dataclass
class Runtime:
    settings: WorkerSettings
    jobs: JobStore
    pipelines: PipelineStore
    env: PipelineEnv

    @classmethod
    def create(cls, settings: WorkerSettings) -> Runtime:
        # Streams are read in pages of 1000 entries: a longer timeout than a command's.
        client = create_redis(settings.redis_url, socket_timeout=10.0)
        pipelines = PipelineStore(
            client,
            namespace=settings.namespace,
            lock_ttl_seconds=settings.pipeline_lock_ttl_seconds,
            record_ttl_seconds=settings.pipeline_ttl_seconds,
            audit_maxlen=settings.audit_maxlen,
        )
        env = PipelineEnv(
            settings=settings,
            store=pipelines,
            registry=RegistryClient(
                settings.registry_addr, timeout=settings.rpc_timeout_seconds, actor=settings.actor
            ),
            training=TrainingClient(settings.training_addr, timeout=settings.rpc_timeout_seconds),
            inference=InferenceClient(
                settings.inference_addr, timeout=settings.inference_timeout_seconds
            ),
            redis=client,
        )
        return cls(settings, JobStore(client), pipelines, env)


def runtime(app: Celery) -> Runtime:
    key = (id(app), os.getpid())
    found = _runtimes.get(key)
    if found is None:
        with _lock:
            found = _runtimes.get(key)
            if found is None:
                found = _runtimes[key] = Runtime.create(settings_of(app))
    return found
