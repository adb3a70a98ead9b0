"""Live accuracy and F1 from feedback labels. Pure functions.

Each labeled prediction is one outcome code (true/false positive/negative), appended to
a bounded string of the most recent ones (the "live" numbers) and to running totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kloop_drift_monitor.events import FeedbackEvent

TRUE_POSITIVE, FALSE_POSITIVE, TRUE_NEGATIVE, FALSE_NEGATIVE = "P", "F", "N", "M"


@dataclass
class Quality:
    recent: str = ""  # outcome codes, oldest first, at most `window` of them
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def labeled_total(self) -> int:
        return sum(self.totals.values())

    def to_dict(self) -> dict[str, Any]:
        return {"recent": self.recent, "totals": dict(self.totals)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Quality:
        return cls(str(data["recent"]), {str(k): int(v) for k, v in data["totals"].items()})


def outcome(event: FeedbackEvent, positive_label: str) -> str:
    predicted = event.predicted_label == positive_label
    actual = event.true_label == positive_label
    if predicted:
        return TRUE_POSITIVE if actual else FALSE_POSITIVE
    return FALSE_NEGATIVE if actual else TRUE_NEGATIVE


def add_feedback(
    quality: Quality, events: Iterable[FeedbackEvent], *, positive_label: str, window: int
) -> None:
    codes = "".join(outcome(event, positive_label) for event in events)
    for code in codes:
        quality.totals[code] = quality.totals.get(code, 0) + 1
    quality.recent = (quality.recent + codes)[-window:]


def accuracy_f1(counts: Mapping[str, int]) -> tuple[float, float]:
    """(accuracy, F1 of the positive label); 0.0 where undefined (no labels, or no
    positive predicted nor actual)."""
    tp, fp = counts.get(TRUE_POSITIVE, 0), counts.get(FALSE_POSITIVE, 0)
    tn, fn = counts.get(TRUE_NEGATIVE, 0), counts.get(FALSE_NEGATIVE, 0)
    total = tp + fp + tn + fn
    accuracy = (tp + tn) / total if total else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
    return accuracy, f1


def recent_counts(quality: Quality) -> dict[str, int]:
    return {
        code: quality.recent.count(code)
        for code in (TRUE_POSITIVE, FALSE_POSITIVE, TRUE_NEGATIVE, FALSE_NEGATIVE)
    }
