"""Job records on a real Redis: chunk arithmetic, exactly-once chunk writes, failure and
finishing with TTLs, and the gateway's reads of what the worker wrote."""

from __future__ import annotations

import pytest
import redis

from kloop_worker.jobs import (
    ACTIVE_KEY,
    JobStatus,
    JobStore,
    assemble,
    chunk_count,
    chunk_key,
    chunk_range,
    done_key,
    failed_chunk,
    input_key,
    job_key,
    row_error,
)

from .conftest import JobClient, RedisServer


@pytest.mark.parametrize(
    ("total", "size", "chunks"), [(0, 10, 0), (1, 10, 1), (10, 10, 1), (11, 10, 2), (25, 5, 5)]
)
def test_chunk_count(total: int, size: int, chunks: int) -> None:
    assert chunk_count(total, size) == chunks


def test_chunk_ranges_cover_every_row_once() -> None:
    rows = [i for k in range(chunk_count(23, 5)) for i in chunk_range(k, 23, 5)]
    assert rows == list(range(23))


def test_row_errors() -> None:
    assert row_error("fine", 10) is None
    assert row_error(" \t", 10) == "empty text"
    assert row_error("x" * 11, 10) == "text longer than 10 characters"


def test_assemble_gives_scores_to_valid_rows_in_order() -> None:
    result = assemble(["good", "", "bad", "x" * 20], 10, "3", [0.9, 0.1])
    assert result.rows == [
        (0.9, None),
        (None, "empty text"),
        (0.1, None),
        (None, "text longer than 10 characters"),
    ]
    assert (result.scored, result.failed) == (2, 2)
    assert failed_chunk(2, "down").rows == [(None, "down"), (None, "down")]


@pytest.fixture
def store(redis_server: RedisServer, r: redis.Redis) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_server.url))


def test_a_chunk_is_written_once_and_the_last_one_finishes_the_job(
    jobs: JobClient, store: JobStore, r: redis.Redis
) -> None:
    job_id = jobs.create(["a", "b", "c"])
    assert store.start(job_id, 2, None)
    assert not store.start(job_id, 2, None)  # only from queued
    job = store.get(job_id)
    assert job is not None and (job.status, job.total, job.chunks) == (JobStatus.RUNNING, 3, 2)
    assert store.texts(job_id, chunk_range(1, 3, 2)) == ["c"]

    first = assemble(["a", "b"], 100, "1", [0.2, 0.8])
    assert store.write_chunk(job_id, 0, first) == "written"
    assert store.write_chunk(job_id, 0, first) == "duplicate"
    job = store.get(job_id)
    assert job is not None and (job.scored, job.chunks_done) == (2, 1)
    assert store.missing_chunks(job) == [1]

    assert store.write_chunk(job_id, 1, assemble(["c"], 100, "1", [0.5])) == "written"
    job = store.get(job_id)
    assert job is not None and (job.status, job.scored, job.failed) == ("succeeded", 3, 0)
    assert all(0 < r.ttl(k) <= 120 for k in (job_key(job_id), done_key(job_id)))
    assert all(0 < r.ttl(chunk_key(job_id, k)) <= 120 for k in (0, 1))
    assert not r.exists(input_key(job_id)) and r.zscore(ACTIVE_KEY, job_id) is None
    # After the job finished, a late chunk changes nothing.
    assert store.write_chunk(job_id, 1, failed_chunk(1, "late")) == "succeeded"
    assert [row.score for row in jobs.rows(job_id)] == [0.2, 0.8, 0.5]


def test_a_dataset_job_stores_its_texts_when_started(jobs: JobClient, store: JobStore) -> None:
    job_id = jobs.create(dataset_uri="/data/x.jsonl")
    assert store.start(job_id, 10, ["x", "y"])
    assert store.texts(job_id, range(0, 2)) == ["x", "y"]
    job = store.get(job_id)
    assert job is not None and job.total == 2


def test_an_empty_dataset_fails_the_job(jobs: JobClient, store: JobStore) -> None:
    job_id = jobs.create(dataset_uri="/data/empty.txt")
    store.start(job_id, 10, [])
    job = store.get(job_id)
    assert job is not None and job.status is JobStatus.FAILED and "no rows" in job.error


def test_cancelled_and_failed_jobs_drop_late_chunks(jobs: JobClient, store: JobStore) -> None:
    job_id = jobs.create(["a", "b"])
    store.start(job_id, 1, None)
    assert jobs.cancel(job_id)["status"] == "cancelled"
    assert store.write_chunk(job_id, 0, assemble(["a"], 10, "1", [0.5])) == "cancelled"
    assert store.fail(job_id, "late") == "cancelled"  # a finished job stays as it is
    job = store.get(job_id)
    assert job is not None and job.status is JobStatus.CANCELLED and job.finished


def test_pages_of_a_running_job_stop_at_the_first_missing_chunk(
    jobs: JobClient, store: JobStore
) -> None:
    job_id = jobs.create([f"t{i}" for i in range(5)])
    store.start(job_id, 2, None)
    store.write_chunk(job_id, 0, assemble(["t0", "t1"], 10, "1", [0.1, 0.2]))
    store.write_chunk(job_id, 2, assemble(["t4"], 10, "1", [0.5]))
    page = jobs.loop.run_until_complete(jobs.queue.rows(jobs.get(job_id), 1, 10))
    assert [row.index for row in page.items] == [1] and page.next_cursor == "2"
    store.write_chunk(job_id, 1, assemble(["", "t3"], 10, "1", [0.4]))
    rows = jobs.rows(job_id, page=2)
    assert [(row.index, row.score, row.error) for row in rows] == [
        (0, 0.1, None),
        (1, 0.2, None),
        (2, None, "empty text"),
        (3, 0.4, None),
        (4, 0.5, None),
    ]


def test_stalled_jobs_are_found_and_touched(jobs: JobClient, store: JobStore) -> None:
    job_id = jobs.create(["a"])
    assert store.stalled(older_than=1e12) == [job_id]
    store.touch(job_id, now=2e12)
    assert store.stalled(older_than=1e12) == []
    store.forget(job_id)
    store.touch(job_id, now=0)  # only existing members are touched
    assert store.stalled(older_than=1e12) == []
