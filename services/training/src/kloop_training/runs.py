"""Run records and their progress events, in Redis.

Layout under `<namespace>` (default `kloop:training`):
- `run:<id>`            hash: the run record (kept; the MLflow run is the long-term record)
- `events:<id>`         stream of progress events; expires `events_ttl` after the run ends
- `index`               sorted set of every run, `index:model:<name>` per model; all
                        scores 0 and members `<created ms, 13 digits>:<id>`, so a lexical
                        range is newest-first order and a member is an exact page cursor
- `active`              set of runs not yet finished (re-queued at start-up)
- `idem:<sha256(key)>`  idempotency key -> run id

Every change of a run is one MULTI: the hash update and its event land together, so a
watcher never sees an event whose record is not written yet (or the reverse).
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis
from redis.typing import EncodableT, FieldT

from kloop_training.pipeline import DatasetRef, RunParams, RunSpec


class RunState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    spec: RunSpec
    state: RunState
    stage: str
    progress: float
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    mlflow_run_id: str = ""
    model_version: str = ""
    dataset_digest: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str = ""
    idempotency_key: str = ""
    # Fingerprint of the submitted request, to tell a retry from a reused key.
    fingerprint: str = ""
    attempts: int = 0


@dataclass(frozen=True)
class RunEventRecord:
    event_id: str
    run_id: str
    state: RunState
    stage: str
    progress: float
    message: str
    time: float


class InvalidPageToken(ValueError):
    """A ListRuns page token this store did not hand out."""


# Creates a run unless its idempotency key already names one; returns the winning id.
# KEYS: idem, run hash, index, model index, active, events.
# ARGV: run id, index member, idem ttl, event fields as JSON, then hash field/value pairs.
_CREATE = """
if KEYS[1] ~= '' then
  local existing = redis.call('GET', KEYS[1])
  if existing then return existing end
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[2])
redis.call('SADD', KEYS[5], ARGV[1])
local ev = cjson.decode(ARGV[4])
redis.call('XADD', KEYS[6], '*', 'state', ev.state, 'stage', ev.stage,
  'progress', ev.progress, 'message', ev.message, 'time', ev.time)
