"""The drift decision for one window: every feature's statistics against the reference.

Numeric features (length, oov_rate, score) get PSI and KS on the reference's bins;
the token distribution (categorical) gets PSI and Jensen-Shannon. A feature is drifted
when any of its statistics is above its threshold, a window when any feature is. A
window is decided only with a reference and at least `min_events` events; oov_rate and
tokens need `min_events` events that carried their text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from kloop_drift_monitor.reference import Reference
from kloop_drift_monitor.stats import (
    js_divergence,
    ks_critical_value,
    ks_from_counts,
    psi,
    psi_noise_floor,
)

Counts = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Thresholds:
    psi: float = 0.2
    ks: float = 0.2
    js: float = 0.1

    def for_metric(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    metric: str
    value: float
    threshold: float

    @property
    def drifted(self) -> bool:
        return self.value > self.threshold


@dataclass(frozen=True)
class WindowResult:
    sequence: int
    events: int
    events_with_text: int
    start_time: float | None
    end_time: float | None
    drift: tuple[FeatureDrift, ...]
    decided: bool
    note: str = ""

    @property
    def drifted(self) -> bool:
        return self.decided and any(d.drifted for d in self.drift)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "events": self.events,
            "events_with_text": self.events_with_text,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "drift": [[d.feature, d.metric, d.value, d.threshold] for d in self.drift],
            "decided": self.decided,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WindowResult:
        return cls(
            sequence=int(data["sequence"]),
            events=int(data["events"]),
            events_with_text=int(data["events_with_text"]),
            start_time=data["start_time"],
            end_time=data["end_time"],
            drift=tuple(
                FeatureDrift(str(f), str(m), float(v), float(t)) for f, m, v, t in data["drift"]
            ),
            decided=bool(data["decided"]),
            note=str(data.get("note", "")),
        )

    def evidence(self) -> dict[str, Any]:
        """What a retrain request carries about this window."""
        return {
            "sequence": self.sequence,
            "events": self.events,
            "events_with_text": self.events_with_text,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "drifted": self.drifted,
            "values": [
                {
                    "feature": d.feature,
                    "metric": d.metric,
                    "value": d.value,
                    "threshold": d.threshold,
                    "drifted": d.drifted,
                }
                for d in self.drift
            ],
        }


@dataclass(frozen=True)
class WindowCounts:
    """A window's histograms: per numeric feature on FEATURE_EDGES, tokens per category."""

    events: int
    events_with_text: int
    start_time: float | None
    end_time: float | None
    counts: Mapping[str, Counts]


def _psi(
    feature: str,
    reference: npt.NDArray[np.float64],
    counts: Counts,
    n_reference: int,
    th: Thresholds,
) -> FeatureDrift:
    """PSI against a threshold never below what sampling alone reaches for samples of
    these sizes (`n_reference` 0, a profile that does not record its size, leaves the
    configured threshold)."""
    floor = psi_noise_floor(reference, counts, n_reference)
    return FeatureDrift(feature, "psi", psi(reference, counts), max(th.psi, floor))


def _numeric(
    feature: str,
    reference: npt.NDArray[np.float64],
    counts: Counts,
    n_reference: int,
    th: Thresholds,
) -> list[FeatureDrift]:
    critical = ks_critical_value(n_reference, int(counts.sum()))
    return [
        _psi(feature, reference, counts, n_reference, th),
        FeatureDrift(feature, "ks", ks_from_counts(reference, counts), max(th.ks, critical)),
    ]


def evaluate_window(
    sequence: int,
    window: WindowCounts,
    reference: Reference | None,
    *,
    min_events: int,
    thresholds: Thresholds,
) -> WindowResult:
    def result(drift: list[FeatureDrift], decided: bool, note: str) -> WindowResult:
        return WindowResult(
            sequence,
            window.events,
            window.events_with_text,
            window.start_time,
            window.end_time,
            tuple(drift),
            decided,
            note,
        )

    if reference is None:
        return result([], False, "no reference profile for this version")
    if window.events < min_events:
        return result([], False, f"{window.events} events, fewer than the {min_events} needed")
    drift: list[FeatureDrift] = []
    for feature in ("length", "score"):
        if reference.fractions[feature].sum() > 0:
            drift += _numeric(
                feature,
                reference.fractions[feature],
                window.counts[feature],
                reference.sample_count,
                thresholds,
            )
    notes = []
    if not reference.has_text_features:
        notes.append("the version has no vocabulary (model.json): oov_rate and tokens not compared")
    elif window.events_with_text < min_events:
        notes.append(
            f"{window.events_with_text} events carried text, fewer than {min_events}: "
            "oov_rate and tokens not compared"
        )
    else:
        if reference.fractions["oov_rate"].sum() > 0:
            drift += _numeric(
                "oov_rate",
                reference.fractions["oov_rate"],
                window.counts["oov_rate"],
                reference.sample_count,
                thresholds,
            )
        tokens = window.counts["tokens"]
        if tokens.sum() > 0 and reference.token_fractions.sum() > 0:
            # A text's tokens are not independent draws: the floor is sized by texts.
            per_text = tokens * (window.events_with_text / tokens.sum())
            drift.append(
                _psi(
                    "tokens",
                    reference.token_fractions,
                    per_text,
                    reference.sample_count,
                    thresholds,
                )
            )
            drift.append(
                FeatureDrift(
                    "tokens", "js", js_divergence(reference.token_fractions, tokens), thresholds.js
                )
            )
    return result(drift, True, "; ".join(notes))
