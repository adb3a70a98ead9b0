from __future__ import annotations

from kloop_gateway.aliases import AliasEvent, AliasTable, parse_model_event


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_parse_registry_events() -> None:
    assert parse_model_event(
        {b"kind": b"alias_set", b"name": b"m", b"alias": b"canary", b"version": b"4"}
    ) == AliasEvent("m", "canary", "4")
    assert parse_model_event({"kind": "alias_deleted", "name": "m", "alias": "canary"}) == (
        AliasEvent("m", "canary", "")
    )
    assert parse_model_event({"kind": "version_registered", "name": "m", "version": "5"}) is None
    assert parse_model_event({"kind": "alias_set", "name": "m", "alias": "x"}) is None
    assert parse_model_event({"foo": "bar"}) is None


def test_no_cache_reads_while_disconnected() -> None:
    table = AliasTable(learned_ttl=5)
    table.apply(AliasEvent("m", "production", "1"))
    assert table.version_for_cache("m", "production") is None
    table.connected = True
    assert table.version_for_cache("m", "production") == "1"


def test_events_win_over_answers() -> None:
    table = AliasTable(learned_ttl=5)
    table.connected = True
    table.apply(AliasEvent("m", "production", "2"))
    table.learn("m", "production", "1")  # inference still finishing the swap
    assert table.version_for_cache("m", "production") == "2"


def test_learned_versions_expire() -> None:
    clock = Clock()
    table = AliasTable(learned_ttl=5, clock=clock)
    table.connected = True
    assert table.version_for_cache("m", "production") is None
    table.learn("m", "production", "1")
    assert table.version_for_cache("m", "production") == "1"
    table.learn("m", "production", "2")  # a later answer replaces a learned version
    assert table.version_for_cache("m", "production") == "2"
    clock.now += 6
    assert table.version_for_cache("m", "production") is None


def test_absence() -> None:
    clock = Clock()
    table = AliasTable(learned_ttl=5, clock=clock)
    assert table.available("m", "canary")
    table.mark_absent("m", "canary", 2)
    assert not table.available("m", "canary")
    clock.now += 3
    assert table.available("m", "canary")
    table.apply(AliasEvent("m", "canary", ""))  # deleted
    assert not table.available("m", "canary")
    table.apply(AliasEvent("m", "canary", "3"))
    assert table.available("m", "canary")
    table.reset()
    assert table.version_for_cache("m", "canary") is None
