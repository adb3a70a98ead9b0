"""The answer cache in Redis, and `invalidate_document` for ingestion.

Importable without FastAPI or gRPC (only redis and the standard library): the worker
calls `invalidate_document(document_id)` after it re-ingests or deletes a document.

Why a stale answer is never served: an answer's key is a digest of
(prompt version, the normalized question, the model -- "extractive" for extractive
answers -- and the ids *and content hashes* of the retrieved chunks, in rank order).
Retrieval runs before every lookup, so an edited chunk (new hash), a deleted one (no
longer retrieved) or a new better one (other ids) all lead to another key. The explicit
invalidation below frees the old entries at once instead of at their TTL, and covers a
document whose chunks keep their ids and text but must go anyway (e.g. revoked access).

Redis layout (`<ns>` = "kloop:rag" by default):

- ``<ns>:answer:<sha256 hex>`` string, TTL = cache_ttl_seconds: the answer as JSON
  (`answer`, `citations`, `mode`, `model`, `usage`, `retrieved`).
- ``<ns>:doc:<document id>`` set of the answer keys (full key names) built from any
  chunk of that document, TTL refreshed to cache_ttl_seconds on each new answer.
  `invalidate_document` deletes every key in the set and the set itself, atomically
  (one Lua script).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

import orjson
import redis
import redis.asyncio

from kloop_rag.chunks import Chunk
from kloop_rag.prompt import PROMPT_VERSION, normalize_question

DEFAULT_NAMESPACE = "kloop:rag"
DEFAULT_REDIS_URL = "redis://127.0.0.1:16379/0"

# KEYS[1]: the document's set. Deletes the answers it lists, then the set; returns how
# many answers were deleted.
_INVALIDATE = """
local keys = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for i = 1, #keys, 500 do
  deleted = deleted + redis.call('DEL', unpack(keys, i, math.min(i + 499, #keys)))
end
redis.call('DEL', KEYS[1])
return deleted
"""


def answer_key(
    question: str, chunks: Iterable[Chunk], model: str, namespace: str = DEFAULT_NAMESPACE
) -> str:
    digest = hashlib.sha256()
    for part in (PROMPT_VERSION, normalize_question(question), model):
        digest.update(part.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1e")
    for chunk in chunks:
        digest.update(chunk.id.encode("utf-8", "surrogatepass"))
        digest.update(b"\x1f")
        digest.update(chunk.content_hash.encode())
        digest.update(b"\x1e")
    return f"{namespace}:answer:{digest.hexdigest()}"


def document_key(document_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    return f"{namespace}:doc:{document_id}"


def invalidate_document(
    document_id: str,
    client: redis.Redis | str | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
) -> int:
    """Delete every cached answer built from `document_id`; returns how many.

    `client`: a blocking redis client, a redis URL, or None for `KLOOP_RAG_REDIS_URL`
    (default redis://127.0.0.1:16379/0). Safe to call for unknown documents (returns 0).
    """
    own = not isinstance(client, redis.Redis)
    if isinstance(client, redis.Redis):
        conn = client
    else:
        url = client or os.environ.get("KLOOP_RAG_REDIS_URL") or DEFAULT_REDIS_URL
        conn = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0)
    try:
        return int(conn.eval(_INVALIDATE, 1, document_key(document_id, namespace)))
    finally:
        if own:
            conn.close()


async def invalidate_document_async(
    client: redis.asyncio.Redis, document_id: str, *, namespace: str = DEFAULT_NAMESPACE
) -> int:
    """`invalidate_document` for asyncio callers."""
    result = await client.eval(_INVALIDATE, 1, document_key(document_id, namespace))
    return int(result)


class AnswerCache:
    """Reads and writes cached answers on an asyncio client."""

    def __init__(
        self, client: redis.asyncio.Redis, *, ttl_seconds: int, namespace: str = DEFAULT_NAMESPACE
    ) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self.namespace = namespace

    def key(self, question: str, chunks: Iterable[Chunk], model: str) -> str:
        return answer_key(question, chunks, model, self.namespace)

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await self._redis.get(key)
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    async def put(self, key: str, answer: dict[str, Any], document_ids: Iterable[str]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(key, orjson.dumps(answer), ex=self._ttl)
        for document_id in sorted(set(document_ids)):
            doc = document_key(document_id, self.namespace)
            pipe.sadd(doc, key)
            pipe.expire(doc, self._ttl)
        await pipe.execute()
