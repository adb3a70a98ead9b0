"""Batch scoring jobs: the Redis records the gateway and the worker share, and the
chunk arithmetic.

Layout (the contract with kloop_gateway.api.routes.jobs, which creates, reads and
cancels jobs; the worker plans and scores them):
- `kloop:jobs:<id>`          hash: the job (fields below); TTL `result_ttl` once finished
- `kloop:jobs:<id>:input`    list: the texts, in row order (inline texts are written by
                             the gateway, a dataset's by the worker); deleted when finished
- `kloop:jobs:<id>:done`     set: indices of the chunks whose results are written
- `kloop:jobs:<id>:chunk:<k>` string: JSON `{"version": v, "rows": [[score, error], ...]}`
                             for rows k*chunk_size .. (score null when error is set)
- `kloop:jobs:active`        sorted set: unfinished job ids by last progress time

Job hash fields: id, model, version (alias or number asked for), status (queued,
running, succeeded, failed, cancelled), source (inline, uri), dataset_uri, owner,
total, chunk_size, chunks, chunks_done, scored, failed (row counts), error,
result_ttl (seconds), created_at, started_at, updated_at, finished_at (Unix seconds).

A job whose every chunk is written has succeeded, also when some rows could not be
scored (an empty text, an inference outage outlasting the retries): those rows carry
their error, `failed` counts them and `error` says so. A job fails as a whole only when
it cannot run at all (an unreadable dataset, a model inference does not serve).

Exactly once: a chunk's rows, its "done" mark and the counters are written by one Lua
script that does nothing when the chunk is already done, so a redelivered chunk task
never duplicates rows or counts; the script that writes the last chunk also finishes
the job and sets every key's TTL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

PREFIX = "kloop:jobs"
ACTIVE_KEY = f"{PREFIX}:active"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def job_key(job_id: str) -> str:
    return f"{PREFIX}:{job_id}"


def input_key(job_id: str) -> str:
    return f"{PREFIX}:{job_id}:input"


def done_key(job_id: str) -> str:
    return f"{PREFIX}:{job_id}:done"


def chunk_key(job_id: str, index: int) -> str:
    return f"{PREFIX}:{job_id}:chunk:{index}"


# --- pure -------------------------------------------------------------------------------


def chunk_count(total: int, chunk_size: int) -> int:
    return -(-total // chunk_size)


def chunk_range(index: int, total: int, chunk_size: int) -> range:
    """The row indices of chunk `index`."""
    start = index * chunk_size
    return range(start, min(start + chunk_size, total))


def row_error(text: str, max_chars: int) -> str | None:
    """Why a row cannot be scored, or None."""
    if not text.strip():
        return "empty text"
    if len(text) > max_chars:
        return f"text longer than {max_chars} characters"
    return None


@dataclass(frozen=True, slots=True)
class ChunkResult:
    version: str
    # One (score, error) per row: exactly one of them is None.
    rows: list[tuple[float | None, str | None]]

    @property
    def scored(self) -> int:
        return sum(score is not None for score, _ in self.rows)

    @property
    def failed(self) -> int:
        return len(self.rows) - self.scored

    def encode(self) -> str:
        return json.dumps(
            {"version": self.version, "rows": [list(row) for row in self.rows]},
            separators=(",", ":"),
        )


def assemble(
    texts: Sequence[str], max_chars: int, version: str, scores: Sequence[float]
) -> ChunkResult:
    """Rows in order: each valid text takes the next score (scores are for the valid
    texts only, in order), each invalid one its error."""
    pending = iter(scores)
    rows: list[tuple[float | None, str | None]] = []
    for text in texts:
        error = row_error(text, max_chars)
        rows.append((None, error) if error else (float(next(pending)), None))
    return ChunkResult(version, rows)


def failed_chunk(size: int, error: str) -> ChunkResult:
    return ChunkResult("", [(None, error)] * size)


@dataclass(frozen=True)
class Job:
    id: str
    model: str
    version: str
    status: JobStatus
    source: str
    dataset_uri: str
    total: int
    chunk_size: int
    chunks: int
    chunks_done: int
    scored: int
    failed: int
    error: str
    result_ttl: int
    created_at: float
    updated_at: float

    @property
    def finished(self) -> bool:
        return self.status not in (JobStatus.QUEUED, JobStatus.RUNNING)


def _job(raw: dict[bytes, bytes]) -> Job:
    values = {k.decode(): v.decode() for k, v in raw.items()}

    def number(name: str) -> int:
        return int(values.get(name) or 0)

    return Job(
        id=values["id"],
        model=values["model"],
        version=values.get("version", ""),
        status=JobStatus(values["status"]),
        source=values.get("source", "inline"),
        dataset_uri=values.get("dataset_uri", ""),
        total=number("total"),
        chunk_size=number("chunk_size"),
        chunks=number("chunks"),
        chunks_done=number("chunks_done"),
        scored=number("scored"),
        failed=number("failed"),
        error=values.get("error", ""),
        result_ttl=number("result_ttl"),
        created_at=float(values.get("created_at") or 0),
        updated_at=float(values.get("updated_at") or 0),
    )


# --- Redis --------------------------------------------------------------------------------

# Sets the TTLs of a finished job and forgets its input. Shared by the scripts below.
# Expects: KEYS[1] job hash, KEYS[2] done set, KEYS[3] input list, KEYS[4] active set;
# ARGV[1] job id; `ttl` a local.
_FINISH = """
local chunks = tonumber(redis.call('HGET', KEYS[1], 'chunks') or '0')
for i = 0, chunks - 1 do
  redis.call('EXPIRE', KEYS[1] .. ':chunk:' .. i, ttl)
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('DEL', KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
"""

# Writes one chunk unless it is already written. Returns "written", "duplicate", or the
# job's status when it is not running (cancelled, failed, gone: nothing written).
# ARGV: job id, chunk index, encoded rows, scored, failed, now.
_WRITE_CHUNK = (
    """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'running' then return status end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 'duplicate' end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'result_ttl'))