return ARGV[1]
"""

# Bounds one run's event stream even if a pipeline reports progress in a tight loop.
_EVENTS_MAXLEN = 10_000


def new_run_id() -> str:
    return uuid.uuid4().hex


class RunStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        namespace: str = "kloop:training",
        events_ttl_seconds: int = 7 * 24 * 3600,
        idempotency_ttl_seconds: int = 7 * 24 * 3600,
    ) -> None:
        self._r = client
        self._ns = namespace
        self._events_ttl = events_ttl_seconds
        self._idem_ttl = idempotency_ttl_seconds
        self._create = client.register_script(_CREATE)

    # --- keys ---------------------------------------------------------------------

    def _run_key(self, run_id: str) -> str:
        return f"{self._ns}:run:{run_id}"

    def _events_key(self, run_id: str) -> str:
        return f"{self._ns}:events:{run_id}"

    def _index_key(self, model_name: str = "") -> str:
        return f"{self._ns}:index:model:{model_name}" if model_name else f"{self._ns}:index"

    def _idem_key(self, key: str) -> str:
        # Hashed: client keys may be long or contain anything.
        return f"{self._ns}:idem:{hashlib.sha256(key.encode()).hexdigest()}"

    @property
    def _active_key(self) -> str:
        return f"{self._ns}:active"

    # --- writes -------------------------------------------------------------------

    def create(
        self,
        spec: RunSpec,
        *,
        dataset_digest: str,
        idempotency_key: str = "",
        fingerprint: str = "",
        now: float | None = None,
    ) -> tuple[RunRecord, bool]:
        """Store a new QUEUED run, or return the run its idempotency key already names.

        The second value says whether this call created the run.
        """
        created_at = time.time() if now is None else now
        record = RunRecord(
            run_id=new_run_id(),
            spec=spec,
            state=RunState.QUEUED,
            stage="queued",
            progress=0.0,
            created_at=created_at,
            dataset_digest=dataset_digest,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
        event = {
            "state": record.state.value,
            "stage": record.stage,
            "progress": "0",
            "message": "queued",
            "time": repr(created_at),
        }
        pairs = [item for kv in _encode_record(record).items() for item in kv]
        member = _index_member(created_at, record.run_id)
        winner = _text(
            self._create(
                keys=[
                    self._idem_key(idempotency_key) if idempotency_key else "",
                    self._run_key(record.run_id),
                    self._index_key(),
                    self._index_key(spec.model_name),
                    self._active_key,
                    self._events_key(record.run_id),
                ],
                args=[record.run_id, member, self._idem_ttl, json.dumps(event), *pairs],
            )
        )
        if winner == record.run_id:
            return record, True
        existing = self.get(winner)
        if existing is None:  # the key outlived its run (deleted by hand): start afresh
            self._r.delete(self._idem_key(idempotency_key))
            return self.create(
                spec,
                dataset_digest=dataset_digest,
                idempotency_key=idempotency_key,
                fingerprint=fingerprint,
                now=now,
            )
        return existing, False

    def record(
        self,
        run_id: str,
        *,
        state: RunState,
        stage: str,
        progress: float,
        message: str,
        now: float | None = None,
        **changes: Any,
    ) -> None:
        """Update the run (state, stage, progress and any other RunRecord fields given)
        and append the matching progress event, atomically."""
        at = time.time() if now is None else now
        fields: dict[FieldT, EncodableT] = {
            "state": state.value,
            "stage": stage,
            "progress": repr(progress),
        }
        fields.update(_encode_fields(changes))
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._run_key(run_id), mapping=fields)
        pipe.xadd(
            self._events_key(run_id),
            {
                "state": state.value,
                "stage": stage,
                "progress": repr(progress),
                "message": message,
                "time": repr(at),
            },
            maxlen=_EVENTS_MAXLEN,
            approximate=True,
        )
        if state.terminal:
            pipe.srem(self._active_key, run_id)
            pipe.expire(self._events_key(run_id), self._events_ttl)
        pipe.execute()

    # --- reads --------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        raw = self._r.hgetall(self._run_key(run_id))
        return _decode_record(raw) if raw else None

    def find_by_idempotency_key(self, key: str) -> RunRecord | None:
        run_id = self._r.get(self._idem_key(key))
        return self.get(_text(run_id)) if run_id else None

    def active_count(self) -> int:
        return int(self._r.scard(self._active_key))

    def active_run_ids(self) -> list[str]:
        """Runs not finished yet (QUEUED or RUNNING), oldest first."""
        runs = [r for r in (self.get(_text(i)) for i in self._r.smembers(self._active_key)) if r]
        return [r.run_id for r in sorted(runs, key=lambda r: r.created_at)]

    def list_runs(
        self, *, model_name: str = "", page_size: int, page_token: str = ""
    ) -> tuple[list[RunRecord], str]:
        """Newest first; returns one page and the token of the next ('' at the end)."""
        upper = "+" if not page_token else "(" + _decode_token(page_token)
        # One extra member tells whether another page follows.
        members = [
            _text(m)
            for m in self._r.zrevrangebylex(
                self._index_key(model_name), upper, "-", start=0, num=page_size + 1
            )
        ]
        page, more = members[:page_size], len(members) > page_size
        pipe = self._r.pipeline(transaction=False)
        for member in page:
            pipe.hgetall(self._run_key(member.split(":", 1)[1]))
        records = [_decode_record(raw) for raw in pipe.execute() if raw]
        return records, (_encode_token(page[-1]) if more and page else "")

    def events(
        self, run_id: str, *, after: str = "0-0", block_seconds: float = 0.0, count: int = 100
    ) -> list[RunEventRecord]:
        """Events after the stream id `after`, waiting up to `block_seconds` for one."""
        block = int(block_seconds * 1000) if block_seconds > 0 else None
        # [(stream, [(event id, {field: value})])], or None when the wait timed out.
        reply: list[tuple[Any, list[tuple[Any, dict[Any, Any]]]]] | None = self._r.xread(
            {self._events_key(run_id): after}, count=count, block=block
        )  # type: ignore[assignment]
        found = []
        for _stream, entries in reply or []:
            for event_id, data in entries:
                values = {_text(k): _text(v) for k, v in data.items()}
                found.append(
                    RunEventRecord(
                        event_id=_text(event_id),
                        run_id=run_id,
                        state=RunState(values["state"]),
                        stage=values["stage"],
                        progress=float(values["progress"]),
                        message=values.get("message", ""),
                        time=float(values["time"]),
                    )
                )
        return found

    def ping(self) -> bool:
        return bool(self._r.ping())


# --- encoding -------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _index_member(created_at: float, run_id: str) -> str:
    return f"{int(created_at * 1000):013d}:{run_id}"


def _encode_token(member: str) -> str:
    return base64.urlsafe_b64encode(member.encode()).decode().rstrip("=")


def _decode_token(token: str) -> str:
    try:
        member = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except ValueError as e:
        raise InvalidPageToken("malformed page_token") from e
    created, sep, run_id = member.partition(":")
    if not (sep and len(created) == 13 and created.isdigit() and run_id):
        raise InvalidPageToken("malformed page_token")
    return member


def _encode_fields(changes: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in changes.items():
        if name not in _RECORD_FIELDS:
            raise TypeError(f"RunRecord has no field {name!r}")
        if isinstance(value, Mapping):
            out[name] = json.dumps(dict(value), sort_keys=True)
        elif isinstance(value, float):
            out[name] = repr(value)
        elif value is None:
            out[name] = ""
        else:
            out[name] = str(value)
    return out


def _encode_record(r: RunRecord) -> dict[str, str]:
    spec = r.spec
    fields = _encode_fields(
        {
            name: getattr(r, name)
            for name in _RECORD_FIELDS
            if name not in ("spec", "state") and getattr(r, name) is not None
        }
    )
    fields["state"] = r.state.value
    fields["model_name"] = spec.model_name
    fields["dataset"] = json.dumps({"uri": spec.dataset.uri, "format": spec.dataset.format})
    fields["params"] = json.dumps(spec.params.as_dict())
    fields["tags"] = json.dumps(dict(spec.tags), sort_keys=True)
    return fields


def _decode_record(raw: Mapping[bytes | str, bytes | str]) -> RunRecord:
    v = {_text(k): _text(val) for k, val in raw.items()}

    def opt_float(name: str) -> float | None:
        return float(v[name]) if v.get(name) else None

    dataset = json.loads(v["dataset"])
    spec = RunSpec(
        model_name=v["model_name"],
        dataset=DatasetRef(uri=dataset["uri"], format=dataset["format"]),
        params=RunParams(**json.loads(v["params"])),
        tags=json.loads(v["tags"]),
    )
    return RunRecord(
        run_id=v["run_id"],
        spec=spec,
        state=RunState(v["state"]),
        stage=v.get("stage", ""),
        progress=float(v.get("progress") or 0.0),
        created_at=float(v["created_at"]),
        started_at=opt_float("started_at"),
        finished_at=opt_float("finished_at"),
        mlflow_run_id=v.get("mlflow_run_id", ""),
        model_version=v.get("model_version", ""),
        dataset_digest=v.get("dataset_digest", ""),
        metrics={k: float(x) for k, x in json.loads(v.get("metrics") or "{}").items()},
        error=v.get("error", ""),
        idempotency_key=v.get("idempotency_key", ""),
        fingerprint=v.get("fingerprint", ""),
        attempts=int(v.get("attempts") or 0),
    )


_RECORD_FIELDS = frozenset(RunRecord.__dataclass_fields__)
