from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio

from kloop_core.api_keys import (
    ApiKeyStore,
    authenticate_async,
    check_token,
    hash_secret,
    new_token,
    parse_token,
    record_key,
    validate_scopes,
)


@pytest.fixture
def store(redis_url: str) -> Iterator[ApiKeyStore]:
    client = redis.Redis.from_url(redis_url)
    try:
        yield ApiKeyStore(client, namespace=f"test-{uuid.uuid4().hex[:8]}")
    finally:
        client.close()


def test_tokens_are_random_and_parse_back() -> None:
    key_id, secret, token = new_token()
    assert parse_token(token) == (key_id, secret)
    assert len(key_id) == 12 and len(secret) >= 43  # 32 bytes, base64
    assert new_token()[2] != token


@pytest.mark.parametrize(
    "token",
    ["", "kloop_", "Bearer x", "kloop_0123456789ab", "kloop_0123456789abX", "kloop_ZZZZZZZZZZZZ_s"],
)
def test_malformed_tokens_do_not_parse(token: str) -> None:
    assert parse_token(token) is None


def test_scopes_are_validated() -> None:
    assert validate_scopes(["Predict", " admin "]) == {"predict", "admin"}
    with pytest.raises(ValueError, match="unknown scope"):
        validate_scopes(["predict", "root"])
    with pytest.raises(ValueError, match="at least one"):
        validate_scopes([])


def test_create_stores_only_the_hash(store: ApiKeyStore, redis_url: str) -> None:
    key, token = store.create(["predict"], name="ci")
    _, secret = parse_token(token) or ("", "")
    raw = redis.Redis.from_url(redis_url).hgetall(record_key(key.id, store._ns))
    assert raw[b"hash"] == hashlib.sha256(secret.encode()).hexdigest().encode()
    assert secret.encode() not in b"".join([*raw.keys(), *raw.values()])
    assert raw[b"scopes"] == b"predict" and raw[b"name"] == b"ci"


def test_authenticate_accepts_the_token_and_nothing_else(store: ApiKeyStore) -> None:
    key, token = store.create(["predict", "feedback"], rate_per_second=5, burst=10)
    found = store.authenticate(token)
    assert found is not None and found.id == key.id
    assert found.scopes == {"predict", "feedback"} and found.allows("feedback")
    assert (found.rate_per_second, found.burst) == (5.0, 10)
    assert store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    other_id = "0" * 12 if key.id != "0" * 12 else "1" * 12
    assert store.authenticate(f"kloop_{other_id}_{token[19:]}") is None


def test_revoked_keys_stop_working_but_stay_listed(store: ApiKeyStore) -> None:
    first, token = store.create(["admin"], name="first")
    second, _ = store.create(["predict"], name="second")
    revoked = store.revoke(first.id)
    assert revoked is not None and not revoked.active
    assert store.revoke(first.id) == revoked  # idempotent
    assert store.revoke("ffffffffffff") is None
    assert store.authenticate(token) is None
    listed = store.list()
    assert [k.id for k in listed] == [first.id, second.id]
    assert [k.active for k in listed] == [False, True]


def test_check_token_compares_digests() -> None:
    record = {
        "hash": hash_secret("s3cret"),
        "scopes": "predict",
        "created_at": "2026-01-01T00:00:00+00:00",
    }
    assert check_token("aaaaaaaaaaaa", "s3cret", record) is not None
    assert check_token("aaaaaaaaaaaa", "other", record) is None
    assert check_token("aaaaaaaaaaaa", "s3cret", {}) is None


def test_async_authentication_matches_the_blocking_one(store: ApiKeyStore, redis_url: str) -> None:
    key, token = store.create(["predict"])

    async def check() -> tuple[str | None, object]:
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            found = await authenticate_async(client, token, store._ns)
            missing = await authenticate_async(client, "kloop_nope", store._ns)
            return (found.id if found else None), missing
        finally:
            await client.aclose()

    assert asyncio.run(check()) == (key.id, None)
