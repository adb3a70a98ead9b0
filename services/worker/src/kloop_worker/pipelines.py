"""Retraining pipeline records, the one-per-model lock and the audit log, in Redis.

Layout under `<namespace>` (default `kloop:worker`):
- `pipeline:<id>`        hash: the pipeline (fields of `Pipeline`; evidence and context
                         as JSON); TTL `pipeline_ttl` once finished
- `retrain-lock:<model>` string: the id of the model's running pipeline (TTL refreshed at
                         every step; a safety net for an abandoned pipeline)
- `pipelines:active`     sorted set: running pipeline ids by when their next step is due
- `audit:<model>`        stream: every request, step outcome and decision with its
                         numbers (`kloop-worker history MODEL` prints it)

Concurrency: each step message carries the pipeline's `seq`; a step's outcome is stored
only if `seq` is still current (compare-and-set in Lua) and bumps it, so a duplicate or
stale message (redelivery, a sweeper's resend) can never advance a pipeline twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis


class State(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # the new version serves production
    REJECTED = "rejected"  # evaluation or the gate said no; nothing was aliased
    ROLLED_BACK = "rolled_back"  # the canary failed its analysis and was removed
    FAILED = "failed"  # an error; any canary this pipeline set was removed


FIRST_STEP = "prepare_data"


@dataclass(frozen=True)
class Pipeline:
    id: str
    model: str
    state: State
    step: str
    seq: int
    attempts: int  # transient failures of the current step so far
    retry_since: float  # when the current step first failed (0: it has not)
    created_at: float
    updated_at: float
    trigger: str
    evidence: dict[str, Any] = field(default_factory=dict)
    # What the steps found out so far (run id, version, gate and canary numbers, ...).
    context: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""
    last_error: str = ""

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING


@dataclass(frozen=True)
class Created:
    pipeline_id: str
    created: bool  # False: a pipeline was already running; this request joined it


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pipeline(raw: Mapping[bytes, bytes]) -> Pipeline:
    v = {_text(k): _text(val) for k, val in raw.items()}
    return Pipeline(
        id=v["id"],
        model=v["model"],
        state=State(v["state"]),
        step=v["step"],
        seq=int(v["seq"]),
        attempts=int(v.get("attempts") or 0),
        retry_since=float(v.get("retry_since") or 0),
        created_at=float(v["created_at"]),
        updated_at=float(v["updated_at"]),
        trigger=v.get("trigger", ""),
        evidence=json.loads(v.get("evidence") or "{}"),
        context=json.loads(v.get("context") or "{}"),
        outcome=v.get("outcome", ""),
        last_error=v.get("last_error", ""),
    )


# KEYS: lock, record, active, audit. ARGV: id, model, now, lock ttl, evidence, trigger,
# audit maxlen, record prefix, first step. Returns {pipeline id, 1 if created}.
_CREATE = """
local holder = redis.call('GET', KEYS[1])
if holder and redis.call('EXISTS', ARGV[8] .. holder) == 1 then
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'time', ARGV[3],
    'pipeline_id', holder, 'step', 'request', 'event', 'deduplicated',
    'message', 'request ' .. ARGV[1] .. ' joined the running pipeline', 'details', ARGV[5])
  return {holder, 0}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {ARGV[1], 0} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'model', ARGV[2], 'state', 'running',
  'step', ARGV[9], 'seq', 1, 'attempts', 0, 'retry_since', 0, 'created_at', ARGV[3],
  'updated_at', ARGV[3], 'trigger', ARGV[6], 'evidence', ARGV[5], 'context', '{}')
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[7], '*', 'time', ARGV[3],
  'pipeline_id', ARGV[1], 'step', 'request', 'event', 'started',
  'message', 'retrain requested (' .. ARGV[6] .. ')', 'details', ARGV[5])
return {ARGV[1], 1}
"""

# KEYS: record, active, lock. ARGV: expected seq, now, due at, finished (0/1), lock ttl,
# pipeline id, record ttl, then field/value pairs. Returns the new seq, or 0 when the
# pipeline moved on (or finished) meanwhile.
_ADVANCE = """
local seq = redis.call('HGET', KEYS[1], 'seq')
if not seq or seq ~= ARGV[1] or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
local next_seq = tonumber(seq) + 1
redis.call('HSET', KEYS[1], 'seq', next_seq, 'updated_at', ARGV[2])
for i = 8, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local holds = redis.call('GET', KEYS[3]) == ARGV[6]
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[6])
  if holds then redis.call('DEL', KEYS[3]) end
  redis.call('EXPIRE', KEYS[1], ARGV[7])
