"""Model events on a Redis stream: what the inference service and others follow.

One stream entry per alias change or registration, every field a string. Readers use
the stream id as a cursor, so a restarted watcher resumes exactly where it stopped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from redis import Redis

STREAM_ID_RE = re.compile(r"^\d+(-\d+)?$")
_READ_BATCH = 100


class EventKind(StrEnum):
    ALIAS_SET = "alias_set"
    ALIAS_DELETED = "alias_deleted"
    VERSION_REGISTERED = "version_registered"


@dataclass(frozen=True)
class ModelEvent:
    kind: EventKind
    name: str
    alias: str = ""
    version: str = ""
    previous_version: str = ""
    artifact_uri: str = ""
    sha256: str = ""
    actor: str = ""
    reason: str = ""
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Assigned by Redis on publish; empty before.
    event_id: str = ""

    def to_fields(self) -> dict[str, str]:
        fields = {k: str(v) for k, v in asdict(self).items() if k not in ("time", "event_id")}
        fields["kind"] = self.kind.value
        fields["time"] = self.time.astimezone(UTC).isoformat()
        return fields

    @classmethod
    def from_fields(cls, event_id: str, fields: Mapping[Any, Any]) -> ModelEvent:
        text = {_str(k): _str(v) for k, v in fields.items()}
        return cls(
            kind=EventKind(text["kind"]),
            name=text.get("name", ""),
            alias=text.get("alias", ""),
            version=text.get("version", ""),
            previous_version=text.get("previous_version", ""),
            artifact_uri=text.get("artifact_uri", ""),
            sha256=text.get("sha256", ""),
            actor=text.get("actor", ""),
            reason=text.get("reason", ""),
            time=datetime.fromisoformat(text["time"]),
            event_id=event_id,
        )


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class EventStream:
    def __init__(self, redis: Redis, stream: str, maxlen: int) -> None:
        self._redis = redis
        self._stream = stream
        self._maxlen = maxlen

    def publish(self, event: ModelEvent) -> ModelEvent:
        """Append `event`; the stream is trimmed to about `maxlen` entries (`~` is cheap)."""
        fields: dict[Any, Any] = dict(event.to_fields())  # redis-py's field type is invariant
        event_id = self._redis.xadd(self._stream, fields, maxlen=self._maxlen, approximate=True)
        return replace(event, event_id=_str(event_id))

    def last_id(self) -> str:
        """The newest entry's id ("0-0" when empty): a cursor for "only new events"."""
        newest = self._redis.xrevrange(self._stream, count=1)
        return _str(newest[0][0]) if newest else "0-0"

    def read_after(self, cursor: str, block_seconds: float) -> tuple[str, list[ModelEvent]]:
        """(new cursor, events after `cursor`), waiting up to `block_seconds` for one.

        Entries that are not model events (written by someone else) are skipped but
        still move the cursor, so they cannot be re-read forever."""
        # RESP2: [[stream, [(id, {field: value})]]], or None when the block timed out.
        reply: Any = self._redis.xread(
            {self._stream: cursor}, count=_READ_BATCH, block=max(1, int(block_seconds * 1000))
        )
        events = []
        for _, entries in reply or []:
            for raw_id, fields in entries:
                cursor = _str(raw_id)
                try:
                    events.append(ModelEvent.from_fields(cursor, fields))
                except (KeyError, ValueError):
                    continue
        return cursor, events

    def watch(
        self,
        *,
        after_id: str | None,
        name: str | None,
        is_active: Callable[[], bool],
        block_seconds: float,
    ) -> Iterator[ModelEvent]:
        """Replay events after `after_id` (None: from now on), then follow new ones until
        `is_active()` turns false. Each XREAD blocks, so an idle watcher costs one
        round-trip per `block_seconds`, never a busy loop."""
        cursor = after_id if after_id is not None else self.last_id()
        while is_active():
            cursor, events = self.read_after(cursor, block_seconds)
            yield from (e for e in events if not name or e.name == name)
