"""The audit trail: entries, their MLflow tag encoding, and rollback reasoning (pure).

Each entry is one tag `kloop.audit.<9-digit sequence>` whose value is compact JSON, set
on the registered model (the full trail, ordered by key) and mirrored on the version it
concerns. Sequences are allocated under the per-model lock, so they are gap-free and
unique across replicas.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

TAG_PREFIX = "kloop.audit."
_SEQUENCE_DIGITS = 9


class Action(StrEnum):
    ALIAS_SET = "alias_set"
    ALIAS_DELETED = "alias_deleted"
    ROLLBACK = "rollback"
    PROMOTION_APPROVED = "promotion_approved"
    PROMOTION_REJECTED = "promotion_rejected"
    # A version brought as an ONNX file: recorded with why it was not gated.
    MODEL_IMPORTED = "model_imported"


class RollbackImpossible(ValueError):
    """The trail does not say where to roll the alias back to."""


@dataclass(frozen=True)
class AuditEntry:
    sequence: int
    time: datetime
    action: Action
    name: str
    alias: str
    version: str
    previous_version: str
    actor: str
    reason: str
    details: dict[str, str] = field(default_factory=dict)

    @property
    def tag_key(self) -> str:
        return tag_key(self.sequence)

    @property
    def moved_alias(self) -> bool:
        """Did this entry change where its alias points? (Rejections and dry runs did not.)"""
        if self.action is Action.PROMOTION_APPROVED:
            return self.details.get("applied") == "true"
        return self.action not in (Action.PROMOTION_REJECTED, Action.MODEL_IMPORTED)

    @property
    def concerns_version(self) -> str:
        """The version the entry is mirrored on: the deleted one for a deletion."""
        return self.version or self.previous_version


def tag_key(sequence: int) -> str:
    return f"{TAG_PREFIX}{sequence:0{_SEQUENCE_DIGITS}d}"


def encode(entry: AuditEntry) -> str:
    body: dict[str, Any] = {
        "time": entry.time.astimezone(UTC).isoformat(timespec="milliseconds"),
        "action": entry.action.value,
        "name": entry.name,
        "alias": entry.alias,
        "version": entry.version,
        "previous_version": entry.previous_version,
        "actor": entry.actor,
        "reason": entry.reason,
        "details": entry.details,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


def decode(key: str, value: str) -> AuditEntry:
    """One entry from its tag; ValueError, KeyError or TypeError for a malformed one."""
    if not key.startswith(TAG_PREFIX):
        raise ValueError(f"not an audit tag: {key}")
    sequence = int(key.removeprefix(TAG_PREFIX))
    body = json.loads(value)
    if not isinstance(body, dict):
        raise ValueError("audit tag value must be a JSON object")
    details = body.get("details") or {}
    return AuditEntry(
        sequence=sequence,
        time=datetime.fromisoformat(str(body["time"])),
        action=Action(body["action"]),
        name=str(body.get("name", "")),
        alias=str(body.get("alias", "")),
        version=str(body.get("version", "")),
        previous_version=str(body.get("previous_version", "")),
        actor=str(body.get("actor", "")),
        reason=str(body.get("reason", "")),
        details={str(k): str(v) for k, v in details.items()},
    )


def entries_from_tags(tags: Mapping[str, str]) -> list[AuditEntry]:
    """The trail in sequence order. Tags that are not well-formed entries (e.g. edited by
    hand in the MLflow UI) are skipped so one bad tag cannot hide the whole history."""
    entries = []
    for key, value in tags.items():
        if not key.startswith(TAG_PREFIX):
            continue
        try:
            entries.append(decode(key, value))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return sorted(entries, key=lambda e: e.sequence)


def next_sequence(tags: Mapping[str, str]) -> int:
    """One past the highest sequence in use (malformed values still reserve their key)."""
    used = [
        int(suffix)
        for key in tags
        if key.startswith(TAG_PREFIX) and (suffix := key.removeprefix(TAG_PREFIX)).isdigit()
    ]
    return max(used, default=0) + 1


def rollback_target(entries: Iterable[AuditEntry], alias: str, current_version: str) -> str:
    """The version `alias` pointed at before its last recorded change.

    Refuses when the alias has no recorded change, when that change created the alias
    (nothing before it), or when the alias was moved outside the registry since (the
    trail no longer describes it, so "back" is ambiguous).
    """
    last = next((e for e in reversed(list(entries)) if e.alias == alias and e.moved_alias), None)
    if last is None:
        raise RollbackImpossible(f"alias {alias!r} has no recorded change to roll back")
    if last.version != current_version:
        raise RollbackImpossible(
            f"alias {alias!r} points at {current_version or 'nothing'} but its last recorded "
            f"change (#{last.sequence}) set it to {last.version or 'nothing'}: it was changed "
            "outside the registry; set it explicitly"
        )
    if not last.previous_version:
        raise RollbackImpossible(
            f"alias {alias!r} pointed at nothing before its last change (#{last.sequence})"
        )
    return last.previous_version
