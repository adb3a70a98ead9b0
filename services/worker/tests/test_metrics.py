from __future__ import annotations

import redis
from prometheus_client import CollectorRegistry, generate_latest

from kloop_worker.metrics import QueueLengthCollector


def test_queue_length_is_read_at_scrape_time(r: redis.Redis) -> None:
    registry = CollectorRegistry()
    registry.register(QueueLengthCollector(["scoring", "training"], lambda q: int(r.llen(q))))
    r.rpush("scoring", "a", "b", "c")
    assert registry.get_sample_value("kloop_worker_queue_length", {"queue": "scoring"}) == 3
    assert registry.get_sample_value("kloop_worker_queue_length", {"queue": "training"}) == 0
    r.lpop("scoring")
    assert registry.get_sample_value("kloop_worker_queue_length", {"queue": "scoring"}) == 2


def test_a_scrape_while_redis_is_down_still_answers() -> None:
    down = redis.Redis(port=1, socket_connect_timeout=0.2)
    registry = CollectorRegistry()
    registry.register(QueueLengthCollector(["scoring"], lambda q: int(down.llen(q))))
    text = generate_latest(registry).decode()
    assert "kloop_worker_queue_length" in text and 'queue="scoring"' not in text
