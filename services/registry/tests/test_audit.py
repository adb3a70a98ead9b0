from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kloop_registry.audit import (
    TAG_PREFIX,
    Action,
    AuditEntry,
    RollbackImpossible,
    decode,
    encode,
    entries_from_tags,
    next_sequence,
    rollback_target,
    tag_key,
)

T0 = datetime(2026, 11, 22, 3, 0, 0, 123000, tzinfo=UTC)


def entry(seq: int, action: Action, alias: str, version: str, previous: str, **details: str):
    return AuditEntry(
        sequence=seq,
        time=T0,
        action=action,
        name="sentiment",
        alias=alias,
        version=version,
        previous_version=previous,
        actor="tester",
        reason="because",
        details=dict(details),
    )


def tags_of(*entries: AuditEntry) -> dict[str, str]:
    return {e.tag_key: encode(e) for e in entries}


def test_tag_keys_sort_in_sequence_order() -> None:
    assert tag_key(7) == "kloop.audit.000000007"
    keys = [tag_key(n) for n in (1, 9, 10, 100, 2)]
    assert sorted(keys) == [tag_key(n) for n in (1, 2, 9, 10, 100)]


@given(
    st.integers(min_value=1, max_value=999_999_999),
    st.sampled_from(list(Action)),
    st.text(max_size=20),
    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5),
)
def test_encode_decode_round_trip(seq: int, action: Action, reason: str, details) -> None:
    original = AuditEntry(seq, T0, action, "m", "canary", "3", "2", "me", reason, details)
    assert decode(original.tag_key, encode(original)) == original


def test_encoding_is_compact_json() -> None:
    value = encode(entry(1, Action.ALIAS_SET, "production", "2", "1"))
    assert " " not in value.replace("because", "")
    assert '"time":"2026-11-22T03:00:00.123+00:00"' in value


def test_entries_from_tags_orders_and_skips_malformed() -> None:
    tags = tags_of(
        entry(2, Action.ALIAS_SET, "production", "2", "1"),
        entry(1, Action.ALIAS_SET, "production", "1", ""),
    )
    tags[tag_key(3)] = "{hand edited"
    tags[f"{TAG_PREFIX}x"] = "{}"
    tags["kloop.sha256"] = "abc"
    assert [e.sequence for e in entries_from_tags(tags)] == [1, 2]
    # A malformed entry still reserves its sequence: nothing is ever overwritten.
    assert next_sequence(tags) == 4
    assert next_sequence({}) == 1


def test_rollback_goes_to_the_version_before_the_last_change() -> None:
    trail = [
        entry(1, Action.ALIAS_SET, "production", "1", ""),
        entry(2, Action.PROMOTION_APPROVED, "production", "2", "1", applied="true"),
        entry(3, Action.PROMOTION_REJECTED, "production", "3", "2"),
        entry(4, Action.PROMOTION_APPROVED, "production", "4", "2", applied="false"),
        entry(5, Action.ALIAS_SET, "canary", "4", ""),
    ]
    assert rollback_target(trail, "production", "2") == "1"


def test_rollback_of_a_rollback_toggles_and_deletions_restore() -> None:
    trail = [
        entry(1, Action.ALIAS_SET, "production", "1", ""),
        entry(2, Action.ALIAS_SET, "production", "2", "1"),
        entry(3, Action.ROLLBACK, "production", "1", "2"),
    ]
    assert rollback_target(trail, "production", "1") == "2"
    deleted = [*trail, entry(4, Action.ALIAS_DELETED, "production", "", "1")]
    assert rollback_target(deleted, "production", "") == "1"


@pytest.mark.parametrize(
    ("trail", "current", "message"),
    [
        ([], "1", "no recorded change"),
        ([entry(1, Action.PROMOTION_REJECTED, "production", "2", "1")], "1", "no recorded"),
        ([entry(1, Action.ALIAS_SET, "production", "1", "")], "1", "pointed at nothing"),
        ([entry(1, Action.ALIAS_SET, "production", "2", "1")], "5", "outside the registry"),
    ],
)
def test_rollback_refusals(trail: list[AuditEntry], current: str, message: str) -> None:
    with pytest.raises(RollbackImpossible, match=message):
        rollback_target(trail, "production", current)


def test_entry_mirrors_on_deleted_version() -> None:
    assert entry(1, Action.ALIAS_DELETED, "canary", "", "4").concerns_version == "4"
    assert entry(1, Action.ALIAS_SET, "canary", "5", "4").concerns_version == "5"