redis.call('SET', KEYS[1] .. ':chunk:' .. ARGV[2], ARGV[3], 'EX', ttl)
local scored = redis.call('HINCRBY', KEYS[1], 'scored', ARGV[4])
local failed = redis.call('HINCRBY', KEYS[1], 'failed', ARGV[5])
local done = redis.call('SCARD', KEYS[2])
redis.call('HSET', KEYS[1], 'chunks_done', done, 'updated_at', ARGV[6])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
if done >= tonumber(redis.call('HGET', KEYS[1], 'chunks')) then
  if failed > 0 then
    redis.call('HSET', KEYS[1], 'error', failed .. ' rows could not be scored (see results)')
  end
  redis.call('HSET', KEYS[1], 'status', 'succeeded', 'finished_at', ARGV[6])
"""
    + _FINISH
    + """
end
return 'written'
"""
)

# Fails a job that is not finished yet. ARGV: job id, error, now. Returns the status
# before the call.
_FAIL = (
    """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'queued' and status ~= 'running' then return status end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'result_ttl'))
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[2], 'finished_at', ARGV[3],
  'updated_at', ARGV[3])
"""
    + _FINISH
    + """
return status
"""
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class JobStore:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._write = client.register_script(_WRITE_CHUNK)
        self._fail = client.register_script(_FAIL)

    def get(self, job_id: str) -> Job | None:
        raw = self._r.hgetall(job_key(job_id))
        return _job(raw) if raw else None  # type: ignore[arg-type]

    def start(
        self, job_id: str, chunk_size: int, texts: Sequence[str] | None, now: float | None = None
    ) -> bool:
        """queued -> running: fix the chunking (and store a dataset's texts, which the
        gateway could not read). False when the job is no longer queued."""
        now = time.time() if now is None else now
        keys = job_key(job_id), input_key(job_id)
        with self._r.pipeline(transaction=True) as pipe:
            # WATCH: a cancellation between the read and the write aborts the write.
            pipe.watch(*keys)  # type: ignore[no-untyped-call]
            if _text(pipe.hget(keys[0], "status") or b"") != JobStatus.QUEUED:
                return False
            total = len(texts) if texts is not None else int(pipe.llen(keys[1]))
            pipe.multi()
            if texts is not None:
                pipe.delete(keys[1])
                for start in range(0, len(texts), 10_000):
                    pipe.rpush(keys[1], *texts[start : start + 10_000])
            pipe.hset(
                keys[0],
                mapping={
                    "status": JobStatus.RUNNING.value,
                    "total": total,
                    "chunk_size": chunk_size,
                    "chunks": chunk_count(total, chunk_size),
                    "chunks_done": 0,
                    "started_at": repr(now),
                    "updated_at": repr(now),
                },
            )
            pipe.zadd(ACTIVE_KEY, {job_id: now})
            try:
                pipe.execute()
            except redis.WatchError:
                return False
        if total == 0:
            self._finish_empty(job_id, now)
        return True

    def _finish_empty(self, job_id: str, now: float) -> None:
        # Nothing to score (an empty dataset): no chunk will ever finish the job.
        self.fail(job_id, "the dataset has no rows", now)

    def texts(self, job_id: str, rows: range) -> list[str]:
        raw: Any = self._r.lrange(input_key(job_id), rows.start, rows.stop - 1)
        return [_text(item) for item in raw]

    def write_chunk(
        self, job_id: str, index: int, result: ChunkResult, now: float | None = None
    ) -> str:
        keys = [job_key(job_id), done_key(job_id), input_key(job_id), ACTIVE_KEY]
        args: list[str | int] = [
            job_id,
            index,
            result.encode(),
            result.scored,
            result.failed,
            repr(time.time() if now is None else now),
        ]
        return _text(self._write(keys=keys, args=args))

    def fail(self, job_id: str, error: str, now: float | None = None) -> str:
        keys = [job_key(job_id), done_key(job_id), input_key(job_id), ACTIVE_KEY]
        args = [job_id, error, repr(time.time() if now is None else now)]
        return _text(self._fail(keys=keys, args=args))

    def missing_chunks(self, job: Job) -> list[int]:
        members: Any = self._r.smembers(done_key(job.id))
        done = {int(_text(i)) for i in members}
        return [index for index in range(job.chunks) if index not in done]

    def stalled(self, older_than: float) -> list[str]:
        """Unfinished jobs without progress since `older_than` (Unix seconds)."""
        found: Any = self._r.zrangebyscore(ACTIVE_KEY, "-inf", older_than)
        return [_text(i) for i in found]

    def touch(self, job_id: str, now: float | None = None) -> None:
        """Count a re-send as progress, so the sweeper does not re-send at every pass."""
        self._r.zadd(ACTIVE_KEY, {job_id: time.time() if now is None else now}, xx=True)

    def forget(self, job_id: str) -> None:
        """Drop an id whose job record expired from the active set."""
        self._r.zrem(ACTIVE_KEY, job_id)
