"""Monitor state in Redis, and the one transaction that makes counting exactly-once.

Layout (`<p>` = key_prefix, default "kloop:drift"; model and version URL-quoted):

- ``<p>:state:<model>:<version>``: the version's `VersionState` as JSON;
- ``<p>:versions``: set of those state keys;
- ``<p>:seen:<kind>:<model>:<version>:<generation>``: ids already counted (kind ``p``
  for prediction ids, ``f`` for feedback prediction ids), one set per generation of
  `dedupe_events` events; the current and previous generation are checked, older ones
  deleted;
- ``<p>:trigger:<model>``: the retrain claim / cooldown (TTL);
- ``<p>:triggers``: stream of sent retrain requests with their evidence (audit).

Exactly-once: a batch's new states, the ids it counted, its dead letters and the XACK
of its entries are written in one MULTI/EXEC, guarded by WATCH on the touched states.
A crash before EXEC leaves nothing counted and nothing acknowledged (the entries are
redelivered); after it, both. A concurrent writer (another replica) makes EXEC fail and
the batch is re-applied to the fresh states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
import redis

from kloop_drift_monitor.windows import VersionState

VersionKey = tuple[str, str]  # (model, version)
T = TypeVar("T")
# Seen-id sets are deleted explicitly when they age out; the TTL only cleans up after
# versions that stopped receiving traffic.
SEEN_TTL_SECONDS = 7 * 24 * 3600


def _part(value: str) -> str:
    return quote(value, safe="")


@dataclass
class Transaction:
    """What one commit attempt sees (fresh states, seen-id lookups) and will write."""

    states: dict[VersionKey, VersionState]
    _pipe: Any
    seen_adds: dict[str, list[str]] = field(default_factory=dict)
    seen_drops: list[str] = field(default_factory=list)
    acks: dict[str, list[bytes]] = field(default_factory=dict)
    dead: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def state(self, key: VersionKey) -> VersionState:
        found = self.states.get(key)
        if found is None:
            found = self.states[key] = VersionState(model=key[0], version=key[1])
        return found

    def seen(self, set_keys: Sequence[str], ids: Sequence[str]) -> list[bool]:
        """Whether each id is in any of `set_keys` (read inside the WATCH)."""
        found = [False] * len(ids)
        if not ids:
            return found
        for set_key in set_keys:
            flags = self._pipe.execute_command("SMISMEMBER", set_key, *ids)
            found = [a or bool(b) for a, b in zip(found, flags, strict=True)]
        return found


class StateStore:
    def __init__(self, client: redis.Redis, *, prefix: str, group: str, dead_maxlen: int) -> None:
        self.client = client
        self.prefix = prefix
        self.group = group
        self.dead_maxlen = dead_maxlen
        # state key -> (stored bytes, the state they encode), as this store last wrote
        # them: when Redis still holds exactly those bytes the object is reused instead
        # of decoded (the decoding was a third of the consumer's time).
        self._written: dict[str, tuple[bytes, VersionState]] = {}

    # --- keys -----------------------------------------------------------------------

    def state_key(self, key: VersionKey) -> str:
        return f"{self.prefix}:state:{_part(key[0])}:{_part(key[1])}"

    def seen_key(self, kind: str, key: VersionKey, generation: int) -> str:
        return f"{self.prefix}:seen:{kind}:{_part(key[0])}:{_part(key[1])}:{generation}"

    def trigger_key(self, model: str) -> str:
        return f"{self.prefix}:trigger:{_part(model)}"

    @property
    def triggers_stream(self) -> str:
        return f"{self.prefix}:triggers"

    @property
    def index_key(self) -> str:
        return f"{self.prefix}:versions"

    # --- reads ----------------------------------------------------------------------

    def load_all(self) -> list[VersionState]:
        keys = sorted(
            k.decode() if isinstance(k, bytes) else k for k in self.client.smembers(self.index_key)
        )
        states = [_decode(raw) for raw in self.client.mget(keys)] if keys else []
        return sorted((s for s in states if s is not None), key=lambda s: (s.model, s.version))

    def load(self, key: VersionKey) -> VersionState | None:
        return _decode(self.client.get(self.state_key(key)))

    # --- the transaction ------------------------------------------------------------

    def commit(self, keys: Iterable[VersionKey], mutate: Callable[[Transaction], T]) -> T:
        """Run `mutate` on fresh copies of the states of `keys` and write everything it
        changed and queued in one transaction; re-run on a concurrent change."""
        ordered = sorted(set(keys))
        state_keys = [self.state_key(k) for k in ordered]
        with self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if state_keys:
                        pipe.watch(*state_keys)  # type: ignore[no-untyped-call]
                        raws = pipe.mget(state_keys)
                    else:
                        raws = []
                    txn = Transaction({}, pipe)
                    for key, state_key, raw in zip(ordered, state_keys, raws, strict=True):
                        state = self._reuse(state_key, raw)
                        if state is not None:
                            txn.states[key] = state
                    result = mutate(txn)
                    pipe.multi()
                    written = self._queue_writes(pipe, txn)
                    pipe.execute()
                except redis.WatchError:
                    self._forget(state_keys)
                    continue
                except BaseException:
                    self._forget(state_keys)  # the cached objects may be half-mutated
                    raise
                for state_key, encoded in written.items():
                    self._written[state_key] = encoded
                return result

    def _reuse(self, state_key: str, raw: bytes | str | None) -> VersionState | None:
        cached = self._written.get(state_key)
        if raw is not None and cached is not None and cached[0] == raw:
            return cached[1]
        return _decode(raw)

    def _forget(self, state_keys: Iterable[str]) -> None:
        for state_key in state_keys:
            self._written.pop(state_key, None)

    def _queue_writes(self, pipe: Any, txn: Transaction) -> dict[str, tuple[bytes, VersionState]]:
        written = {self.state_key(k): (_encode(s), s) for k, s in txn.states.items()}
        if written:
            pipe.mset({k: encoded for k, (encoded, _) in written.items()})
            pipe.sadd(self.index_key, *written)
        for set_key, ids in txn.seen_adds.items():
            pipe.sadd(set_key, *ids)
            pipe.expire(set_key, SEEN_TTL_SECONDS)
        if txn.seen_drops:
            pipe.delete(*txn.seen_drops)
        for stream, entry_ids in txn.acks.items():
            pipe.xack(stream, self.group, *entry_ids)
        for stream, fields in txn.dead:
            pipe.xadd(stream, fields, maxlen=self.dead_maxlen, approximate=True)
        return written


def _encode(state: VersionState) -> bytes:
    return orjson.dumps(state.to_dict())


def _decode(raw: bytes | str | None) -> VersionState | None:
    if raw is None:
        return None
    data: Mapping[str, Any] = orjson.loads(raw)
    return VersionState.from_dict(data)
