"""The retrain trigger policy. Pure functions; the Redis claim and the Celery send are
done by the consumer (`consumer.py`, `retrain.py`).

Policy: a version whose last `windows` decided windows all drifted asks for its model
to be retrained. The ask is claimed first under one key per model (SET NX with a TTL),
so restarts and replicas never ask twice; a sent request holds the key for the
cooldown. The streak restarts after a request is sent, so the next one needs fresh
evidence as well as the end of the cooldown. Trigger ids are deterministic per (model,
version, window): a replayed window produces the same id, which the worker can use to
de-duplicate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from kloop_drift_monitor.detector import Thresholds, WindowResult

SENT, SUPPRESSED, FAILED = "sent", "suppressed", "failed"


@dataclass(frozen=True)
class TriggerRecord:
    trigger_id: str
    time: float
    outcome: str  # sent, suppressed or failed
    task_id: str
    windows: int
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TriggerRecord:
        return cls(
            trigger_id=str(data["trigger_id"]),
            time=float(data["time"]),
            outcome=str(data["outcome"]),
            task_id=str(data["task_id"]),
            windows=int(data["windows"]),
            detail=str(data.get("detail", "")),
        )


def trigger_due(streak: int, windows_needed: int) -> bool:
    return streak >= windows_needed


def trigger_id(model: str, version: str, window_sequence: int) -> str:
    return f"{model}:{version}:{window_sequence}"


def build_evidence(
    model: str,
    version: str,
    history: Sequence[WindowResult],
    *,
    streak: int,
    windows_needed: int,
    thresholds: Thresholds,
    now: float,
) -> dict[str, Any]:
    """The JSON-able evidence a retrain request carries: the drifted windows (newest
    last) with every value and threshold."""
    drifted = [w for w in history if w.decided][-streak:] if streak else []
    last = drifted[-1].sequence if drifted else 0
    return {
        "trigger_id": trigger_id(model, version, last),
        "reason": "drift",
        "model": model,
        "version": version,
        "detected_at": now,
        "consecutive_drifted_windows": streak,
        "windows_needed": windows_needed,
        "thresholds": asdict(thresholds),
        "windows": [w.evidence() for w in drifted],
    }
