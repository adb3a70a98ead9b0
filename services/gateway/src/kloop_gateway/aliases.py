"""Which version each alias answers with, as far as the cache is concerned.

Two sources:

1. Model events on the registry's Redis stream (`kloop:model-events`): authoritative.
   The gateway reads them as they are written, so it learns about a promotion at the
   same moment as the inference service (which then still loads and warms the new
   version: meanwhile cache reads already use the new version's keys and miss).
2. Inference answers, which name the version that produced them: used only for an
   alias no event has mentioned (the stream is trimmed, or no registry writes it), and
   only for `learned_ttl` seconds, so a set-up without events is stale for at most that.

Cache reads need a known version and a connected event follower (`connected`); else
the request goes to inference. Cache writes are always keyed by the producing version,
so they can never be wrong, only unused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

ALIAS_SET = "alias_set"
ALIAS_DELETED = "alias_deleted"


@dataclass(frozen=True, slots=True)
class AliasEvent:
    name: str
    alias: str
    version: str  # "" when the alias was deleted


def parse_model_event(fields: Mapping[Any, Any]) -> AliasEvent | None:
    """The alias change in a model-event stream entry (registry format), or None for
    any other entry (new versions, foreign entries)."""
    text = {_str(k): _str(v) for k, v in fields.items()}
    kind, name, alias = text.get("kind"), text.get("name", ""), text.get("alias", "")
    if not name or not alias:
        return None
    if kind == ALIAS_SET and text.get("version"):
        return AliasEvent(name, alias, text["version"])
    if kind == ALIAS_DELETED:
        return AliasEvent(name, alias, "")
    return None


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(slots=True)
class _Entry:
    version: str  # "" = the alias does not exist (deleted)
    from_event: bool
    learned_at: float


class AliasTable:
    def __init__(self, learned_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._learned_ttl = learned_ttl
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._absent_until: dict[tuple[str, str], float] = {}
        # Set by the event follower: False while it cannot read the stream.
        self.connected = False

    def version_for_cache(self, name: str, alias: str) -> str | None:
        """The version whose cache entries answer for `alias` now, or None (go to
        inference)."""
        if not self.connected:
            return None
        entry = self._entries.get((name, alias))
        if entry is None or not entry.version:
            return None
        if not entry.from_event and self._clock() - entry.learned_at > self._learned_ttl:
            return None
        return entry.version

    def apply(self, event: AliasEvent) -> None:
        key = (event.name, event.alias)
        self._entries[key] = _Entry(event.version, True, self._clock())
        self._absent_until.pop(key, None)

    def learn(self, name: str, alias: str, version: str) -> None:
        """An inference answer for `alias` came from `version`."""
        entry = self._entries.get((name, alias))
        if entry is None or not entry.from_event:
            self._entries[(name, alias)] = _Entry(version, False, self._clock())

    def mark_absent(self, name: str, alias: str, seconds: float) -> None:
        """Inference has no model under `alias`: do not route to it for a while."""
        self._absent_until[(name, alias)] = self._clock() + seconds

    def available(self, name: str, alias: str) -> bool:
        entry = self._entries.get((name, alias))
        if entry is not None and entry.from_event and not entry.version:
            return False
        until = self._absent_until.get((name, alias))
        return until is None or self._clock() >= until

    def reset(self) -> None:
        """Forget everything (the follower lost events and replays the stream)."""
        self._entries.clear()
        self._absent_until.clear()
