"""Pipeline records on a real Redis: one pipeline per model (concurrent requests are
de-duplicated), compare-and-set steps, the lock's release, the audit log."""

from __future__ import annotations

import threading
import uuid

import pytest
import redis

from kloop_worker.pipelines import PipelineStore, State

from .conftest import RedisServer, Workers, wait_until


@pytest.fixture
def store(redis_server: RedisServer, r: redis.Redis) -> PipelineStore:
    return PipelineStore(
        redis.Redis.from_url(redis_server.url),
        namespace="kloop:worker",
        lock_ttl_seconds=600,
        record_ttl_seconds=3600,
        audit_maxlen=1000,
    )


def test_concurrent_requests_for_one_model_start_one_pipeline(store: PipelineStore) -> None:
    results = []
    barrier = threading.Barrier(8)

    def request(i: int) -> None:
        barrier.wait()
        results.append(store.create(f"req-{i}", "m", trigger="drift", evidence={"i": i}))

    threads = [threading.Thread(target=request, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [c for c in results if c.created]
    assert len(winners) == 1
    assert {c.pipeline_id for c in results} == {winners[0].pipeline_id}
    assert store.running_for("m") == winners[0].pipeline_id
    # Another model is independent.
    assert store.create("other", "m2", trigger="drift", evidence={}).created
    history = store.history("m")
    assert [e["event"] for e in history].count("started") == 1
    assert [e["event"] for e in history].count("deduplicated") == 7


def test_a_redelivered_request_is_recognised(store: PipelineStore) -> None:
    first = store.create("p1", "m", trigger="manual", evidence={})
    again = store.create("p1", "m", trigger="manual", evidence={})
    assert first.created and not again.created and again.pipeline_id == "p1"


def test_steps_advance_once_per_seq_and_finishing_releases_the_model(
    store: PipelineStore, r: redis.Redis
) -> None:
    store.create("p1", "m", trigger="manual", evidence={"why": "test"})
    p = store.get("p1")
    assert p is not None and (p.state, p.step, p.seq) == (State.RUNNING, "prepare_data", 1)
    assert p.evidence == {"why": "test"}
    changes = {"step": "train", "context": {"rows": 50}, "attempts": 0}
    assert store.advance(p, due_at=123.0, finished=False, changes=changes) == 2
    # The same (now stale) step outcome again: refused.
    assert store.advance(p, due_at=123.0, finished=False, changes=changes) == 0
    p2 = store.get("p1")
    assert p2 is not None and (p2.step, p2.seq, p2.context) == ("train", 2, {"rows": 50})
    assert store.overdue(older_than=124.0) == ["p1"]

    done = {"state": "succeeded", "outcome": "v2 promoted", "context": {"version": "2"}}
    assert store.advance(p2, due_at=0, finished=True, changes=done) == 3
    final = store.get("p1")
    assert final is not None and final.state is State.SUCCEEDED and not final.running
    assert store.running_for("m") is None and store.overdue(older_than=1e12) == []
    assert 0 < r.ttl("kloop:worker:pipeline:p1") <= 3600
    # A finished pipeline takes no more steps, and the model is free for a new one.
    assert store.advance(final, due_at=0, finished=False, changes={"step": "x"}) == 0
    assert store.create("p2", "m", trigger="manual", evidence={}).created


def test_a_lock_whose_pipeline_vanished_does_not_block_the_model(
    store: PipelineStore, r: redis.Redis
) -> None:
    store.create("p1", "m", trigger="manual", evidence={})
    r.delete("kloop:worker:pipeline:p1")  # expired or deleted by hand
    assert store.create("p2", "m", trigger="manual", evidence={}).created


def test_history_keeps_the_last_entries_in_order(store: PipelineStore) -> None:
    store.create("p1", "m", trigger="manual", evidence={})
    p = store.get("p1")
    assert p is not None
    for i in range(5):
        store.audit(p, "gate", "note", f"n{i}", {"i": i})
    assert [e["message"] for e in store.history("m", limit=2)] == ["n3", "n4"]
    assert store.history("m")[0]["event"] == "started"
    assert store.history("m")[-1]["details"] == '{"i": 4}'


def test_retrain_requests_through_celery_are_deduplicated(workers: Workers) -> None:
    """Two `kloop.retrain` requests for one model, sent as the drift monitor sends them:
    one pipeline, both answers carry its id."""
    workers.start(training_addr="127.0.0.1:1", registry_addr="127.0.0.1:1")
    model = f"m-{uuid.uuid4().hex[:8]}"
    results = [
        workers.control.send_task(
            "kloop.retrain", args=[model, {"trigger_id": f"t{i}"}], queue="training"
        )
        for i in range(2)
    ]
    answers = [result.get(timeout=30) for result in results]
    (winner,) = [r for r, a in zip(results, answers, strict=True) if a["created"]]
    (joined,) = [r for r in results if r is not winner]
    assert answers[0]["pipeline_id"] == answers[1]["pipeline_id"] == winner.id
    client = redis.Redis.from_url(workers.redis_url, decode_responses=True)

    def events() -> list[dict[str, str]]:
        return [e for _, e in client.xrange(f"kloop:worker:audit:{model}")]

    (dedup,) = [e for e in events() if e["event"] == "deduplicated"]
    assert dedup["pipeline_id"] == winner.id and joined.id in dedup["message"]
    # The pipeline runs: its train step retries while training is unreachable.
    wait_until(lambda: any(e["event"] == "retrying" for e in events()))
