"""Document ingestion records in Redis: the contract with
kloop_gateway.api.routes.documents (which queues ingestions and deletions and reads the
status); the worker runs them (kloop_worker.ingestion).

Layout (`<c>` a collection name, `<id>` a document id; neither is ever split):
- `kloop:docs:<c>:<id>`        hash: the document's status record (fields below)
- `kloop:docs:<c>:<id>:input`  string: the document's text (UTF-8) when given inline;
                               written by the gateway, deleted by the worker when done
- `kloop:docs:<c>:<id>:lock`   string: held by the worker ingesting/deleting the document
- `kloop:docs:active`          sorted set: JSON `[c, id]` of unfinished requests, by last
                               progress time (the sweeper re-sends stalled ones)

Record fields: id, collection, source, format ("markdown", "text" or "" for "from the
source's suffix"), metadata (JSON object), uri (when read by the worker), size (bytes,
when known), action ("ingest" or "delete"), request (id of the latest request: a task
whose request is not the record's any more was superseded and does nothing), status
(queued, running, succeeded, failed, deleting, deleted), error, chunks (count in the
store), content_sha256 (of the text last requested), created_at, updated_at, started_at,
finished_at (Unix seconds), and, written by the worker only, ingested_fingerprint (what
is in the store now: digest of text, source, metadata, format and chunking) and
ingested_sha256.

Status changes by the worker are compare-and-set on `request` (one Lua script each), so
a late, duplicate or superseded task never overwrites the outcome of a newer request.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import redis

PREFIX = "kloop:docs"
ACTIVE_KEY = f"{PREFIX}:active"


class DocStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"


UNFINISHED = (DocStatus.QUEUED, DocStatus.RUNNING, DocStatus.DELETING)


def record_key(collection: str, document_id: str) -> str:
    return f"{PREFIX}:{collection}:{document_id}"


def input_key(collection: str, document_id: str) -> str:
    return f"{record_key(collection, document_id)}:input"


def lock_key(collection: str, document_id: str) -> str:
    return f"{record_key(collection, document_id)}:lock"


def active_member(collection: str, document_id: str) -> str:
    return json.dumps([collection, document_id], separators=(",", ":"))


@dataclass(frozen=True)
class DocRecord:
    id: str
    collection: str
    source: str
    format: str
    metadata: dict[str, Any]
    uri: str
    action: str
    request: str
    status: DocStatus
    chunks: int
    content_sha256: str
    ingested_fingerprint: str
    ingested_sha256: str
    error: str

    @classmethod
    def of(cls, raw: dict[bytes, bytes]) -> DocRecord:
        v = {k.decode(): val.decode() for k, val in raw.items()}
        try:
            metadata = json.loads(v.get("metadata") or "{}")
        except ValueError:
            metadata = {}
        return cls(
            id=v["id"],
            collection=v["collection"],
            source=v.get("source", ""),
            format=v.get("format", ""),
            metadata=metadata if isinstance(metadata, dict) else {},
            uri=v.get("uri", ""),
            action=v.get("action", "ingest"),
            request=v.get("request", ""),
            status=DocStatus(v.get("status", "queued")),
            chunks=int(v.get("chunks") or 0),
            content_sha256=v.get("content_sha256", ""),
            ingested_fingerprint=v.get("ingested_fingerprint", ""),
            ingested_sha256=v.get("ingested_sha256", ""),
            error=v.get("error", ""),
        )


# KEYS: record. ARGV: request, now, expected status 1, expected status 2. Marks the
# request running (an ingest) when it is still the record's and not finished.
_START = """
if redis.call('HGET', KEYS[1], 'request') ~= ARGV[1] then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= ARGV[3] and status ~= ARGV[4] then return 0 end
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[2], 'updated_at', ARGV[2])
end
return 1
"""

# KEYS: record, input, active. ARGV: request, active member, ttl (0: none), then field,
# value pairs. Finishes the request when it is still the record's.
_FINISH = """
if redis.call('HGET', KEYS[1], 'request') ~= ARGV[1] then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
local ttl = tonumber(ARGV[3])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) else redis.call('PERSIST', KEYS[1]) end
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class DocumentStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self._refresh = client.register_script(_REFRESH)

    def get(self, collection: str, document_id: str) -> DocRecord | None:
        raw = self._redis.hgetall(record_key(collection, document_id))
        return DocRecord.of(raw) if raw else None  # type: ignore[arg-type]

    def input_text(self, collection: str, document_id: str) -> bytes | None:
        value = self._redis.get(input_key(collection, document_id))
        return value if isinstance(value, bytes) else None

    def current(self, collection: str, document_id: str, request: str) -> bool:
        found = self._redis.hget(record_key(collection, document_id), "request")
        return found is not None and found.decode() == request  # type: ignore[union-attr]

    def start(self, rec: DocRecord, request: str, *expected: DocStatus) -> bool:
        first, second = (list(expected) * 2)[:2]
        args = [request, repr(time.time()), first.value, second.value]
        return bool(self._start(keys=[record_key(rec.collection, rec.id)], args=args))

    def set_fields(self, rec: DocRecord, request: str, **fields: Any) -> None:
        """Updates fields of a running request (e.g. size and sha once a file is read)."""
        if self.current(rec.collection, rec.id, request):
            self._redis.hset(
                record_key(rec.collection, rec.id),
                mapping={k: str(v) for k, v in fields.items()},
            )

    def finish(self, rec: DocRecord, request: str, *, ttl: int = 0, **fields: Any) -> bool:
        now = repr(time.time())
        values = {"updated_at": now, "finished_at": now, **fields}
        pairs = [str(x) for kv in values.items() for x in kv]
        keys = [record_key(rec.collection, rec.id), input_key(rec.collection, rec.id), ACTIVE_KEY]
        args: list[str | int] = [request, active_member(rec.collection, rec.id), ttl, *pairs]
        return bool(self._finish(keys=keys, args=args))

    def store_changing(self, rec: DocRecord) -> None:
        """Forget what is in the store before changing it (by the lock holder only): an
        interrupted change must not make a later request look unchanged."""
        self._redis.hset(record_key(rec.collection, rec.id), "ingested_fingerprint", "")

    # --- the per-document lock -----------------------------------------------------------

    def lock(self, collection: str, document_id: str, token: str, seconds: float) -> bool:
        key = lock_key(collection, document_id)
        return bool(self._redis.set(key, token, nx=True, px=int(seconds * 1000)))

    def refresh(self, collection: str, document_id: str, token: str, seconds: float) -> bool:
        key = lock_key(collection, document_id)
        return bool(self._refresh(keys=[key], args=[token, int(seconds * 1000)]))

    def unlock(self, collection: str, document_id: str, token: str) -> None:
        self._release(keys=[lock_key(collection, document_id)], args=[token])

    # --- the sweeper ----------------------------------------------------------------------

    def stalled(self, older_than: float) -> list[tuple[str, str]]:
        members: list[bytes] = self._redis.zrangebyscore(  # type: ignore[assignment]
            ACTIVE_KEY, "-inf", older_than, start=0, num=1000
        )
        found = []
        for member in members:
            try:
                collection, document_id = json.loads(member)
            except ValueError:
                self._redis.zrem(ACTIVE_KEY, member)
                continue
            found.append((str(collection), str(document_id)))
        return found

    def touch(self, collection: str, document_id: str) -> None:
        self._redis.zadd(ACTIVE_KEY, {active_member(collection, document_id): time.time()}, xx=True)

    def forget(self, collection: str, document_id: str) -> None:
        self._redis.zrem(ACTIVE_KEY, active_member(collection, document_id))
