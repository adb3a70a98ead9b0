"""API keys: random bearer tokens, stored hashed in Redis, each with scopes.

Token: ``kloop_<id>_<secret>``. The id (12 hex characters) is public: it names the key in
listings, logs and `kloop keys revoke ID`. The secret is 32 random bytes (256 bits,
urlsafe base64) and is shown once, at creation; Redis keeps only its sha256.

Why sha256 and not bcrypt/argon2: slow hashes protect low-entropy passwords from
offline guessing; a 256-bit random secret cannot be guessed at any hash speed, so a fast
hash keeps verification at about a microsecond per request while a copy of Redis still
holds no usable key. The record is found by the id (never by a value derived from the
secret) and the two digests are compared with `hmac.compare_digest` (constant time).

Redis layout (`<ns>` = namespace, "kloop" by default):

- ``<ns>:api-key:<id>`` hash: ``hash`` (sha256 hex of the secret), ``name``, ``scopes``
  (comma separated), ``created_at`` (ISO 8601), optional ``rate_per_second`` / ``burst``
  (per-key rate-limit overrides) and ``revoked_at`` once revoked (kept for the audit
  trail; a revoked key never authenticates).
- ``<ns>:api-keys`` set of every key id, for listing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import redis
import redis.asyncio

# ask: questions to the RAG service (its key checks use this same store).
SCOPES: tuple[str, ...] = ("predict", "feedback", "ask", "admin")
TOKEN_PREFIX = "kloop_"  # noqa: S105 - a format prefix, not a secret
ID_HEX_CHARS = 12
SECRET_BYTES = 32
DEFAULT_NAMESPACE = "kloop"


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None = None
    # Per-key rate-limit overrides; None = the service's default.
    rate_per_second: float | None = None
    burst: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def validate_scopes(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes as a set; ValueError names any unknown one (or an empty set)."""
    chosen = frozenset(s.strip().lower() for s in scopes if s.strip())
    unknown = sorted(chosen - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    if not chosen:
        raise ValueError(f"at least one scope is required; known: {', '.join(SCOPES)}")
    return chosen


def new_token() -> tuple[str, str, str]:
    """(key id, secret, token) for a new key."""
    key_id = secrets.token_hex(ID_HEX_CHARS // 2)
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return key_id, secret, f"{TOKEN_PREFIX}{key_id}_{secret}"


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed token, else None."""
    id_end = len(TOKEN_PREFIX) + ID_HEX_CHARS
    if not token.startswith(TOKEN_PREFIX) or len(token) <= id_end + 1 or token[id_end] != "_":
        return None
    key_id = token[len(TOKEN_PREFIX) : id_end]
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, token[id_end + 1 :]


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def record_key(key_id: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    return f"{namespace}:api-key:{key_id}"


def index_key(namespace: str = DEFAULT_NAMESPACE) -> str:
    return f"{namespace}:api-keys"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _optional_time(raw: str | None) -> datetime | None:
    return datetime.fromisoformat(raw) if raw else None


def key_from_record(key_id: str, record: Mapping[Any, Any]) -> ApiKey:
    """The ApiKey of a stored hash (bytes or str fields)."""
    fields = {_text(k): _text(v) for k, v in record.items()}
    rate = fields.get("rate_per_second")
    burst = fields.get("burst")
    return ApiKey(
        id=key_id,
        name=fields.get("name", ""),
        scopes=frozenset(s for s in fields.get("scopes", "").split(",") if s),
        created_at=datetime.fromisoformat(fields["created_at"]),
        revoked_at=_optional_time(fields.get("revoked_at")),
        rate_per_second=float(rate) if rate else None,
        burst=int(burst) if burst else None,
    )


def check_token(key_id: str, secret: str, record: Mapping[Any, Any]) -> ApiKey | None:
    """The key if `secret` matches the stored record and the key is not revoked."""
    if not record:
        return None
    stored = _text(record.get(b"hash", record.get("hash", "")))
    if not hmac.compare_digest(hash_secret(secret), stored):
        return None
    key = key_from_record(key_id, record)
    return key if key.active else None


class ApiKeyStore:
    """Create, list, revoke and check keys (blocking client: CLI and admin tools)."""

    def __init__(self, client: redis.Redis, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._redis = client
        self._ns = namespace

    def create(
        self,
        scopes: Iterable[str],
        name: str = "",
        *,
        rate_per_second: float | None = None,
        burst: int | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its token (the only time the token is known)."""
        chosen = validate_scopes(scopes)
        if rate_per_second is not None and rate_per_second <= 0:
            raise ValueError("rate_per_second must be > 0")
        if burst is not None and burst < 1:
            raise ValueError("burst must be >= 1")
        key_id, secret, token = new_token()
        key = ApiKey(
            id=key_id,
            name=name,
            scopes=chosen,
            created_at=datetime.now(UTC),
            rate_per_second=rate_per_second,
            burst=burst,
        )
        record: dict[str, str] = {
            "hash": hash_secret(secret),
            "name": name,
            "scopes": ",".join(sorted(chosen)),
            "created_at": key.created_at.isoformat(),
        }
        if rate_per_second is not None:
            record["rate_per_second"] = repr(rate_per_second)
        if burst is not None:
            record["burst"] = str(burst)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(record_key(key_id, self._ns), mapping=record)  # type: ignore[arg-type]
        pipe.sadd(index_key(self._ns), key_id)
        pipe.execute()
        return key, token

    def get(self, key_id: str) -> ApiKey | None:
        record = self._redis.hgetall(record_key(key_id, self._ns))
        return key_from_record(key_id, record) if record else None

    def list(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        ids = sorted(_text(i) for i in self._redis.smembers(index_key(self._ns)))
        pipe = self._redis.pipeline(transaction=False)
        for key_id in ids:
            pipe.hgetall(record_key(key_id, self._ns))
        keys = [key_from_record(i, r) for i, r in zip(ids, pipe.execute(), strict=True) if r]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    def revoke(self, key_id: str) -> ApiKey | None:
        """Mark the key revoked (None if there is no such key). Idempotent."""
        key = self.get(key_id)
        if key is None:
            return None
        if key.revoked_at is not None:
            return key
        revoked_at = datetime.now(UTC)
        self._redis.hset(record_key(key_id, self._ns), "revoked_at", revoked_at.isoformat())
        return replace(key, revoked_at=revoked_at)

    def authenticate(self, token: str) -> ApiKey | None:
        parsed = parse_token(token)
        if parsed is None:
            return None
        record = self._redis.hgetall(record_key(parsed[0], self._ns))
        return check_token(parsed[0], parsed[1], record)


async def authenticate_async(
    client: redis.asyncio.Redis, token: str, namespace: str = DEFAULT_NAMESPACE
) -> ApiKey | None:
    """`ApiKeyStore.authenticate` for asyncio services (one HGETALL)."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    record = await client.hgetall(record_key(parsed[0], namespace))
    return check_token(parsed[0], parsed[1], record)