else
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[6])
  if holds then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
end
return next_seq
"""


class PipelineStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str,
        lock_ttl_seconds: int,
        record_ttl_seconds: int,
        audit_maxlen: int,
    ) -> None:
        self._r = client
        self._ns = namespace
        self._lock_ttl = lock_ttl_seconds
        self._record_ttl = record_ttl_seconds
        self._audit_maxlen = audit_maxlen
        self._create = client.register_script(_CREATE)
        self._advance = client.register_script(_ADVANCE)

    def _record_key(self, pipeline_id: str) -> str:
        return f"{self._ns}:pipeline:{pipeline_id}"

    def _lock_key(self, model: str) -> str:
        return f"{self._ns}:retrain-lock:{model}"

    def _audit_key(self, model: str) -> str:
        return f"{self._ns}:audit:{model}"

    @property
    def _active_key(self) -> str:
        return f"{self._ns}:pipelines:active"

    def create(
        self, pipeline_id: str, model: str, *, trigger: str, evidence: Mapping[str, Any]
    ) -> Created:
        """Start a pipeline for `model` unless one runs: then the running one's id."""
        now = time.time()
        holder, created = self._create(
            keys=[
                self._lock_key(model),
                self._record_key(pipeline_id),
                self._active_key,
                self._audit_key(model),
            ],
            args=[
                pipeline_id,
                model,
                repr(now),
                self._lock_ttl,
                json.dumps(dict(evidence), sort_keys=True, default=str),
                trigger,
                self._audit_maxlen,
                f"{self._ns}:pipeline:",
                FIRST_STEP,
            ],
        )
        return Created(_text(holder), bool(int(created)))

    def get(self, pipeline_id: str) -> Pipeline | None:
        raw = self._r.hgetall(self._record_key(pipeline_id))
        return _pipeline(raw) if raw else None  # type: ignore[arg-type]

    def running_for(self, model: str) -> str | None:
        holder: Any = self._r.get(self._lock_key(model))
        return _text(holder) if holder else None

    def advance(
        self,
        pipeline: Pipeline,
        *,
        due_at: float,
        finished: bool,
        changes: Mapping[str, Any],
    ) -> int:
        """Store a step's outcome if `pipeline.seq` is still current: the new seq, or 0."""
        pairs: list[str] = []
        for key, value in changes.items():
            encoded = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
            pairs += [key, encoded if isinstance(encoded, str) else repr(encoded)]
        return int(
            self._advance(
                keys=[
                    self._record_key(pipeline.id),
                    self._active_key,
                    self._lock_key(pipeline.model),
                ],
                args=[
                    str(pipeline.seq),
                    repr(time.time()),
                    repr(due_at),
                    "1" if finished else "0",
                    self._lock_ttl,
                    pipeline.id,
                    self._record_ttl,
                    *pairs,
                ],
            )
        )

    def overdue(self, older_than: float) -> list[str]:
        """Running pipelines whose next step was due before `older_than`."""
        found: Any = self._r.zrangebyscore(self._active_key, "-inf", older_than)
        return [_text(i) for i in found]

    def forget(self, pipeline_id: str) -> None:
        self._r.zrem(self._active_key, pipeline_id)

    def audit(
        self,
        pipeline: Pipeline,
        step: str,
        event: str,
        message: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        self._r.xadd(
            self._audit_key(pipeline.model),
            {
                "time": repr(time.time()),
                "pipeline_id": pipeline.id,
                "step": step,
                "event": event,
                "message": message,
                "details": json.dumps(dict(details or {}), sort_keys=True, default=str),
            },
            maxlen=self._audit_maxlen,
            approximate=True,
        )

    def history(self, model: str, limit: int = 0) -> list[dict[str, str]]:
        """The model's audit log, oldest first (the last `limit` entries; 0: all)."""
        entries: Any = (
            list(reversed(self._r.xrevrange(self._audit_key(model), count=limit)))  # type: ignore[arg-type]
            if limit
            else self._r.xrange(self._audit_key(model))
        )
        return [
            {"id": _text(entry_id), **{_text(k): _text(v) for k, v in fields.items()}}
            for entry_id, fields in entries
        ]
